"""The compile spine: every zoo model, ONNX and Relax inputs, export and load."""

import subprocess

import numpy as np
import pytest
import torch
from helpers import folded_weight_count, prepared, torch_macs

import mdl_tvm
from mdl_tvm import zoo
from mdl_tvm.core.artifact import read_metadata
from mdl_tvm.core.graph_stats import graph_stats
from mdl_tvm.core.numerics import relative_error

# resnet18 / mobilenetv2 at their 224x224 default: slow; test_schedules_models runs them at
# 64x64, and test_zoo_stats_count_macs_and_weights covers their statistics cheaply.
ZOO = [pytest.param(name, marks=pytest.mark.slow) if name in ("resnet18", "mobilenetv2")
       else name for name in zoo.MODELS]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_matches_pytorch_on_host(name, rng):
    model = zoo.build(name)
    shape = zoo.INPUT_SHAPES[name]
    x = rng.standard_normal(shape).astype("float32")
    compiled = mdl_tvm.compile(model, "host", input_shapes=[shape])
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    (actual,) = compiled.run(x)
    assert actual.shape == expected.shape
    assert relative_error(actual, expected) < 1e-4
    assert compiled.stats.macs == torch_macs(model, shape)


def _stats_case(name):
    marks = [pytest.mark.slow] if name == "mobilenetv2" else []  # its import alone: ~5 s
    return pytest.param(name, marks=marks)


@pytest.mark.parametrize("name", [_stats_case(n) for n in zoo.MODELS])
def test_zoo_stats_count_macs_and_weights(name):
    """The statistics of the prepared graph (no build): MACs as PyTorch counts them, one
    conv2d per torch conv, and every BatchNorm folded into its conv: no BN arithmetic left,
    weight bytes those of the folded network. Small inputs for the ImageNet-style nets."""
    model = zoo.build(name)
    shape = (1, 3, 32, 32) if name in ("resnet18", "mobilenetv2") else zoo.INPUT_SHAPES[name]
    stats = graph_stats(prepared(model, shape))
    assert stats.macs == torch_macs(model, shape)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert stats.op_counts["nn.conv2d"] == convs  # resnet18: 20
    assert not {"nn.batch_norm", "divide", "subtract"} & set(stats.op_counts), stats.op_counts
    assert stats.weight_bytes == 4 * folded_weight_count(model)


def test_summary_counts_lenet_macs_exactly():
    compiled = mdl_tvm.compile(zoo.build("lenet5"), "host", input_shapes=[(1, 1, 28, 28)])
    conv1 = 6 * 28 * 28 * 1 * 25
    conv2 = 16 * 10 * 10 * 6 * 25
    dense = 400 * 120 + 120 * 84 + 84 * 10
    assert compiled.stats.macs == conv1 + conv2 + dense
    params = sum(p.numel() for p in zoo.build("lenet5").parameters())
    assert compiled.stats.weight_bytes == 4 * params
    assert compiled.stats.num_weights == 10  # 5 weights, 5 biases
    summary = compiled.summary()
    assert summary["inputs"][0]["shape"] == [1, 1, 28, 28]
    assert summary["outputs"][0]["shape"] == [1, 10]
    assert summary["target"] == "host"
    assert set(summary["compile_seconds"]) >= {"import", "prepare", "lower", "build"}


def test_onnx_file_and_proto(tmp_path, rng):
    import onnx

    model = zoo.build("lenet5")
    path = tmp_path / "lenet.onnx"
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False,
                      input_names=["image"])
    x = rng.standard_normal((1, 1, 28, 28)).astype("float32")
    expected = model(torch.from_numpy(x)).detach().numpy()
    from_path = mdl_tvm.compile(str(path), "host")
    from_proto = mdl_tvm.compile(onnx.load(str(path)), "host")
    assert from_path.inputs[0].name == "image"
    assert relative_error(from_path.run(x)[0], expected) < 1e-4
    assert relative_error(from_proto.run(x)[0], expected) < 1e-4


def test_relax_irmodule_input(rng):
    import tvm
    from tvm.script import relax as R

    @R.function
    def main(x: R.Tensor((2, 3), "float32")):
        with R.dataflow():
            y = R.nn.relu(R.add(x, x))
            R.output(y)
        return y

    mod = tvm.IRModule({"main": main})
    compiled = mdl_tvm.compile(mod, "host")
    x = rng.standard_normal((2, 3)).astype("float32")
    np.testing.assert_allclose(compiled.run(x)[0], np.maximum(2 * x, 0), rtol=1e-6)
    assert [(s.shape, s.dtype) for s in compiled.inputs] == [((2, 3), "float32")]
    assert compiled.stats.op_counts == {"add": 1, "nn.relu": 1}


def test_arm64_export_is_aarch64_shared_object(tmp_path):
    compiled = mdl_tvm.compile(zoo.build("lenet5"), "arm64", input_shapes=[(1, 1, 28, 28)])
    path = compiled.export(str(tmp_path / "lenet-arm64.so"))
    header = subprocess.run(["readelf", "-h", path], capture_output=True, text=True,
                            check=True).stdout
    assert "AArch64" in header and "DYN (Shared object file)" in header
    meta = read_metadata(path)
    assert meta["target"] == "arm64" and meta["mtriple"] == "aarch64-linux-gnu"
    assert list(tmp_path.iterdir()) == [tmp_path / "lenet-arm64.so"]  # no temp files left


def test_host_export_load_round_trip(tmp_path, rng):
    model = zoo.build("lenet5")
    compiled = mdl_tvm.compile(model, "host", input_shapes=[(1, 1, 28, 28)])
    path = compiled.export(str(tmp_path / "lenet.so"))
    loaded = mdl_tvm.load(path)
    x = rng.standard_normal((1, 1, 28, 28)).astype("float32")
    np.testing.assert_array_equal(loaded.run(x)[0], compiled.run(x)[0])
    assert loaded.stats == compiled.stats
    assert loaded.inputs == compiled.inputs


@pytest.mark.parametrize("name", ["arm64", "arm64-fp16", "cortex-a55", "cortex-a76", "sd835",
                                  "rpi4"])
def test_arm_profiles_build_targets(name):
    profile = mdl_tvm.get_profile(name)
    target = profile.tvm_target()
    assert str(target.attrs["mtriple"]) == "aarch64-linux-gnu"
    has_fp16 = bool(target.attrs.get("mattr") and "+fullfp16" in list(target.attrs["mattr"]))
    assert has_fp16 == profile.fp16_arith
