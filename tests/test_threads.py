"""One TVM thread per physical core, not pinned, by default (`mdl_tvm.core.threads`); the
user's ``TVM_NUM_THREADS`` / ``OMP_NUM_THREADS`` / ``TVM_BIND_THREADS`` always wins."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mdl_tvm.core.threads import (
    cpu_quota,
    default_affinity,
    default_threads,
    physical_cores,
    thread_count,
)

ROOT = Path(__file__).resolve().parents[1]


def _fake_sysfs(root: Path, core_of) -> Path:
    for cpu in sorted(os.sched_getaffinity(0)):
        topo = root / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text("0\n")
        (topo / "core_id").write_text(f"{core_of(cpu)}\n")
    return root


def test_smt_siblings_count_once_and_unreadable_topology_counts_cpus(tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    paired = _fake_sysfs(tmp_path / "smt", lambda cpu: cpu // 2)  # two threads per core
    assert physical_cores(paired) == len({cpu // 2 for cpu in cpus})
    assert physical_cores(_fake_sysfs(tmp_path / "plain", lambda cpu: cpu)) == len(cpus)
    assert physical_cores(tmp_path / "missing") == len(cpus)


def test_the_users_setting_wins_and_an_unset_one_gets_the_cores():
    for env in ({"TVM_NUM_THREADS": "3"}, {"OMP_NUM_THREADS": "5"}):
        before = dict(env)
        assert default_threads(env) is None and env == before
    env = {"TVM_NUM_THREADS": " "}  # blank counts as unset
    assert default_threads(env) == thread_count() and env["TVM_NUM_THREADS"] == str(
        thread_count())


def test_a_container_cpu_limit_caps_the_count(tmp_path):
    """cgroup v2 ``cpu.max`` and v1 ``cfs_quota_us``: 1.5 CPUs' worth -> at most 2 threads;
    no limit ("max", -1, no files) leaves the core count."""
    cores = _fake_sysfs(tmp_path / "sys", lambda cpu: cpu)
    v2, v1, none = tmp_path / "v2", tmp_path / "v1" / "cpu", tmp_path / "none"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(v2) == 1.5 and cpu_quota(v1.parent) == 1.0 and cpu_quota(none) is None
    assert thread_count(cores, v2) == min(2, physical_cores(cores))
    assert thread_count(cores, v1.parent) == 1
    assert thread_count(cores, none) == physical_cores(cores)
    (v2 / "cpu.max").write_text("max 100000\n")
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(v2) is None and cpu_quota(v1.parent) is None


def test_importing_mdl_tvm_sizes_the_tvm_pool():
    """TVM alone would halve the count on x86-64 (its hyper-thread guess); after ``import
    mdl_tvm`` the pool has one thread per physical core."""
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    code = ("import mdl_tvm, tvm, tvm_ffi; from mdl_tvm.core.threads import thread_count; "
            "print(tvm_ffi.get_global_func('runtime.NumThreads')(), thread_count())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    assert out[0] == out[1]


def test_threads_are_unpinned_unless_the_user_says_otherwise():
    for value in ("1", "0"):
        env = {"TVM_BIND_THREADS": value}
        assert default_affinity(env) is False and env == {"TVM_BIND_THREADS": value}
    env = {}
    assert default_affinity(env) is True and env == {"TVM_BIND_THREADS": "0"}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to")
def test_after_import_the_tvm_workers_may_run_on_every_cpu():
    """TVM alone pins each pool thread to one core; after ``import mdl_tvm`` every thread of
    the process (main and workers, after a parallel kernel ran) keeps the full CPU set."""
    env = {k: v for k, v in os.environ.items() if k != "TVM_BIND_THREADS"}
    env["TVM_NUM_THREADS"] = "2"
    code = """
import os, mdl_tvm, numpy as np, tvm
from tvm import te
a = te.placeholder((4096,), name="a")
b = te.compute(a.shape, lambda i: a[i] * 2.0, name="b")
sch = tvm.s_tir.Schedule(te.create_prim_func([a, b]))
sch.parallel(sch.get_loops(sch.get_sblock("b"))[0])
f = tvm.compile(sch.mod, target="llvm")
x = tvm.runtime.tensor(np.ones(4096, "float32"))
y = tvm.runtime.tensor(np.zeros(4096, "float32"))
f(x, y)
assert float(y.numpy().sum()) == 8192.0
tids = os.listdir("/proc/self/task")
print(len(tids), *sorted({len(os.sched_getaffinity(int(t))) for t in tids}))
"""
    for bind in ("1", None):  # TVM's own default first, to show what the default changes
        run_env = dict(env, TVM_BIND_THREADS=bind) if bind else env
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=run_env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        threads, *sizes = map(int, out.stdout.split())
        assert threads >= 2  # the pool's worker exists
        if bind:
            assert min(sizes) == 1  # pinned: some thread may run on one CPU only
        else:
            assert sizes == [len(os.sched_getaffinity(0))]
