"""Bad input gets a clear error that names the problem and the fix."""

import dataclasses
import os
import platform

import numpy as np
import pytest
import torch

import mdl_tvm
from mdl_tvm import zoo
from mdl_tvm.core.errors import (
    InputSpecError,
    ModelFormatError,
    ToolchainError,
    UnknownTargetError,
    UnsupportedOpError,
)

SHAPE = [(1, 1, 28, 28)]


@pytest.fixture(scope="module")
def lenet_host():
    return mdl_tvm.compile(zoo.build("lenet5"), "host", input_shapes=SHAPE)


def test_unknown_target_lists_valid_names():
    with pytest.raises(UnknownTargetError, match="valid targets: host, arm64"):
        mdl_tvm.compile(zoo.build("lenet5"), "arm65", input_shapes=SHAPE)
    with pytest.raises(TypeError, match="profile name"):
        mdl_tvm.get_profile(64)


def test_unsupported_torch_op_is_named():
    class Bessel(torch.nn.Module):
        def forward(self, x):
            return torch.special.bessel_j0(x)

    with pytest.raises(UnsupportedOpError, match="bessel_j0"):
        mdl_tvm.compile(Bessel(), "host", input_shapes=[(1, 4)])


def test_unsupported_onnx_op_is_named(tmp_path):
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [helper.make_node("Det", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    path = str(tmp_path / "det.onnx")
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(UnsupportedOpError, match="Det"):
        mdl_tvm.compile(path, "host")


def test_missing_input_shapes():
    with pytest.raises(InputSpecError, match="input_shapes"):
        mdl_tvm.compile(zoo.build("lenet5"), "host")
    with pytest.raises(InputSpecError, match="non-positive"):
        mdl_tvm.compile(zoo.build("lenet5"), "host", input_shapes=[(1, 0, 28, 28)])
    with pytest.raises(InputSpecError, match="input_dtype"):
        mdl_tvm.compile(zoo.build("lenet5"), "host", input_shapes=SHAPE, input_dtype="complex")


def test_symbolic_onnx_dims_need_shapes(tmp_path):
    path = str(tmp_path / "dyn.onnx")
    torch.onnx.export(zoo.build("lenet5"), (torch.zeros(1, 1, 28, 28),), path, dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    with pytest.raises(InputSpecError, match="symbolic dims"):
        mdl_tvm.compile(path, "host")
    compiled = mdl_tvm.compile(path, "host", input_shapes={"x": (2, 1, 28, 28)})
    assert compiled.inputs[0].shape == (2, 1, 28, 28)
    with pytest.raises(InputSpecError, match="not model inputs"):
        mdl_tvm.compile(path, "host", input_shapes={"y": (2, 1, 28, 28)})


def test_corrupt_and_missing_onnx_files(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07garbage that is not a protobuf" * 10)
    with pytest.raises(ModelFormatError, match="not a valid ONNX model"):
        mdl_tvm.compile(str(path), "host")
    with pytest.raises(ModelFormatError, match="no model file"):
        mdl_tvm.compile(str(tmp_path / "absent.onnx"), "host")


def test_wrong_runtime_shape_count_and_dtype(lenet_host):
    good = np.zeros((1, 1, 28, 28), np.float32)
    with pytest.raises(InputSpecError, match=r"shape \(1, 1, 28, 28\)"):
        lenet_host.run(np.zeros((1, 1, 32, 32), np.float32))
    with pytest.raises(InputSpecError, match="dtype float32.*astype"):
        lenet_host.run(good.astype(np.float64))
    with pytest.raises(InputSpecError, match="takes 1 input"):
        lenet_host.run(good, good)
    assert lenet_host.run(good)[0].shape == (1, 10)


def test_running_arm_build_on_host_explains(tmp_path):
    arm = mdl_tvm.compile(zoo.build("lenet5"), "arm64", input_shapes=SHAPE)
    with pytest.raises(UnknownTargetError, match="cannot run on this machine"):
        arm.run(np.zeros((1, 1, 28, 28), np.float32))
    path = arm.export(str(tmp_path / "a.so"))
    with pytest.raises(UnknownTargetError, match="run it on the device"):
        mdl_tvm.load(path)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86 vector ISAs")
def test_host_library_for_a_wider_vector_isa_is_refused_before_loading(tmp_path, monkeypatch):
    """An AVX-512 host build copied to an AVX2 machine would die of SIGILL: refused."""
    from mdl_tvm.core import targets

    wide = dataclasses.replace(mdl_tvm.get_profile("host"), mcpu="skylake-avx512",
                               vector_bits=512)
    path = mdl_tvm.compile(zoo.build("lenet5"), wide, input_shapes=SHAPE).export(
        str(tmp_path / "wide.so"))
    monkeypatch.setattr(targets, "_cpu_flags", lambda: {"sse2", "avx", "avx2", "fma"})
    with pytest.raises(UnknownTargetError, match="lacks avx512bw.*compile it again on this"):
        mdl_tvm.load(path)


def test_missing_cross_compiler_names_the_package(tmp_path, monkeypatch):
    arm = mdl_tvm.compile(zoo.build("lenet5"), "arm64", input_shapes=SHAPE)
    monkeypatch.setenv("PATH", "/nonexistent")
    out = tmp_path / "lenet.so"
    with pytest.raises(ToolchainError, match="g\\+\\+-aarch64-linux-gnu"):
        arm.export(str(out))
    assert not out.exists()


def test_android_target_without_ndk_names_env_vars(monkeypatch):
    monkeypatch.delenv("TVM_NDK_CC", raising=False)
    monkeypatch.delenv("ANDROID_NDK_HOME", raising=False)
    with pytest.raises(ToolchainError, match="TVM_NDK_CC"):
        mdl_tvm.get_profile("android-arm64").compiler()


def test_failed_link_leaves_nothing_behind(tmp_path, monkeypatch, lenet_host):
    monkeypatch.setenv("CXX", "/bin/false")
    out = tmp_path / "lenet.so"
    with pytest.raises(ToolchainError, match="linking"):
        lenet_host.export(str(out))
    assert os.listdir(tmp_path) == []


def test_load_rejects_non_artifacts(tmp_path):
    plain = tmp_path / "plain.so"
    plain.write_bytes(b"\x7fELF not ours")
    with pytest.raises(ModelFormatError,
                       match="not a usable MobileDL library|not a MobileDL artifact"):
        mdl_tvm.load(str(plain))
    with pytest.raises(ModelFormatError, match="no artifact"):
        mdl_tvm.load(str(tmp_path / "absent.so"))
