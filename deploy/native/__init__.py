"""The native runtime: run a MobileDL library with the TVM runtime alone, no Python.

* ``mdl_runtime.h`` / ``mdl_runtime.cc``  the C API (load, buffers, run, error string) an app
  or an Android JNI layer calls; ``mdl_run.cc`` its first client, the command-line runner;
  ``c_api_test.c`` a C client walking its error paths;
* `build`   compiles them for this machine and for the phone (aarch64), cached;
* `bundle`  ``mdl-tvm deploy-bundle``: what an app ships, in one folder;
* `elf`     which CPU a library is for, read before anything loads it;
* `cli`     the ``deploy-bundle`` command.

The emulated phone runs the runner with ``mdl-tvm device run|insns|profile --native``
(`deploy.runners`).
"""
