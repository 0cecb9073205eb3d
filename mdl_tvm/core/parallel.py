"""MobileDL's parallel launcher for TVM kernels on this machine.

TVM's generated code runs every parallel loop through one function pointer the library
holds, ``__TVMBackendParallelLaunch``, which the runtime fills with its thread pool. That
pool hands task *i* to worker *i* and the caller waits for each worker: when a worker is
descheduled for a few milliseconds (another process, another VM on the host), every kernel
waits for it. Measured, SqueezeNet-style 224, 2 threads, a process spinning 3 ms in every
10 ms: TVM's pool 1.45x ONNX Runtime's time, this launcher 1.15x; a core fully busy: 0.97x
of TVM's pool's time (`bench/contention_bench.py` has four models).

`parallel_launch.cc` claims tasks from one counter, caller included, as ONNX Runtime's and
Eigen's ParallelFor do: a late worker finds the work done, the caller only waits for tasks
already started. Kernels split their loop into ``4 x threads`` tasks (each task still a
contiguous run of iterations, as TVM's codegen cuts it), so there is work to take over.

* `launcher` builds it with the host C++ compiler once (cached under
  ``cache_root("parallel", KEY)``, KEY hashing source and compiler) and loads it;
* `use_in` points a loaded library's ``__TVMBackendParallelLaunch`` at it.

``MDL_TVM_PARALLEL=tvm`` keeps TVM's pool (for A/B runs). Without a C++ compiler the
library keeps TVM's pool and a warning names the fix. Threads: ``TVM_NUM_THREADS``, which
`mdl_tvm.core.threads` sets at import.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import threading
import warnings
from pathlib import Path

from mdl_tvm.core.io import atomic_output, cache_root

SOURCE = Path(__file__).with_name("parallel_launch.cc")
ENV = "MDL_TVM_PARALLEL"
CHOICES = ("mdl", "tvm")
SYMBOL = "__TVMBackendParallelLaunch"
CXXFLAGS = ("-std=c++17", "-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-pthread")

_LOCK = threading.Lock()
_LOADED: dict = {}


def choice() -> str:
    """The launcher chosen by ``$MDL_TVM_PARALLEL`` (``mdl`` by default).

    Raises
    ------
    ValueError
        For a value other than ``mdl`` or ``tvm``.
    """
    value = os.environ.get(ENV, "mdl").strip().lower() or "mdl"
    if value not in CHOICES:
        raise ValueError(f"{ENV}={value!r}: use one of {', '.join(CHOICES)} (mdl: MobileDL's "
                         "launcher, tvm: TVM's thread pool)")
    return value


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _build(cxx: str) -> Path:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + version.encode()
                         + " ".join(CXXFLAGS).encode()).hexdigest()[:16]
    out = cache_root("parallel", key) / "libmdl_parallel.so"
    if out.is_file():
        return out
    with atomic_output(out, suffix=".so") as built:  # a concurrent build leaves one whole file
        proc = subprocess.run([cxx, *CXXFLAGS, str(SOURCE), "-o", str(built)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise OSError(f"{cxx} failed on {SOURCE.name}: {proc.stderr.strip()[-500:]}")
    return out


def launcher() -> ctypes.CDLL | None:
    """The loaded launcher library, built on first use; None when it cannot be built
    (a warning says why and how to fix it) or when ``MDL_TVM_PARALLEL=tvm``."""
    if choice() == "tvm":
        return None
    with _LOCK:
        if "lib" not in _LOADED:
            cxx = _compiler()
            try:
                if cxx is None:
                    raise OSError("no C++ compiler (g++) found")
                _LOADED["lib"] = ctypes.CDLL(str(_build(cxx)))
            except OSError as err:
                warnings.warn(f"MobileDL's parallel launcher is unavailable ({err}); kernels "
                              "use TVM's thread pool, which waits for descheduled workers. "
                              "Fix: install g++ (bash scripts/setup.sh) or set CXX",
                              RuntimeWarning, stacklevel=2)
                _LOADED["lib"] = None
        return _LOADED["lib"]


def use_in(library_path: str | os.PathLike) -> bool:
    """Point the loaded library at `library_path` to MobileDL's launcher.

    Parameters
    ----------
    library_path : path
        A shared library already loaded in this process (``tvm.runtime.load_module``).

    Returns
    -------
    bool
        True when its kernels now launch through MobileDL's launcher; False when the
        launcher is off or unavailable, or the library has no parallel kernels.
    """
    lib = launcher()
    if lib is None:
        return False
    try:
        handle = ctypes.CDLL(os.path.realpath(library_path), mode=os.RTLD_NOLOAD | os.RTLD_NOW)
        slot = ctypes.c_void_p.in_dll(handle, SYMBOL)
    except (OSError, ValueError):
        return False
    slot.value = ctypes.cast(lib.MDLParallelLaunch, ctypes.c_void_p).value
    return True
