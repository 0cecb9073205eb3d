"""The emulated phone without RPC: cached set-up, the device-side runner, instruction counts."""

from __future__ import annotations

import subprocess
import time

import numpy as np

from deploy import device
from deploy.emulator import RUNNER, count_instructions, run_on_emulator


def _rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))


def test_setup_is_cached_and_detects_a_broken_cache(phone_env):
    t0 = time.monotonic()
    env = device.setup()
    assert time.monotonic() - t0 < 5  # warm: only the stamps are checked
    assert env == phone_env and device.is_ready()
    assert env.guest_python.is_file() and env.plugin.is_file() and env.runtime_extra.is_file()
    assert not (env.site / "tvm" / "lib" / "libtvm_compiler.so").exists()  # runtime only
    victim = env.site / "sitecustomize.py"
    text = victim.read_text()
    victim.unlink()
    try:
        assert not device.is_ready()  # a missing file is noticed (setup() would rebuild)
    finally:
        victim.write_text(text)
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
    assert out.shape == (1, 10) and _rel_err(out, ref) <= 1e-4


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
    assert _rel_err(out, ref) <= 1e-4


def test_instruction_count_is_deterministic(phone_env, arm64_model):
    so_path, x, _ = arm64_model
    first = count_instructions(so_path, [x], runs=5, verify=True, env=phone_env)
    second = count_instructions(so_path, x, runs=5, env=phone_env)
    assert first == second
    assert 1_000 < first < 10_000_000  # a tiny conv net: tens of thousands of instructions
