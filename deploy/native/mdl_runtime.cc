// mdl_runtime.cc -- mdl_runtime.h over the TVM runtime (tvm-ffi 0.1.14 C++ API + Relax VM).
//
// Links against libtvm_ffi only. libtvm_runtime.so is dlopen()ed (RTLD_GLOBAL) on first use:
// its static initialisers register what loading needs ("ffi.Module.load_from_bytes.relax.
// VMExecutable", the VM builtins, the CPU device API), and opening it here lets a missing
// runtime be an mdl_load() error with the fix, instead of the dynamic loader's abort.
#include "mdl_runtime.h"

#include <dlfcn.h>
#include <dlpack/dlpack.h>
#include <limits.h>
#include <stdlib.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

thread_local std::string g_error;

constexpr int kPooledAllocator = 2;  // tvm::runtime::AllocatorType (naive = 1)
constexpr int kAffinityBig = 1;      // tvm::runtime::threading::ThreadGroup::kBig
constexpr DLDevice kCPU{kDLCPU, 0};
constexpr const char* kRuntimeLib = "libtvm_runtime.so";

using Error = std::runtime_error;

// Tensor header over caller memory: "allocates" by pointing at it, frees nothing
// (FromNDAlloc copies shape and strides into the object).
struct BorrowedAlloc {
  void* ptr;
  void AllocData(DLTensor* t) { t->data = ptr; }
  void FreeData(DLTensor*) {}
};

struct Buffer {
  std::vector<int64_t> shape;
  std::string dtype_str;
  DLDataType dtype{};
  size_t nbytes = 0;
  void* own = nullptr;   // our aligned allocation (freed with the model)
  void* data = nullptr;  // bound memory (own or the caller's)
  ffi::Tensor tensor;    // header over `data`, made once per bind
};

void* AlignedAlloc(size_t nbytes) {
  size_t n = (nbytes + MDL_ALIGN - 1) / MDL_ALIGN * MDL_ALIGN;
  if (n == 0) n = MDL_ALIGN;
  void* p = std::aligned_alloc(MDL_ALIGN, n);
  if (!p) throw std::bad_alloc();
  std::memset(p, 0, n);
  return p;
}

void Bind(Buffer* b, void* data) {
  if (data == nullptr) data = b->own;
  if (reinterpret_cast<uintptr_t>(data) % MDL_ALIGN != 0)
    throw Error("buffer is not " + std::to_string(MDL_ALIGN) + "-byte aligned (TVM's kernels "
                "use aligned vector loads): allocate it with aligned_alloc(64, n)");
  b->data = data;
  b->tensor = ffi::Tensor::FromNDAlloc(BorrowedAlloc{data},
                                       ffi::ShapeView(b->shape.data(), b->shape.size()),
                                       b->dtype, kCPU);
}

Buffer SpecBuffer(const ffi::Any& spec_any) {
  auto spec = spec_any.cast<ffi::Map<ffi::Any, ffi::Any>>();
  Buffer b;
  for (const ffi::Any& d : spec.at(ffi::String("shape")).cast<ffi::Array<ffi::Any>>())
    b.shape.push_back(d.cast<int64_t>());
  if (b.shape.size() > MDL_MAX_NDIM) throw Error("tensor rank above MDL_MAX_NDIM");
  b.dtype_str = spec.at(ffi::String("dtype")).cast<ffi::String>();
  b.dtype = ffi::StringToDLDataType(ffi::String(b.dtype_str));
  size_t numel = 1;
  for (int64_t d : b.shape) numel *= static_cast<size_t>(d);
  b.nbytes = ffi::GetDataSize(numel, b.dtype);
  b.own = AlignedAlloc(b.nbytes);
  Bind(&b, nullptr);
  return b;
}

// Directory of this code's file (the program, or libmdl_runtime.so), with a slash.
std::string OwnDirectory() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&OwnDirectory), &info) == 0 || !info.dli_fname) return "";
  std::string path = info.dli_fname;
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "" : path.substr(0, slash + 1);
}

void LoadRuntime() {
  static std::once_flag once;
  static std::string failure;
  std::call_once(once, [] {
    // TVM pins its pool's threads one per core unless TVM_BIND_THREADS=0; a pinned thread
    // sharing its core with another process stalls every kernel (mdl_tvm/core/threads.py).
    // The user's setting, if any, stands (no overwrite).
    setenv("TVM_BIND_THREADS", "0", 0);
    std::string beside = OwnDirectory() + kRuntimeLib;
    if (dlopen(beside.c_str(), RTLD_NOW | RTLD_GLOBAL)) return;
    std::string first = dlerror();
    if (dlopen(kRuntimeLib, RTLD_NOW | RTLD_GLOBAL)) return;
    failure = std::string("cannot load the TVM runtime: ") + first + "; and from the library "
              "path: " + dlerror() + ". Put libtvm_runtime.so (the runtime of the apache-tvm "
              "wheel this library was built with) beside the program or in LD_LIBRARY_PATH; "
              "`mdl-tvm deploy-bundle` copies it";
  });
  if (!failure.empty()) throw Error(failure);
}

// dlopen of a library for another CPU fails with a misleading "No such file or directory":
// read the ELF header first.
void CheckElf(const std::string& path) {
#if defined(__aarch64__)
  constexpr uint16_t kWant = 183;  // EM_AARCH64
  const char* want = "aarch64";
#elif defined(__x86_64__)
  constexpr uint16_t kWant = 62;  // EM_X86_64
  const char* want = "x86-64";
#else
  constexpr uint16_t kWant = 0;
  const char* want = "this CPU";
#endif
  unsigned char h[20] = {0};
  FILE* f = std::fopen(path.c_str(), "rb");
  size_t n = f ? std::fread(h, 1, sizeof(h), f) : 0;
  if (f) std::fclose(f);
  if (n < sizeof(h) || std::memcmp(h, "\x7f" "ELF", 4) != 0)
    throw Error(path + " is not an ELF shared library: give a model library exported by "
                "MobileDL (mdl-tvm compile ... -o model.so)");
  uint16_t machine = static_cast<uint16_t>(h[18] | (h[19] << 8));
  if (kWant != 0 && machine != kWant) {
    std::string got = machine == 183 ? "aarch64" : machine == 62 ? "x86-64"
                                                                 : "ELF machine " + std::to_string(machine);
    throw Error(path + " is built for " + got + ", this runtime runs on " + want +
                ": export the model for this CPU, or run it with the " + got + " runtime");
  }
  if (h[4] != 2 || (h[16] | (h[17] << 8)) != 3)  // ELFCLASS64, ET_DYN
    throw Error(path + " is not a 64-bit shared library");
}

template <typename F>
int Guard(F&& f) {
  try {
    f();
    g_error.clear();
    return 0;
  } catch (const ffi::Error& e) {
    g_error = e.kind() + ": " + e.message();
  } catch (const std::exception& e) {
    g_error = e.what();
  }
  return -1;
}

}  // namespace

struct mdl_model {
  mdl_model(ffi::Module e, ffi::Module v) : exec(std::move(e)), vm(std::move(v)) {}
  ffi::Module exec;  // the library's root module (relax.VMExecutable, the .so imported)
  ffi::Module vm;    // relax.VirtualMachine (ffi::Module is not nullable: set at construction)
  ffi::Function main, main_zc;
  std::vector<Buffer> inputs, outputs;
  Buffer workspace;
  std::vector<ffi::AnyView> zc_args;  // (*inputs, *outputs, workspace), rebuilt on bind

  void RebuildArgs() {
    zc_args.clear();
    for (auto& b : inputs) zc_args.emplace_back(b.tensor);
    for (auto& b : outputs) zc_args.emplace_back(b.tensor);
    zc_args.emplace_back(workspace.tensor);
  }
  ~mdl_model() {
    zc_args.clear();
    for (auto* v : {&inputs, &outputs})
      for (auto& b : *v) {
        b.tensor = ffi::Tensor();
        std::free(b.own);
      }
    workspace.tensor = ffi::Tensor();
    std::free(workspace.own);
  }
};

namespace {

void ReadPlan(mdl_model* model) {
  ffi::Optional<ffi::Function> plan_fn = model->vm->GetFunction("mdl_zc_plan", false);
  ffi::Optional<ffi::Function> zc = model->vm->GetFunction("main_zc", false);
  if (!plan_fn || !zc)
    throw Error("the library has no zero-copy entry point (main_zc): it was built before "
                "MobileDL emitted one, with zero_copy=False, or from a graph the pass cannot "
                "plan; recompile it with mdl_tvm.compile / mdl-tvm compile");
  model->main_zc = *zc;
  ffi::Tensor text = (*plan_fn)().cast<ffi::Tensor>();  // uint8 tensor of JSON
  ffi::String err;
  ffi::Any plan_any = ffi::json::Parse(
      ffi::String(static_cast<const char*>(text.data_ptr()) + text.byte_offset(),
                  ffi::GetDataSize(text)),
      &err);
  if (!err.empty()) throw Error("damaged mdl_zc_plan JSON: " + std::string(err));
  auto plan = plan_any.cast<ffi::Map<ffi::Any, ffi::Any>>();
  if (plan.at(ffi::String("format")).cast<int64_t>() != 1)
    throw Error("unsupported mdl_zc_plan format: update the native runtime");
  for (const ffi::Any& s : plan.at(ffi::String("inputs")).cast<ffi::Array<ffi::Any>>())
    model->inputs.push_back(SpecBuffer(s));
  for (const ffi::Any& s : plan.at(ffi::String("outputs")).cast<ffi::Array<ffi::Any>>())
    model->outputs.push_back(SpecBuffer(s));
  int64_t ws = plan.at(ffi::String("workspace_bytes")).cast<int64_t>();
  model->workspace.shape = {ws};
  model->workspace.dtype_str = "uint8";
  model->workspace.dtype = DLDataType{kDLUInt, 8, 1};
  model->workspace.nbytes = static_cast<size_t>(ws);
  model->workspace.own = AlignedAlloc(ws);
  Bind(&model->workspace, nullptr);
  model->RebuildArgs();
}

int Info(const mdl_model* m, bool input, int i, mdl_tensor_info* out) {
  return Guard([&] {
    if (!m || !out) throw Error("mdl_*_info: model and info must not be NULL");
    const std::vector<Buffer>& v = input ? m->inputs : m->outputs;
    if (i < 0 || i >= static_cast<int>(v.size()))
      throw Error(std::string(input ? "input" : "output") + " index " + std::to_string(i) +
                  " out of range: the model has " + std::to_string(v.size()));
    const Buffer& b = v[i];
    out->ndim = static_cast<int32_t>(b.shape.size());
    for (size_t k = 0; k < b.shape.size(); ++k) out->shape[k] = b.shape[k];
    std::snprintf(out->dtype, sizeof(out->dtype), "%s", b.dtype_str.c_str());
    out->nbytes = b.nbytes;
    out->data = b.data;
  });
}

bool Overlap(const Buffer& a, const Buffer& b) {
  auto pa = static_cast<const char*>(a.data), pb = static_cast<const char*>(b.data);
  return pa < pb + b.nbytes && pb < pa + a.nbytes;
}

void CheckAliasing(const mdl_model* m) {
  std::vector<const Buffer*> w;  // written buffers must not overlap anything else
  for (auto& b : m->outputs) w.push_back(&b);
  w.push_back(&m->workspace);
  for (size_t i = 0; i < w.size(); ++i) {
    for (size_t j = i + 1; j < w.size(); ++j)
      if (Overlap(*w[i], *w[j])) throw Error("outputs / workspace overlap: give each its own buffer");
    for (auto& b : m->inputs)
      if (Overlap(*w[i], b))
        throw Error("an input overlaps an output or the workspace: a kernel could overwrite "
                    "data it still has to read");
  }
}

// Bind `data` to `b`; on failure `b` keeps its old memory. The argument views are rebuilt
// either way: Bind replaced the tensor objects they pointed at.
void Rebind(mdl_model* m, Buffer* b, void* data) {
  void* old = b->data;
  try {
    Bind(b, data);
    CheckAliasing(m);
  } catch (...) {
    Bind(b, old);
    m->RebuildArgs();
    throw;
  }
  m->RebuildArgs();
}

int BindIndexed(mdl_model* m, bool input, int i, void* data) {
  return Guard([&] {
    if (!m) throw Error("mdl_bind_*: model is NULL");
    std::vector<Buffer>& v = input ? m->inputs : m->outputs;
    if (i < 0 || i >= static_cast<int>(v.size()))
      throw Error(std::string(input ? "input" : "output") + " index " + std::to_string(i) +
                  " out of range: the model has " + std::to_string(v.size()));
    Rebind(m, &v[i], data);
  });
}

}  // namespace

extern "C" {

const char* mdl_last_error(void) { return g_error.c_str(); }

mdl_model* mdl_load(const char* path) {
  mdl_model* m = nullptr;
  Guard([&] {
    if (!path) throw Error("mdl_load: path is NULL");
    // dlopen() searches the library path for a name without '/': pass an absolute path.
    char* abs = realpath(path, nullptr);
    if (!abs) throw Error(std::string("cannot open ") + path + ": " + std::strerror(errno));
    std::string abs_path(abs);
    std::free(abs);
    CheckElf(abs_path);
    LoadRuntime();
    // Root module = relax.VMExecutable (from __tvm_ffi__library_bin), the .so imported.
    ffi::Module exec = ffi::Module::LoadFromFile(ffi::String(abs_path));
    ffi::Optional<ffi::Function> load = exec->GetFunction("vm_load_executable", true);
    if (!load) throw Error(path + std::string(" is not a Relax VM library (no vm_load_executable)"));
    auto model = std::make_unique<mdl_model>(exec, (*load)().cast<ffi::Module>());
    // (device_type, device_id, allocator_type) per device, as VirtualMachine._setup_device
    model->vm->GetFunction("vm_initialization", false)
        .value()(static_cast<int>(kDLCPU), 0, kPooledAllocator);
    model->main = model->vm->GetFunction("main", false).value();
    ReadPlan(model.get());
    m = model.release();
  });
  return m;
}

void mdl_free(mdl_model* m) { delete m; }

int mdl_set_num_threads(int nthreads) {
  return Guard([&] {
    if (nthreads < 0) throw Error("mdl_set_num_threads: nthreads must be >= 0");
    LoadRuntime();
    ffi::Function::GetGlobalRequired("runtime.config_threadpool")(kAffinityBig, nthreads);
  });
}

int mdl_num_inputs(const mdl_model* m) { return m ? static_cast<int>(m->inputs.size()) : -1; }
int mdl_num_outputs(const mdl_model* m) { return m ? static_cast<int>(m->outputs.size()) : -1; }
size_t mdl_workspace_bytes(const mdl_model* m) { return m ? m->workspace.nbytes : 0; }

int mdl_input_info(const mdl_model* m, int i, mdl_tensor_info* o) { return Info(m, true, i, o); }
int mdl_output_info(const mdl_model* m, int i, mdl_tensor_info* o) { return Info(m, false, i, o); }

void* mdl_input_data(mdl_model* m, int i) {
  return m && i >= 0 && i < static_cast<int>(m->inputs.size()) ? m->inputs[i].data : nullptr;
}
void* mdl_output_data(mdl_model* m, int i) {
  return m && i >= 0 && i < static_cast<int>(m->outputs.size()) ? m->outputs[i].data : nullptr;
}

int mdl_bind_input(mdl_model* m, int i, void* data) { return BindIndexed(m, true, i, data); }
int mdl_bind_output(mdl_model* m, int i, void* data) { return BindIndexed(m, false, i, data); }
int mdl_bind_workspace(mdl_model* m, void* data, size_t nbytes) {
  return Guard([&] {
    if (!m) throw Error("mdl_bind_workspace: model is NULL");
    if (data && nbytes < m->workspace.nbytes)
      throw Error("workspace of " + std::to_string(nbytes) + " bytes is smaller than the " +
                  "plan's " + std::to_string(m->workspace.nbytes) + " (mdl_workspace_bytes)");
    Rebind(m, &m->workspace, data);
  });
}

int mdl_run(mdl_model* m) {
  return Guard([&] {
    if (!m) throw Error("mdl_run: model is NULL");
    ffi::Any ret;  // the (*outputs, *inputs) tuple: headers only, data stays in our buffers
    m->main_zc.CallPacked(m->zc_args.data(), static_cast<int32_t>(m->zc_args.size()), &ret);
  });
}

int mdl_run_main(mdl_model* m) {
  return Guard([&] {
    if (!m) throw Error("mdl_run_main: model is NULL");
    std::vector<ffi::AnyView> args;
    for (auto& b : m->inputs) args.emplace_back(b.tensor);
    ffi::Any ret;
    m->main.CallPacked(args.data(), static_cast<int32_t>(args.size()), &ret);
    std::vector<ffi::Tensor> outs;
    if (auto arr = ret.try_cast<ffi::Array<ffi::Tensor>>()) {
      for (const ffi::Tensor& t : *arr) outs.push_back(t);
    } else {
      outs.push_back(ret.cast<ffi::Tensor>());
    }
    if (outs.size() != m->outputs.size()) throw Error("main: output count differs from main_zc");
    for (size_t i = 0; i < outs.size(); ++i) {
      size_t n = ffi::GetDataSize(outs[i]);
      if (n != m->outputs[i].nbytes) throw Error("main: output size differs from main_zc");
      std::memcpy(m->outputs[i].data,
                  static_cast<const char*>(outs[i].data_ptr()) + outs[i].byte_offset(), n);
    }
  });
}

}  // extern "C"
