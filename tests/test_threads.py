"""One TVM thread per physical core by default (`mdl_tvm.core.threads`); the user's
``TVM_NUM_THREADS`` / ``OMP_NUM_THREADS`` always wins."""

import os
import subprocess
import sys
from pathlib import Path

from mdl_tvm.core.threads import default_threads, physical_cores

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
    assert default_threads(env) == physical_cores() and env["TVM_NUM_THREADS"] == str(
        physical_cores())


def test_importing_mdl_tvm_sizes_the_tvm_pool():
    """TVM alone would halve the count on x86-64 (its hyper-thread guess); after ``import
    mdl_tvm`` the pool has one thread per physical core."""
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    code = ("import mdl_tvm, tvm, tvm_ffi; from mdl_tvm.core.threads import physical_cores; "
            "print(tvm_ffi.get_global_func('runtime.NumThreads')(), physical_cores())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    assert out[0] == out[1]
