"""The `mdl-tvm` command line, run as a real subprocess, and the demo."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import mdl_tvm
from mdl_tvm import zoo
from mdl_tvm.core.targets import PROFILES

LENET_MACS = 6 * 28 * 28 * 25 + 16 * 10 * 10 * 6 * 25 + 400 * 120 + 120 * 84 + 84 * 10


def mdl(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "mdl_tvm", *args], capture_output=True,
                          text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"mdl-tvm {args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_targets_lists_profiles():
    lines = mdl("targets").stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(PROFILES)
    fp16 = {line.split()[0] for line in lines if line.split()[1] == "fp16"}
    assert fp16 == {name for name, p in PROFILES.items() if p.fp16_arith}
    assert fp16 == {"arm64-fp16", "cortex-a55", "cortex-a76"}


def test_compile_info_round_trip_onnx(tmp_path):
    model = zoo.build("lenet5")
    onnx_path = tmp_path / "lenet.onnx"
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(onnx_path), dynamo=False)
    so = tmp_path / "lenet-host.so"
    out = mdl("compile", str(onnx_path), "--target", "host", "-o", str(so)).stdout
    assert f"MACs        {LENET_MACS:,}" in out
    params = sum(p.numel() for p in model.parameters())
    assert f"weights     {4 * params:,} bytes in 10 tensors" in out
    assert f"wrote {so} ({so.stat().st_size:,} bytes) for target host" in out
    info = mdl("info", str(so)).stdout
    assert "(1, 1, 28, 28)" in info and "nn.conv2d 2" in info
    assert f"MACs        {LENET_MACS:,}" in info
    loaded = mdl_tvm.load(str(so))
    x = np.random.default_rng(1).standard_normal((1, 1, 28, 28)).astype("float32")
    expected = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(loaded.run(x)[0], expected, rtol=1e-4, atol=1e-5)


def test_compile_zoo_for_arm64(tmp_path):
    so = tmp_path / "alexnet.so"
    mdl("compile", "alexnet", "--target", "arm64", "-o", str(so))
    meta = json.loads(mdl("info", str(so), "--json").stdout)
    assert meta["target"] == "arm64" and meta["mtriple"] == "aarch64-linux-gnu"
    assert [s["shape"] for s in meta["inputs"]] == [list(zoo.INPUT_SHAPES["alexnet"])]
    assert [s["shape"] for s in meta["outputs"]] == [[1, 10]]
    assert so.read_bytes()[:4] == b"\x7fELF"


@pytest.mark.parametrize("args,message", [
    (("compile", "lenet5", "--target", "nope", "-o", "x.so"), "valid targets"),
    (("compile", "no-such-model", "-o", "x.so"), "zoo models"),
    (("info", "/nonexistent.so"), "no artifact"),
])
def test_cli_errors_are_one_clear_line(args, message, tmp_path):
    proc = mdl(*args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.fast_twin("test_demo_runs_on_host_and_phone_and_prints_table")
def test_demo_table_without_phone_or_training(monkeypatch, capfd):
    """The demo's flow and table on an untrained LeNet-5 and 200 test images, in-process:
    MobileDL on the host classifies exactly as PyTorch does (the fast-subset version of the
    demo test below)."""
    from mdl_tvm import data, demo

    monkeypatch.setattr(demo, "trained_model", lambda name, config, log: zoo.build(name))
    monkeypatch.setattr(demo, "load_fashion_mnist",
                        lambda split: data.load_fashion_mnist(split, limit=200))
    lines = []
    assert demo.run_demo(phone=False, log=lines.append) == 0
    rows = {tuple(line.split()[:2]): line.split() for line in lines
            if line.startswith(("PyTorch eager", "MobileDL"))}
    assert set(rows) == {("PyTorch", "eager"), ("MobileDL", "host"), ("MobileDL", "arm64")}
    assert rows[("PyTorch", "eager")][3] == rows[("MobileDL", "host")][2]  # same accuracy
    assert "phone: skipped (--no-phone)" in lines
    assert any(f"{LENET_MACS:,} MACs" in line for line in lines)
    # the headline: uncompressed vs compressed with recovery, fp32 and fp16
    heads = {line.split("  ")[0]: line.split() for line in lines
             if line.startswith(("uncompressed", "mask:0.5"))}
    assert list(heads) == ["uncompressed, fp32", "mask:0.5 + least squares, fp32",
                           "mask:0.5 + least squares, fp16"]
    macs = [int(row[-3].replace(",", "")) for row in heads.values()]
    assert macs[0] == LENET_MACS and macs[1] == macs[2] < LENET_MACS / 2
    assert any(line.startswith("-> ") and "fewer MACs" in line for line in lines)
    assert "Warning" not in capfd.readouterr().err  # no stray TVM warnings (stderr too)


@pytest.mark.phone
@pytest.mark.slow
@pytest.mark.training
def test_demo_runs_on_host_and_phone_and_prints_table(phone_env):
    proc = mdl("demo")
    out = proc.stdout
    assert "PyTorch eager" in out and "MobileDL" in out and "top-1 acc" in out
    torch_acc = float(re.search(r"PyTorch eager\s+host\s+([\d.]+)", out).group(1))
    host_acc = float(re.search(r"MobileDL\s+host\s+([\d.]+)", out).group(1))
    assert torch_acc > 0.8 and abs(host_acc - torch_acc) <= 1e-3  # trained, 10 classes
    assert "arm64 phone (QEMU)" in out and "argmax = host" in out
    # the headline (as in the fast twin above), with the phone's instruction counts
    heads = {line.split("  ")[0]: line for line in out.splitlines()
             if line.startswith(("uncompressed", "mask:0.5"))}
    assert list(heads) == ["uncompressed, fp32", "mask:0.5 + least squares, fp32",
                           "mask:0.5 + least squares, fp16"]
    numbers = [[int(n.replace(",", "")) for n in re.findall(r"\d{1,3}(?:,\d{3})+", line)]
               for line in heads.values()]  # weights, MACs, instructions
    macs = [row[1] for row in numbers]
    assert macs[0] == LENET_MACS and macs[1] == macs[2] < LENET_MACS / 2
    assert numbers[0][2] > numbers[1][2] > numbers[2][2]  # fewer instructions each step
    assert re.search(r"^-> [\d.]+x fewer instructions at [\d.]+ points", out, re.M)
    assert "Warning" not in proc.stderr  # no stray TVM warnings
