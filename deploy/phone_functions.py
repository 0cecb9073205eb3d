"""Functions the emulated phone's RPC server offers its clients (device side).

Copied into the phone's site-packages as ``mdl_phone.py`` and registered by its
``sitecustomize`` in the processes `deploy.procs.start_phone` starts (environment
``MDL_TVM_PHONE_CPU``); it needs only TVM's runtime, so a real arm64 board can run it too.

* ``mdl.phone.info()`` → JSON ``{"cpu", "hwcap"}``: the CPU model and the ``AT_HWCAP`` bits
  the kernel (here QEMU) reports, so a client can refuse a library the CPU cannot execute
  before it crashes a worker (`deploy.remote.RemoteDevice.load`).
* ``mdl.count_call(module, name, number, *args)`` → instructions one call of
  ``module[name]`` retires, on a phone started with ``count=True`` (its workers run under
  the marker plugin, ``insn_marker_plugin.c``): two marks around ``number`` calls made by
  TVM's own time evaluator, divided by ``number``. MetaSchedule's runner uses it to
  measure tuning candidates in instructions (`schedules.tuning.measure`).
"""

import ctypes
import json
import os

MARKER_SYSCALL = 0x4D444C  # deploy/insn_marker_plugin.c
AT_HWCAP = 16
_libc = ctypes.CDLL(None, use_errno=True)
_libc.getauxval.restype = ctypes.c_ulong
_libc.syscall.restype = ctypes.c_long


def phone_info() -> str:
    """The phone's CPU model and HWCAP bits, as JSON text."""
    return json.dumps({"cpu": os.environ.get("MDL_TVM_PHONE_CPU", ""),
                       "hwcap": int(_libc.getauxval(AT_HWCAP))})


def _marks(prefix: str) -> list[tuple[int, int]]:
    with open(f"{prefix}.{os.getpid()}") as f:
        return [tuple(int(v) for v in line.split()) for line in f if line.strip()]


def count_call(module, name, number, *args) -> float:
    """Instructions per call of ``module[name](*args)`` between two marks."""
    import tvm

    prefix = os.environ.get("MDL_TVM_MARKS")
    if not prefix:
        raise RuntimeError("this phone does not count instructions: start it with "
                           "count=True (mdl-tvm device start --count)")
    feval = tvm.runtime._ffi_api.RPCTimeEvaluator(module, name, 1, 0, int(number), 1, 0, 0,
                                                  0, 0, 0, "")
    before = len(_marks(prefix)) if os.path.exists(f"{prefix}.{os.getpid()}") else 0
    _libc.syscall(MARKER_SYSCALL, 1)
    feval(*args)
    _libc.syscall(MARKER_SYSCALL, 2)
    (_, start), (_, end) = _marks(prefix)[before:before + 2]
    return (end - start) / (int(number) + 1)  # the evaluator makes one warm-up call more


def register() -> None:
    """Register the functions with TVM's global registry (called by sitecustomize)."""
    import tvm_ffi

    tvm_ffi.register_global_func("mdl.phone.info", phone_info, override=True)
    tvm_ffi.register_global_func("mdl.count_call", count_call, override=True)
