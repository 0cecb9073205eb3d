"""The mobile peers on the emulated phone: conversions on the host, a peer run and counted
on the phone like MobileDL, and instruction counting of single calls for tuning."""

import numpy as np
import pytest
import torch
from helpers import seeded

from deploy.engines import ENGINES, count_model, resolve
from deploy.peers.convert import export_onnx, onnx_io, prepare_peer
from deploy.peers.errors import EngineRefused


class SmallCNN(torch.nn.Module):
    """Conv (stride 2, padded) + ReLU6, depthwise, max pool, residual add, dense."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = torch.nn.Linear(8 * 4 * 4, 6)

    def forward(self, x):
        y = torch.nn.functional.relu6(self.stem(x))
        y = torch.relu(self.dw(y)) + y
        return self.fc(torch.nn.functional.max_pool2d(y, 2).flatten(1))


class Grouped(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 8, 3, groups=2)

    def forward(self, x):
        return self.conv(x)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype("float32")
    return ("small", seeded(SmallCNN), (x,))


@pytest.fixture(scope="module")
def peers_env():
    from deploy import device

    return device.setup(peers=True)


def test_onnx_export_names_inputs_and_outputs(small, tmp_path):
    _, module, inputs = small
    path = export_onnx(module, inputs, tmp_path / "m.onnx", input_names=["x"])
    names, outs, shapes, dtypes = onnx_io(path)
    assert (names, outs, shapes, dtypes) == (["x"], ["out0"], [(1, 6)], ["float32"])


@pytest.mark.phone
def test_tflite_writer_makes_one_nhwc_graph_with_fused_activations(small, tmp_path, peers_env):
    """The .tflite the writer emits, read back with the schema: NHWC, explicit padding,
    ReLU6 fused into the stem, a transpose back to NCHW before the dense layer."""
    from deploy.peers import tflite
    from deploy.peers.install import SCHEMA

    ref = resolve(small, tmp_path)
    model = prepare_peer("litert", ref.onnx, tmp_path / "lite", peers_env, [(1, 3, 16, 16)])
    schema = tflite._schema(peers_env.peers / SCHEMA)
    graph = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(
        model.files[0].read_bytes(), 0)).subgraphs[0]
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(
        model.files[0].read_bytes(), 0)).operatorCodes
    ops = [names[codes[op.opcodeIndex].builtinCode] for op in graph.operators]
    assert ops == ["PAD", "CONV_2D", "PAD", "DEPTHWISE_CONV_2D", "ADD", "MAX_POOL_2D",
                   "TRANSPOSE", "RESHAPE", "FULLY_CONNECTED"]
    assert list(graph.tensors[graph.inputs[0]].shape) == [1, 16, 16, 3]
    assert graph.operators[1].builtinOptions.fusedActivationFunction == 3  # RELU6
    assert model.spec["input_layouts"] == ["nhwc"] and model.spec["output_layouts"] == ["nchw"]


@pytest.mark.phone
def test_unsupported_ops_are_named(tmp_path, peers_env):
    x = np.zeros((1, 4, 6, 6), np.float32)
    ref = resolve(("grouped", seeded(Grouped), (x,)), tmp_path)
    with pytest.raises(EngineRefused, match=r"LiteRT writer: grouped Conv .*groups=2"):
        prepare_peer("litert", ref.onnx, tmp_path / "lite", peers_env, [x.shape])
    with pytest.raises(ValueError, match=r"unknown engine 'tflite'; choose one of"):
        count_model("lenet5", "tflite")
    assert ENGINES == ("mobiledl", "mobiledl-fp16", "ort", "ncnn", "ncnn-fp16", "mnn",
                       "mnn-fp16", "litert")


@pytest.mark.phone
@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ort", "ncnn", "mnn", "litert"])
def test_peer_runs_on_the_phone_with_its_output_checked(small, engine):
    """Each peer from its aarch64 wheel on the emulated Cortex-A76: output within 1e-5 of
    PyTorch, and a count repeated agrees exactly (deterministic)."""
    first = count_model(small, engine, runs=2, verify=True)
    assert first.rel_error < 1e-5, first
    assert first.cpu == "cortex-a76"
    assert 10_000 < first.instructions < 5_000_000
    assert count_model(small, engine, runs=2).instructions == first.instructions


class NormUp(torch.nn.Module):
    """Instance norm (ONNX: ReduceMean, Sub, Sqrt, Div) and nearest upsampling (Resize),
    as in the style-transfer net."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.gamma = torch.nn.Parameter(torch.rand(1, 4, 1, 1) + 0.5)
        self.up = torch.nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x):
        y = self.conv(x)
        centred = y - y.mean(dim=(2, 3), keepdim=True)
        var = (centred * centred).mean(dim=(2, 3), keepdim=True)
        return self.up(torch.relu(centred / torch.sqrt(var + 1e-5) * self.gamma))


class Embed(torch.nn.Module):
    """An int64 token input (the poem step's lookup)."""

    def __init__(self):
        super().__init__()
        self.emb, self.fc = torch.nn.Embedding(20, 8), torch.nn.Linear(8, 4)

    def forward(self, tokens):
        return self.fc(self.emb(tokens))


@pytest.mark.phone
@pytest.mark.slow
@pytest.mark.parametrize("engine, case", [("litert", "normup"), ("mnn", "embed")])
def test_peers_take_instance_norm_upsampling_and_integer_inputs(engine, case):
    """LiteRT (our writer: SUB, DIV, SQRT, RESIZE_NEAREST_NEIGHBOR) runs the style net's
    instance norm and upsampling; MNN takes an int64 token input (as int32)."""
    rng = np.random.default_rng(0)
    if case == "normup":
        model = ("normup", seeded(NormUp), (rng.standard_normal((1, 3, 8, 8)).astype("float32"),))
    else:
        model = ("embed", seeded(Embed), (rng.integers(0, 20, (1, 3)).astype("int64"),))
    result = count_model(model, engine, runs=1)
    assert result.rel_error < 1e-5, result
