"""The `mdl-tvm` command line, run as a real subprocess, and the demo."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import mdl_tvm
from mdl_tvm import zoo


def mdl(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "mdl_tvm", *args], capture_output=True,
                          text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"mdl-tvm {args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_targets_lists_profiles():
    out = mdl("targets").stdout
    for name in ("host", "arm64", "arm64-fp16", "cortex-a55", "cortex-a76", "sd835", "rpi4",
                 "android-arm64"):
        assert name in out


def test_compile_info_round_trip_onnx(tmp_path):
    model = zoo.build("lenet5")
    onnx_path = tmp_path / "lenet.onnx"
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(onnx_path), dynamo=False)
    so = tmp_path / "lenet-host.so"
    out = mdl("compile", str(onnx_path), "--target", "host", "-o", str(so)).stdout
    assert "MACs" in out and so.exists()
    info = mdl("info", str(so)).stdout
    assert "(1, 1, 28, 28)" in info and "nn.conv2d 2" in info
    loaded = mdl_tvm.load(str(so))
    x = np.random.default_rng(1).standard_normal((1, 1, 28, 28)).astype("float32")
    expected = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(loaded.run(x)[0], expected, rtol=1e-4, atol=1e-5)


def test_compile_zoo_for_arm64(tmp_path):
    so = tmp_path / "alexnet.so"
    mdl("compile", "alexnet", "--target", "arm64", "-o", str(so))
    meta = mdl("info", str(so), "--json").stdout
    assert '"mtriple": "aarch64-linux-gnu"' in meta


@pytest.mark.parametrize("args,message", [
    (("compile", "lenet5", "--target", "nope", "-o", "x.so"), "valid targets"),
    (("compile", "no-such-model", "-o", "x.so"), "zoo models"),
    (("info", "/nonexistent.so"), "no artifact"),
])
def test_cli_errors_are_one_clear_line(args, message, tmp_path):
    proc = mdl(*args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_demo_runs_on_host_and_phone_and_prints_table():
    proc = mdl("demo")
    assert "PyTorch eager" in proc.stdout and "MobileDL" in proc.stdout
    assert "top-1 acc" in proc.stdout
    assert "arm64 phone (QEMU)" in proc.stdout and "argmax = host" in proc.stdout
