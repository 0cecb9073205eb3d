"""How many threads MobileDL's TVM runtime uses: one per physical core, unless told.

TVM sizes its worker pool from ``TVM_NUM_THREADS`` (or ``OMP_NUM_THREADS``), else from
``std::thread::hardware_concurrency()`` -- *halved on x86-64*, on the guess that every core
has a hyper-thread sibling. On a machine without SMT that is half the cores: on a 2-core
x86 host every MobileDL host run was single-threaded (SqueezeNet-style 224: 7.0 ms on one
thread, 3.8 ms on two) while ONNX Runtime and PyTorch used both cores. ONNX Runtime's and
NCNN's default is one thread per physical core; so is ours:

* `physical_cores` counts the cores this process may run on (its affinity mask), SMT
  siblings once (``/sys/devices/system/cpu/cpuN/topology``);
* `default_threads` sets ``TVM_NUM_THREADS`` to that count when neither it nor
  ``OMP_NUM_THREADS`` is set. TVM reads the variable when a thread first launches a
  parallel kernel (its pool is created then), so it is set when `mdl_tvm` is imported;
  subprocesses (the native runner, workers) inherit it. A value set by the user always
  wins.
"""

from __future__ import annotations

import os
from pathlib import Path

SYS_CPU = Path("/sys/devices/system/cpu")
ENV_VARS = ("TVM_NUM_THREADS", "OMP_NUM_THREADS")


def _allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


def physical_cores(sys_cpu: Path = SYS_CPU) -> int:
    """Physical cores among the CPUs this process may run on (SMT siblings counted once).

    Parameters
    ----------
    sys_cpu : Path
        The sysfs CPU directory (a test passes a fake one).

    Returns
    -------
    int
        At least 1; the number of allowed CPUs where the topology cannot be read.
    """
    cpus = _allowed_cpus()
    cores = set()
    for cpu in cpus:
        topo = sys_cpu / f"cpu{cpu}" / "topology"
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(),
                       (topo / "core_id").read_text().strip()))
        except OSError:
            return max(len(cpus), 1)
    return max(len(cores), 1)


def default_threads(environ=os.environ) -> int | None:
    """Set ``TVM_NUM_THREADS`` to `physical_cores` unless it or ``OMP_NUM_THREADS`` is set.

    Parameters
    ----------
    environ : mapping
        The environment to read and update (a test passes a dict).

    Returns
    -------
    int or None
        The count set; None when the user's variable stands (TVM reads it as it is).
    """
    if any(environ.get(var, "").strip() for var in ENV_VARS):
        return None
    threads = physical_cores()
    environ["TVM_NUM_THREADS"] = str(threads)
    return threads
