"""How many threads MobileDL's TVM runtime uses: one per physical core, unless told.

TVM sizes its worker pool from ``TVM_NUM_THREADS`` (or ``OMP_NUM_THREADS``), else from
``std::thread::hardware_concurrency()`` -- *halved on x86-64*, on the guess that every core
has a hyper-thread sibling. On a machine without SMT that is half the cores: on a 2-core
x86 host every MobileDL host run was single-threaded (SqueezeNet-style 224: 7.0 ms on one
thread, 3.8 ms on two) while ONNX Runtime and PyTorch used both cores. ONNX Runtime's and
NCNN's default is one thread per physical core; so is ours:

* `physical_cores` counts the cores this process may run on (its affinity mask), SMT
  siblings once (``/sys/devices/system/cpu/cpuN/topology``);
* `cpu_quota` reads a container's CPU limit (cgroup v2 ``cpu.max``, v1
  ``cpu.cfs_quota_us``): ``docker --cpus=2`` on a 64-core machine means two threads;
* `default_threads` sets ``TVM_NUM_THREADS`` to the smaller of the two when neither it nor
  ``OMP_NUM_THREADS`` is set. TVM reads the variable when a thread first launches a
  parallel kernel (its pool is created then), so it is set when `mdl_tvm` is imported;
  subprocesses (the native runner, workers) inherit it. A value set by the user always
  wins.

TVM also pins its worker threads, one per core (``TVM_BIND_THREADS``, on by default), and
its main thread spins at the end of every parallel kernel until each worker has finished its
static share. When another process runs on one of those cores, the pinned worker gets that
core's time slices in turns with it, and every kernel waits for a slice: RegNet-style 224,
2 threads, one core kept busy by a spinning process, **288 ms per inference pinned, 11.7 ms
unpinned** (ONNX Runtime 19.9 ms; quiet machine: 6.5 ms either way). Phones always run other
processes, so `default_affinity` leaves the threads to the scheduler (``TVM_BIND_THREADS=0``)
unless the user set the variable; the native runtime (`deploy/native`) does the same.
The wait itself (a descheduled worker holds up each kernel) is gone for libraries loaded on
the host: their kernels launch through `mdl_tvm.core.parallel`, whose threads claim tasks.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

SYS_CPU = Path("/sys/devices/system/cpu")
CGROUP = Path("/sys/fs/cgroup")
ENV_VARS = ("TVM_NUM_THREADS", "OMP_NUM_THREADS")
BIND_VAR = "TVM_BIND_THREADS"


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


def cpu_quota(cgroup: Path = CGROUP) -> float | None:
    """CPUs' worth of time this process's cgroup may use per period, or None (no limit).

    Parameters
    ----------
    cgroup : Path
        The cgroup mount (a test passes a fake one): v2 ``cpu.max`` (``"200000 100000"``,
        or ``"max ..."``), else v1 ``cpu/cpu.cfs_quota_us`` (-1: none) over
        ``cpu/cpu.cfs_period_us``.
    """
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        quota_us, period_us = float(quota), float(period)
    except ValueError:  # "max"
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def thread_count(sys_cpu: Path = SYS_CPU, cgroup: Path = CGROUP) -> int:
    """`physical_cores`, capped by a container's `cpu_quota` (rounded up)."""
    cores, quota = physical_cores(sys_cpu), cpu_quota(cgroup)
    return cores if quota is None else max(1, min(cores, math.ceil(quota - 1e-9)))


def default_threads(environ=os.environ) -> int | None:
    """Set ``TVM_NUM_THREADS`` to `thread_count` unless it or ``OMP_NUM_THREADS`` is set.

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
    threads = thread_count()
    environ["TVM_NUM_THREADS"] = str(threads)
    return threads


def default_affinity(environ=os.environ) -> bool:
    """Set ``TVM_BIND_THREADS=0`` (threads not pinned to cores) unless the user set it, in
    `environ` (as for `default_threads`); True when set here, False when the user's value
    stands."""
    if environ.get(BIND_VAR, "").strip():
        return False
    environ[BIND_VAR] = "0"
    return True
