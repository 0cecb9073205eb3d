"""The emulated arm64 phone and everything that talks to a device.

* `deploy.host_model` `HostModel` / `load`: an exported library run on this machine;
* `deploy.library` open a library, make a VM (shared by the host model and the executor),
  with the TVM runtime alone: tvm-ffi + ``libtvm_runtime.so``, no compiler, no torch;
* `deploy.native`  the native runtime: C API (``mdl_runtime.h``), the ``mdl_run`` runner,
  their build for this machine and the phone, ``mdl-tvm deploy-bundle``;
* `deploy.device`   set up the phone (Debian arm64 sysroot + TVM runtime under QEMU), cached;
* `deploy.hosttools` host packages, the Debian mirror, QEMU's plugin header;
* `deploy.procs`    start / stop / inspect the RPC tracker and the phone's RPC server;
* `deploy.remote`   `RemoteDevice`: upload an exported ``.so``, run it, time it, over RPC;
* `deploy.emulator` run a device-side runner under QEMU, count retired instructions;
* `deploy.runners`  the runners the phone starts: python (``device_runner.py``) or native;
* `deploy.guest_memory` peak memory of a guest process on the phone;
* `deploy.device_runner` the script that runs on the device (needs only TVM's runtime);
* `deploy.zero_copy` `ZeroCopyExecutor`: preset shared buffers, no copy or allocation per run
  (`deploy.zero_copy_remote` the same over RPC);
* `deploy.cli`      ``mdl-tvm device ...`` and ``mdl-tvm tracker ...`` subcommands.

Submodules are imported on use: importing `deploy` itself is cheap.
"""


from mdl_tvm.core.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "ZeroCopyExecutor": "deploy.zero_copy",
    "HostModel": "deploy.host_model",
    "load": "deploy.host_model",
})
