"""The emulated phone without RPC: cached set-up, the device-side runner, instruction counts."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from deploy import device
from deploy.emulator import RUNNER, count_instructions, run_on_emulator
from mdl_tvm.core.numerics import relative_error

pytestmark = pytest.mark.phone


def test_setup_is_cached_and_detects_a_broken_cache(phone_env):
    stamp = phone_env.root / "setup.json"
    before = stamp.stat().st_mtime_ns
    logged = []
    env = device.setup(log=logged.append)
    assert logged == [] and stamp.stat().st_mtime_ns == before  # warm: stamps checked only
    assert env == phone_env and device.is_ready()
    assert env.guest_python.is_file() and env.plugin.is_file() and env.runtime_extra.is_file()
    assert not (env.site / "tvm" / "lib" / "libtvm_compiler.so").exists()  # runtime only
    # a missing file is noticed (setup() would rebuild). Moved away and back with its
    # mtime: rewriting a .py file would make its cached byte code stale and shift the
    # guest's start-up, and with it later instruction counts by a few instructions.
    victim = next(env.site.glob("numpy-*.dist-info/RECORD"))
    aside = env.root / "RECORD.moved-by-test"  # outside the part: it is missing there
    victim.rename(aside)
    try:
        assert not device.is_ready()
    finally:
        aside.rename(victim)
    assert device.is_ready()


def test_device_python_is_arm64_runtime_only(phone_env):
    code = "import platform, sys, tvm\nprint(platform.machine(), tvm.base._RUNTIME_ONLY)\n"
    code += "print(sys.executable)"
    res = subprocess.run(
        [*device.python_cmd(phone_env), "-c", code], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    machine, runtime_only, executable = res.stdout.split()
    assert machine == "aarch64" and runtime_only == "True"
    assert executable == str(phone_env.python)  # RPC workers re-enter QEMU through it


def test_device_runner_round_trips_npy_files(phone_env, arm64_model, tmp_path):
    so_path, x, ref = arm64_model
    np.save(tmp_path / "x.npy", x)
    res = subprocess.run(
        [
            *device.python_cmd(phone_env),
            str(RUNNER),
            so_path,
            "--inputs",
            str(tmp_path / "x.npy"),
            "--outputs-dir",
            str(tmp_path / "out"),
            "--repeat",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["out0.npy"]
    out = np.load(tmp_path / "out" / "out0.npy")
    assert out.shape == (1, 10) and relative_error(out, ref) <= 1e-4


def test_device_runner_rejects_missing_files(phone_env, tmp_path):
    res = subprocess.run(
        [
            *device.python_cmd(phone_env),
            str(RUNNER),
            str(tmp_path / "none.so"),
            "--outputs-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2 and "no such file" in res.stderr


def test_run_on_emulator_matches_host(phone_env, arm64_model):
    so_path, x, ref = arm64_model
    (out,) = run_on_emulator(so_path, [x], repeat=2, env=phone_env)
    assert relative_error(out, ref) <= 1e-4


@pytest.mark.slow  # three counting runs under QEMU: about 20 s
def test_instruction_count_is_deterministic(phone_env, arm64_model):
    so_path, x, _ = arm64_model
    first = count_instructions(so_path, [x], runs=5, verify=True, env=phone_env)
    second = count_instructions(so_path, x, runs=5, env=phone_env)
    fewer_runs = count_instructions(so_path, x, runs=3, env=phone_env)
    assert first == second
    # per inference: start-up cancels in (count(2N) - count(N)) / N. Not exactly: the calls
    # still get a little cheaper after the first few (47,434 at N=3, 46,858 at N=5).
    assert abs(fewer_runs - first) < 0.02 * first, (fewer_runs, first)
    # conv 1 -> 4 (3x3) on 8x8 plus a 256 -> 10 dense: 4,864 MACs, unscheduled code
    assert 20_000 < first < 200_000
