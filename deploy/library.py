"""Open an exported library on this machine and make a Relax VM for it, with the runtime alone.

Running a library needs only tvm-ffi and ``libtvm_runtime.so``; `runtime` loads exactly
those: ``import tvm`` would load the 248 MB compiler library and tvm's compiler modules,
and ``import tvm_ffi`` imports torch when it is installed (about 230 MiB). So torch is kept
out of tvm-ffi's import (unless the process already has it), the runtime library is found
in the apache-tvm wheel without importing ``tvm`` and loaded with ``RTLD_GLOBAL``, as
``tvm`` itself does, and `RuntimeVM` drives the Relax VM through the module functions
that ``tvm.runtime.vm.VirtualMachine`` calls. Importing the compiler later in the same
process still works (``mdl_tvm.compile``): it finds the runtime library already loaded.
One trace remains: tvm-ffi, imported without torch, does not convert ``torch.dtype``
objects (nothing in MobileDL hands it one).

`open_library` is the one place that turns a path into a module, `host_vm` the one that
turns a path, module, executable or model into a VM (`HostModel` and the zero-copy
executor both use it).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
import threading
from pathlib import Path

import numpy as np

from deploy.native.elf import check_machine, host_machine
from mdl_tvm.core import parallel
from mdl_tvm.core.artifact import read_metadata
from mdl_tvm.core.errors import ToolchainError, UnknownTargetError
from mdl_tvm.core.specs import ALIGN
from mdl_tvm.core.targets import TargetProfile, get_profile, missing_cpu_flags

DL_CPU, POOLED_ALLOCATOR = 1, 2  # kDLCPU; tvm::runtime::AllocatorType (naive = 1)
_LOADED: list = []  # [tvm_ffi] once the runtime is loaded


def runtime_library() -> Path:
    """Where ``libtvm_runtime.so`` is: ``$TVM_LIBRARY_PATH`` first (TVM's own variable),
    then the apache-tvm wheel's ``lib`` folder (found without importing ``tvm``).

    Raises
    ------
    ToolchainError
        When neither has it, naming the install command.
    """
    dirs = [Path(os.environ["TVM_LIBRARY_PATH"])] if os.environ.get("TVM_LIBRARY_PATH") else []
    spec = importlib.util.find_spec("tvm")
    if spec is not None and spec.submodule_search_locations:
        dirs.append(Path(spec.submodule_search_locations[0]) / "lib")
    for d in dirs:
        if (d / "libtvm_runtime.so").is_file():
            return d / "libtvm_runtime.so"
    raise ToolchainError(
        "libtvm_runtime.so, the TVM runtime, is missing (looked in "
        f"{', '.join(map(str, dirs)) or 'no apache-tvm installation'}): pip install "
        "apache-tvm==0.27.0.post1, or set TVM_LIBRARY_PATH to the folder that holds it")


def runtime():
    """The `tvm_ffi` module with ``libtvm_runtime.so`` loaded (once per process)."""
    if _LOADED:
        return _LOADED[0]
    if "tvm_ffi" in sys.modules or "torch" in sys.modules:
        import tvm_ffi
    else:
        sys.modules["torch"] = None  # tvm_ffi's `try: import torch` sees ImportError
        try:
            import tvm_ffi
        finally:
            if sys.modules.get("torch", 0) is None:
                del sys.modules["torch"]
    if "tvm" not in sys.modules:  # `import tvm` has loaded it already
        try:
            ctypes.CDLL(str(runtime_library()), ctypes.RTLD_GLOBAL)
        except OSError as err:
            raise ToolchainError(f"cannot load the TVM runtime: {err}; reinstall "
                                 "apache-tvm==0.27.0.post1") from None
    _LOADED.append(tvm_ffi)
    return tvm_ffi


def aligned_empty(shape, dtype="float32", align: int = ALIGN) -> np.ndarray:
    """An uninitialised C-contiguous numpy array whose data starts at an `align` boundary.

    TVM imports a numpy array without a copy (DLPack) only when its data is 64-byte
    aligned (its kernels use aligned vector loads); ordinary ``np.empty`` arrays often
    are not.
    """
    shape = tuple(int(d) for d in np.atleast_1d(shape)) if np.ndim(shape) else (int(shape),)
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + align, dtype=np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def shared_tensor(array: np.ndarray):
    """A TVM tensor over `array`'s memory (aligned, C-contiguous, writeable): no copy."""
    return runtime().from_dlpack(array, require_alignment=ALIGN, require_contiguous=True)


def to_tensor(array) -> object:
    """A TVM tensor holding a copy of `array` (what ``tvm.runtime.tensor`` makes)."""
    array = np.asarray(array)
    copy = aligned_empty(array.shape, array.dtype)
    copy[...] = array
    return shared_tensor(copy)


class RuntimeVM:
    """The Relax VM of a loaded library on this machine's CPU, over tvm-ffi alone.

    What ``tvm.runtime.vm.VirtualMachine(module, tvm.cpu())`` does (pooled allocator),
    without importing ``tvm``: functions by name, `save_function`, `set_instrument`.

    Parameters
    ----------
    module : tvm_ffi.Module or relax.VMExecutable
        A loaded library (`open_library`), or a freshly built executable (JIT-linked).
    """

    def __init__(self, module):
        ffi = runtime()
        if not isinstance(module, ffi.Module) and callable(getattr(module, "jit", None)):
            module = module.jit()  # a built executable (the compiler side)
        self.module = module["vm_load_executable"]()
        self.module["vm_initialization"](DL_CPU, 0, POOLED_ALLOCATOR)
        self.lock = threading.RLock()  # the VM is not reentrant: one call at a time

    def __getitem__(self, name: str):
        """The VM function `name` (``main``, ``main_zc``, ``mdl_zc_plan``, a saved one)."""
        return self.module[name]

    def save_function(self, func_name: str, saved_name: str, *args,
                      include_return: bool = True) -> None:
        """Save a closure of `func_name` over `args` (tensors) as `saved_name`."""
        self.module["save_function"](func_name, saved_name, int(include_return), *args)

    def set_instrument(self, instrument) -> None:
        """Call ``instrument(func, symbol, before, ret, *args)`` around every VM call
        instruction (None: stop)."""
        self.module["set_instrument"](instrument)


def open_library(path: str) -> tuple[dict, TargetProfile, object]:
    """``(metadata, profile, module)`` of an exported library; the module is loaded by the
    TVM runtime alone (`runtime`).

    The profile is this machine's (``host``) when the library was built for its triple.

    Raises
    ------
    ModelFormatError
        When `path` is not a MobileDL artifact.
    UnknownTargetError
        When the library was built for a target this machine cannot execute (checked in
        the metadata: triple and the vector ISA of a host build, and in the ELF header,
        before anything loads it).
    """
    meta = read_metadata(path)  # structure and metadata; the checksum once the CPU fits
    name = meta["target"]
    host = get_profile("host")
    fix = "run it on the device (mdl-tvm device start, deploy.remote, mdl-tvm device run)"
    if name != "host" and not meta["mtriple"].startswith(host.mtriple.split("-")[0]):
        raise UnknownTargetError(
            f"{path!r} is built for {name!r} ({meta['mtriple']}) and cannot be loaded on this "
            f"{host.mtriple} machine; {fix}")
    check_machine(path, host_machine(), fix)
    missing = meta["mtriple"] == host.mtriple and missing_cpu_flags(meta.get("mcpu", ""))
    if missing:
        raise UnknownTargetError(
            f"{path!r} is built for a {meta['mcpu']} CPU, but this one lacks "
            f"{', '.join(missing)} (it would stop on an illegal instruction); compile it again "
            "on this machine with target='host'")
    read_metadata(path, verify=True)  # a damaged file is refused, never loaded
    profile = host if name == "host" else get_profile(name)
    if profile.mtriple == host.mtriple:
        profile = host
    module = runtime().load_module(os.path.realpath(path))
    parallel.use_in(path)  # kernels claim tasks dynamically (mdl_tvm.core.parallel)
    return meta, profile, module


_LOCKS_GUARD = threading.Lock()


def vm_lock(vm) -> threading.RLock:
    """The lock that serialises calls into `vm` (a `RuntimeVM`'s own; one attached to a
    ``tvm`` VirtualMachine on first use). A Relax VM keeps per-call state (registers, the
    pooled allocator), so two threads inside one VM crash it; every caller in this
    package holds this lock around a VM call."""
    lock = getattr(vm, "lock", None) or getattr(vm, "_mdl_lock", None)
    if lock is None:
        with _LOCKS_GUARD:
            lock = getattr(vm, "_mdl_lock", None)
            if lock is None:
                lock = threading.RLock()
                vm._mdl_lock = lock
    return lock


def host_vm(source):
    """A Relax VM on this machine's CPU (`RuntimeVM`).

    Parameters
    ----------
    source : model with a ``vm()`` method, str or os.PathLike, module / executable, or VM
        A host model (`HostModel`, `CompiledModel`), an exported library's path, a loaded
        module or built executable, or a VM (a `RuntimeVM` or ``tvm``'s
        ``VirtualMachine``, returned as it is).
    """
    tvm_vm = sys.modules.get("tvm.runtime.vm")
    if isinstance(source, RuntimeVM) or (
            tvm_vm is not None and isinstance(source, tvm_vm.VirtualMachine)):
        return source
    if callable(getattr(source, "vm", None)):
        return source.vm()
    if isinstance(source, str) or hasattr(source, "__fspath__"):
        _, profile, module = open_library(str(source))
        if not profile.is_host:
            raise UnknownTargetError(f"{source!r} is built for {profile.name!r}, not this "
                                     "machine; run it on the device (deploy.remote)")
        return RuntimeVM(module)
    return RuntimeVM(source)
