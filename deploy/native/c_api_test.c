/*
 * c_api_test.c -- a C11 client of mdl_runtime.h: the usual calls, then every error path.
 *
 *     c_api_test MODEL.so [NOT_A_LIBRARY] [OTHER_ARCH.so] [NO_MAIN_ZC.so]
 *
 * Prints "ok NAME" per check that holds, "FAIL NAME: ..." per one that does not; exits 1
 * when any failed. The optional paths add the load errors for those files.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mdl_runtime.h"

static int failures = 0;

static void check(int holds, const char* name) {
  if (holds) {
    printf("ok %s\n", name);
  } else {
    printf("FAIL %s: last error \"%s\"\n", name, mdl_last_error());
    failures++;
  }
}

/* `rc` is a failure (-1) whose message contains `needle`. */
static void check_error(int rc, const char* needle, const char* name) {
  check(rc == -1 && strstr(mdl_last_error(), needle) != NULL, name);
}

static void check_load_error(const char* path, const char* needle, const char* name) {
  mdl_model* m = mdl_load(path);
  check_error(m == NULL ? -1 : 0, needle, name);
  mdl_free(m);
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s MODEL.so [NOT_A_LIBRARY] [OTHER_ARCH.so] [NO_MAIN_ZC.so]\n", argv[0]);
    return 2;
  }
  const int user_bind = getenv("TVM_BIND_THREADS") != NULL;  /* before the runtime sets it */
  check_load_error(NULL, "NULL", "load NULL");
  check_load_error("/nonexistent/model.so", "cannot open", "load missing file");
  if (argc > 2) check_load_error(argv[2], "not an ELF", "load non-ELF file");
  if (argc > 3) check_load_error(argv[3], "is built for", "load other architecture");
  if (argc > 4) check_load_error(argv[4], "main_zc", "load library without main_zc");

  mdl_model* m = mdl_load(argv[1]);
  check(m != NULL && mdl_last_error()[0] == '\0', "load model");
  if (m == NULL) return 1;
  mdl_tensor_info in, out;
  check(mdl_input_info(m, 0, &in) == 0 && in.ndim > 0 && in.nbytes > 0, "input info");
  check(mdl_output_info(m, 0, &out) == 0 && out.nbytes > 0, "output info");
  check_error(mdl_input_info(m, mdl_num_inputs(m), &in), "out of range", "input index");
  check_error(mdl_output_info(m, -1, &out), "out of range", "output index");
  check_error(mdl_input_info(m, 0, NULL), "NULL", "info NULL");

  memset(in.data, 0, in.nbytes);
  check(mdl_run(m) == 0, "run");
  unsigned char* first = malloc(out.nbytes);
  memcpy(first, out.data, out.nbytes);

  size_t big = in.nbytes + out.nbytes + mdl_workspace_bytes(m) + 2 * MDL_ALIGN;
  unsigned char* buf = aligned_alloc(MDL_ALIGN, (big + MDL_ALIGN - 1) / MDL_ALIGN * MDL_ALIGN);
  check_error(mdl_bind_input(m, 0, buf + 4), "aligned", "misaligned input");
  check_error(mdl_bind_output(m, 0, in.data), "overlap", "output over an input");
  check_error(mdl_bind_workspace(m, buf, 1), "smaller", "workspace too small");
  check_error(mdl_bind_input(m, 7, buf), "out of range", "bind index");
  check(mdl_bind_output(m, 0, buf) == 0 && mdl_output_data(m, 0) == buf, "bind caller output");
  check(mdl_run(m) == 0 && memcmp(buf, first, out.nbytes) == 0, "run into caller output");
  check(mdl_run_main(m) == 0 && memcmp(buf, first, out.nbytes) == 0, "main equals main_zc");
  check(mdl_bind_output(m, 0, NULL) == 0 && mdl_output_data(m, 0) == out.data, "unbind");

  check_error(mdl_run(NULL), "NULL", "run NULL");
  check_error(mdl_set_num_threads(-1), ">= 0", "threads < 0");
  check(mdl_set_num_threads(1) == 0, "threads 1");
  const char* bind = getenv("TVM_BIND_THREADS");  /* set by the runtime unless the user did */
  check(user_bind || (bind != NULL && strcmp(bind, "0") == 0), "threads unpinned by default");
  check(mdl_run(m) == 0 && memcmp(out.data, first, out.nbytes) == 0, "run after errors");
  mdl_free(m);
  mdl_free(NULL);
  free(buf);
  free(first);
  printf("%d failed\n", failures);
  return failures ? 1 : 0;
}
