/*
 * mdl_runtime.h -- the C API of MobileDL's native runtime: run an exported model library
 * with the TVM runtime alone (libtvm_ffi.so + libtvm_runtime.so), no Python.
 *
 * A MobileDL library is a Relax VM executable with, besides `main(*inputs)`, a
 * destination-passing `main_zc(*inputs, *outputs, workspace)` and its plan `mdl_zc_plan()`
 * (mdl_tvm/compiler/zero_copy_pass.py). mdl_load() reads the plan, allocates one 64-byte
 * aligned buffer per input and output plus the workspace and binds them once; mdl_run()
 * then calls main_zc on those buffers: no tensor data is allocated or copied per call.
 *
 *     mdl_model* m = mdl_load("/data/app/lenet.so");
 *     if (!m) { log(mdl_last_error()); return; }
 *     mdl_tensor_info in, out;
 *     mdl_input_info(m, 0, &in);    memcpy(in.data, image, in.nbytes);
 *     if (mdl_run(m) != 0) log(mdl_last_error());
 *     mdl_output_info(m, 0, &out);  use((const float*)out.data);
 *     mdl_free(m);
 *
 * Caller memory can replace any buffer (mdl_bind_*): 64-byte aligned, C-contiguous, of the
 * plan's size (the workspace: at least), alive until the model is freed or re-bound; an
 * output may not overlap an input or the workspace.
 *
 * libtvm_runtime.so is opened by mdl_load() (from the directory of this library or
 * program first, then the usual search path), so a missing runtime is an mdl_load() error,
 * not a loader abort. Functions returning int return 0 on success and -1 on failure; then
 * mdl_last_error() (per thread) says what failed and how to fix it. One model must not be
 * run from two threads at once; separate models may.
 */
#ifndef MDL_RUNTIME_H_
#define MDL_RUNTIME_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define MDL_API __attribute__((visibility("default")))
#else
#define MDL_API
#endif

#define MDL_RUNTIME_VERSION 1
#define MDL_ALIGN 64
#define MDL_MAX_NDIM 8

typedef struct mdl_model mdl_model;

typedef struct {
  int32_t ndim;
  int64_t shape[MDL_MAX_NDIM];
  char dtype[16]; /* "float32", "float16", "int8", "uint8", "int32", "int64", ... */
  size_t nbytes;
  void* data; /* the buffer bound now */
} mdl_tensor_info;

/* Load `path` (a MobileDL library built for this CPU), start a Relax VM on CPU 0, read the
 * zero-copy plan, allocate and bind the buffers. NULL on failure (see mdl_last_error). */
MDL_API mdl_model* mdl_load(const char* path);
MDL_API void mdl_free(mdl_model* m);

/* What the last failing call on this thread did wrong ("" when none failed). */
MDL_API const char* mdl_last_error(void);

/* Threads of the TVM runtime's pool for every model (0: one per big core). Call it before
 * the first mdl_run; the environment variable TVM_NUM_THREADS does the same. Threads are not
 * pinned to cores (a pinned thread stalls when another process uses its core) unless the
 * environment sets TVM_BIND_THREADS=1. */
MDL_API int mdl_set_num_threads(int nthreads);

MDL_API int mdl_num_inputs(const mdl_model* m);
MDL_API int mdl_num_outputs(const mdl_model* m);
MDL_API int mdl_input_info(const mdl_model* m, int index, mdl_tensor_info* out);
MDL_API int mdl_output_info(const mdl_model* m, int index, mdl_tensor_info* out);
MDL_API size_t mdl_workspace_bytes(const mdl_model* m);

/* The buffers bound now (write inputs before mdl_run, read outputs after it). */
MDL_API void* mdl_input_data(mdl_model* m, int index);
MDL_API void* mdl_output_data(mdl_model* m, int index);

/* Use caller memory from now on (shared, never copied); NULL restores the model's own. */
MDL_API int mdl_bind_input(mdl_model* m, int index, void* data);
MDL_API int mdl_bind_output(mdl_model* m, int index, void* data);
MDL_API int mdl_bind_workspace(mdl_model* m, void* data, size_t nbytes);

/* One inference: main_zc(inputs..., outputs..., workspace) on the bound buffers. */
MDL_API int mdl_run(mdl_model* m);

/* Check path: the allocating `main` on the bound inputs, its results copied into the bound
 * outputs (allocates and copies every call; for comparing with mdl_run). */
MDL_API int mdl_run_main(mdl_model* m);

#ifdef __cplusplus
}
#endif
#endif /* MDL_RUNTIME_H_ */
