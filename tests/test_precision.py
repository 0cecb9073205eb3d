"""The precision stage (`mdl_tvm.compiler.precision`): fp16 compute on +fullfp16 profiles, fp16
weight storage everywhere, target checks, the fp16 vector code in the exported arm64
library, and the numerics of fp16 against fp32 on the emulated phone.

The graph rewrite itself is checked structurally first (TVM's idiom: `convert`'s output is
`tvm.ir.assert_structural_equal` to the expected module written in TVMScript)."""

import re

import numpy as np
import pytest
import torch
import tvm
from helpers import bind_weights, disassemble, op_dtypes
from tvm.script import ir as I
from tvm.script import relax as R

import mdl_tvm
from mdl_tvm import zoo
from mdl_tvm.compiler.precision import PrecisionConfig, convert, parse_precision
from mdl_tvm.core.errors import PrecisionError
from mdl_tvm.core.numerics import relative_error

LENET_SHAPE = zoo.INPUT_SHAPES["lenet5"]
# fp16 arithmetic: vector (.8h / .4h arrangements) or scalar on h registers.
_FP16_ARITH = re.compile(r"\b(fmla|fmls|fmul|fadd|fsub|fmax|fmaxnm|fmin|fdiv|fmadd)\s+"
                         r"(v\d+\.(8|4)h|h\d+)")
_FMLA_HALF = re.compile(r"\bfmla\s+v\d+\.(8|4)h")


@pytest.fixture(scope="module")
def lenet():
    return zoo.build("lenet5")


def _relax_dtypes(model) -> dict:
    """``{op name: set of result dtypes}`` of the compiled high-level graph."""
    return op_dtypes(model.relax_module)


# -- structure: convert() on a tiny conv -> relu -> matmul graph -----------------------------


@I.ir_module
class ConvReluDense:
    """conv -> bias -> relu -> flatten -> matmul -> bias: the matmul makes the output."""

    @R.function
    def main(x: R.Tensor((1, 2, 4, 4), "float32"), w0: R.Tensor((3, 2, 3, 3), "float32"),
             b0: R.Tensor((1, 3, 1, 1), "float32"), w1: R.Tensor((12, 5), "float32"),
             b1: R.Tensor((5,), "float32")):
        with R.dataflow():
            a = R.nn.conv2d(x, w0)
            b = R.add(a, b0)
            c = R.nn.relu(b)
            d = R.reshape(c, (1, 12))
            e = R.matmul(d, w1)
            gv = R.add(e, b1)
            R.output(gv)
        return gv


def _dense_weights():
    rng = np.random.default_rng(0)
    shapes = {"w0": (3, 2, 3, 3), "b0": (1, 3, 1, 1), "w1": (12, 5), "b1": (5,)}
    return {k: rng.standard_normal(s).astype("float32") for k, s in shapes.items()}


def _half(weights, names):
    """The weights named in `names` converted to fp16 (what the pass must bind)."""
    return {k: v.astype("float16") if k in names else v for k, v in weights.items()}


def test_fp16_structure_casts_at_the_edges_and_keeps_the_last_layer_fp32():
    """fp16 (accumulate fp16): the input is cast once, conv / bias / relu / flatten run in
    fp16 with fp16 weights; the last layer (the matmul making the output) and its bias
    stay fp32, its input cast back; the output is fp32."""

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 2, 4, 4), "float32"), w0: R.Tensor((3, 2, 3, 3), "float16"),
                 b0: R.Tensor((1, 3, 1, 1), "float16"), w1: R.Tensor((12, 5), "float32"),
                 b1: R.Tensor((5,), "float32")):
            with R.dataflow():
                x16 = R.astype(x, "float16")
                a = R.nn.conv2d(x16, w0, out_dtype="float16")
                b = R.add(a, b0)
                c = R.nn.relu(b)
                d = R.reshape(c, (1, 12))
                d32 = R.astype(d, "float32")
                e = R.matmul(d32, w1)
                gv = R.add(e, b1)
                R.output(gv)
            return gv

    w = _dense_weights()
    after = convert(bind_weights(ConvReluDense, w), PrecisionConfig(mode="fp16", emulate=True))
    tvm.ir.assert_structural_equal(after, bind_weights(Expected, _half(w, {"w0", "b0"})))


def test_fp16_structure_with_fp32_accumulation():
    """accumulate="fp32": the conv accumulates in fp32 and is cast to fp16 right after."""

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 2, 4, 4), "float32"), w0: R.Tensor((3, 2, 3, 3), "float16"),
                 b0: R.Tensor((1, 3, 1, 1), "float16"), w1: R.Tensor((12, 5), "float32"),
                 b1: R.Tensor((5,), "float32")):
            with R.dataflow():
                x16 = R.astype(x, "float16")
                acc = R.nn.conv2d(x16, w0, out_dtype="float32")
                a = R.astype(acc, "float16")
                b = R.add(a, b0)
                c = R.nn.relu(b)
                d = R.reshape(c, (1, 12))
                d32 = R.astype(d, "float32")
                e = R.matmul(d32, w1)
                gv = R.add(e, b1)
                R.output(gv)
            return gv

    w = _dense_weights()
    config = PrecisionConfig(mode="fp16", accumulate="fp32", emulate=True)
    after = convert(bind_weights(ConvReluDense, w), config)
    tvm.ir.assert_structural_equal(after, bind_weights(Expected, _half(w, {"w0", "b0"})))


def test_fp16_full_structure_casts_only_input_and_output():
    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 2, 4, 4), "float32"), w0: R.Tensor((3, 2, 3, 3), "float16"),
                 b0: R.Tensor((1, 3, 1, 1), "float16"), w1: R.Tensor((12, 5), "float16"),
                 b1: R.Tensor((5,), "float16")):
            with R.dataflow():
                x16 = R.astype(x, "float16")
                a = R.nn.conv2d(x16, w0, out_dtype="float16")
                b = R.add(a, b0)
                c = R.nn.relu(b)
                d = R.reshape(c, (1, 12))
                e = R.matmul(d, w1, out_dtype="float16")
                f = R.add(e, b1)
                f32 = R.astype(f, "float32")
                gv = f32  # the output binding keeps its name: an alias of the cast
                R.output(gv)
            return gv

    w = _dense_weights()
    after = convert(bind_weights(ConvReluDense, w), PrecisionConfig(mode="fp16-full",
                                                                     emulate=True))
    tvm.ir.assert_structural_equal(after, bind_weights(Expected, _half(w, set(w))))


def test_fp16_storage_structure_halves_only_conv_and_matmul_weights():
    """fp16-storage: conv / matmul weights in fp16, accumulating in fp32; biases and every
    activation stay fp32; no casts in the graph. fp32 leaves the module as it is."""

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 2, 4, 4), "float32"), w0: R.Tensor((3, 2, 3, 3), "float16"),
                 b0: R.Tensor((1, 3, 1, 1), "float32"), w1: R.Tensor((12, 5), "float16"),
                 b1: R.Tensor((5,), "float32")):
            with R.dataflow():
                a = R.nn.conv2d(x, w0, out_dtype="float32")
                b = R.add(a, b0)
                c = R.nn.relu(b)
                d = R.reshape(c, (1, 12))
                e = R.matmul(d, w1, out_dtype="float32")
                gv = R.add(e, b1)
                R.output(gv)
            return gv

    w = _dense_weights()
    before = bind_weights(ConvReluDense, w)
    after = convert(before, PrecisionConfig(mode="fp16-storage"))
    tvm.ir.assert_structural_equal(after, bind_weights(Expected, _half(w, {"w0", "w1"})))
    assert convert(before, PrecisionConfig()) is before  # fp32: nothing to do


def test_weights_past_the_fp16_range_are_clipped_with_a_warning():
    w = _dense_weights()
    w["w0"][0, 0, 0, 0] = 1e6
    with pytest.warns(UserWarning, match="1 weight tensor.*fp16 range"):
        after = convert(bind_weights(ConvReluDense, w), PrecisionConfig("fp16", emulate=True))
    from mdl_tvm.core.relax_utils import bound_constants

    conv_weight = next(a for a in bound_constants(after).values() if a.ndim == 4)
    assert conv_weight.dtype == np.float16 and conv_weight[0, 0, 0, 0] == 65504


# -- the stage in compile --------------------------------------------------------------------


def test_bad_precision_arguments_name_the_choices(lenet):
    with pytest.raises(ValueError, match="fp16-storage"):
        mdl_tvm.compile(lenet, "host", input_shapes=[LENET_SHAPE], precision="int8")
    with pytest.raises(ValueError, match="accumulate"):
        parse_precision("fp32", accumulate="fp16")
    with pytest.raises(ValueError, match="fp16.*fp32"):
        parse_precision("fp16", accumulate="fp8")
    with pytest.raises(TypeError, match="PrecisionConfig"):
        parse_precision(16)


@pytest.mark.parametrize("target", ["arm64", "sd835", "rpi4", "host"])
def test_fp16_compute_without_fp16_arithmetic_is_an_error(lenet, target):
    with pytest.raises(PrecisionError, match="fp16-storage") as info:
        mdl_tvm.compile(lenet, target, input_shapes=[LENET_SHAPE], precision="fp16")
    assert "arm64-fp16" in str(info.value)


def test_fp16_storage_on_host_halves_weights_and_keeps_accuracy(lenet, tmp_path, rng):
    x = rng.standard_normal(LENET_SHAPE).astype("float32")
    fp32 = mdl_tvm.compile(lenet, "host", input_shapes=[LENET_SHAPE])
    half = mdl_tvm.compile(lenet, "host", input_shapes=[LENET_SHAPE], precision="fp16-storage")
    biases = sum(p.numel() * 4 for n, p in lenet.named_parameters() if n.endswith("bias"))
    assert half.stats.weight_bytes == (fp32.stats.weight_bytes - biases) // 2 + biases
    assert relative_error(half.run(x)[0], fp32.run(x)[0]) < 2e-3
    dtypes = _relax_dtypes(half)
    assert dtypes["relax.nn.conv2d"] == {"float32"} and dtypes["relax.matmul"] == {"float32"}
    loaded = mdl_tvm.load(half.export(str(tmp_path / "half.so")))
    assert loaded.precision == {"mode": "fp16-storage"}
    np.testing.assert_allclose(loaded.run(x)[0], half.run(x)[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("accumulate, tolerance", [("fp16", 1e-2), ("fp32", 2e-3)])
def test_fp16_compute_keeps_last_layer_fp32(lenet, rng, accumulate, tolerance):
    """Host check of the graph rewrite, built with ``emulate=True`` (x86 has no fp16
    arithmetic): activations fp16, the classifier fp32, outputs fp32."""
    x = rng.standard_normal(LENET_SHAPE).astype("float32")
    expected = mdl_tvm.compile(lenet, "host", input_shapes=[LENET_SHAPE]).run(x)[0]
    config = PrecisionConfig("fp16", accumulate=accumulate, emulate=True)
    model = mdl_tvm.compile(lenet, "host", input_shapes=[LENET_SHAPE], precision=config)
    (actual,) = model.run(x)
    assert actual.dtype == np.float32 and model.outputs[0].dtype == "float32"
    assert relative_error(actual, expected) < tolerance
    assert model.slow_paths == []  # casts in the epilogue keep the fast kernels
    dtypes = _relax_dtypes(model)
    assert dtypes["relax.nn.conv2d"] == {"float16" if accumulate == "fp16" else "float32"}
    assert dtypes["relax.matmul"] == {accumulate.replace("fp", "float"), "float32"}
    assert dtypes["relax.nn.max_pool2d"] == {"float16"}
    assert model.precision == {"mode": "fp16", "accumulate": accumulate,
                               "keep_fp32": ["softmax", "last_layer"], "emulate": True}


def test_fp16_full_leaves_only_the_edges_in_fp32(lenet):
    config = PrecisionConfig("fp16-full", emulate=True)
    model = mdl_tvm.compile(lenet, "host", input_shapes=[LENET_SHAPE], precision=config)
    dtypes = _relax_dtypes(model)
    assert dtypes.pop("relax.astype") == {"float16", "float32"}  # input in, logits out
    assert all(d == {"float16"} for d in dtypes.values()), dtypes


def test_arm64_fp16_library_has_fp16_vector_fma(lenet, tmp_path):
    """The +fullfp16 build computes with 8-lane fp16 vectors (`fmla vA.8h, ...`); the
    ARMv8.0 fp16-storage build has no fp16 arithmetic, only widening conversions."""
    fp16 = mdl_tvm.compile(lenet, "arm64-fp16", input_shapes=[LENET_SHAPE], precision="fp16")
    code = disassemble(fp16.export(str(tmp_path / "fp16.so")))
    assert len(_FMLA_HALF.findall(code)) >= 16
    assert re.search(r"\bfmla\s+v\d+\.8h", code)
    storage = mdl_tvm.compile(lenet, "arm64", input_shapes=[LENET_SHAPE],
                              precision="fp16-storage")
    code = disassemble(storage.export(str(tmp_path / "storage.so")))
    assert not _FP16_ARITH.search(code)
    assert re.search(r"\bfcvtl2?\s+v\d+\.4s", code)  # fp16 weights widened to fp32


@pytest.mark.phone
@pytest.mark.training
def test_fp16_on_phone_agrees_with_fp32(phone, tmp_path):
    """Trained LeNet-5 on 200 Fashion-MNIST test images, one batch, on the emulated phone:
    fp16 (arm64-fp16, fp16 accumulation) and fp16-storage (arm64) against fp32 (arm64).
    Stated tolerances: logits within 2 % (fp16) and 0.2 % (fp16-storage) of the largest
    fp32 logit; top-1 agreement at least 99.5 %."""
    from deploy.remote import RemoteDevice
    from mdl_tvm import data, train

    net = train.trained_model("lenet5", train.TrainConfig(epochs=1, limit=10000))
    x, _ = data.load_fashion_mnist("test", limit=200)
    shapes = [x.shape]
    builds = {
        "fp32": mdl_tvm.compile(net, "arm64", input_shapes=shapes),
        "fp16": mdl_tvm.compile(net, "arm64-fp16", input_shapes=shapes, precision="fp16"),
        "fp16-storage": mdl_tvm.compile(net, "arm64", input_shapes=shapes,
                                        precision="fp16-storage"),
    }
    logits = {}
    with RemoteDevice.connect(phone["tracker"], key=phone["key"], timeout=60) as device:
        for name, model in builds.items():
            so = model.export(str(tmp_path / f"{name}.so"))
            (logits[name],) = device.run(so, [x])
    ref = logits["fp32"]
    assert relative_error(logits["fp16"], ref) < 2e-2
    assert relative_error(logits["fp16-storage"], ref) < 2e-3
    for name in ("fp16", "fp16-storage"):
        agreement = float(np.mean(logits[name].argmax(1) == ref.argmax(1)))
        assert agreement >= 0.995, (name, agreement)


class _ConvInstanceNorm(torch.nn.Module):
    """conv -> instance norm written with means (as the style net has it) -> conv."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv1(x)
        d = y - y.mean((2, 3), keepdim=True)
        y = d / ((d * d).mean((2, 3), keepdim=True) + 1e-5).sqrt()
        return self.conv2(y.mean((1,), keepdim=True) + y)


def test_fp16_means_over_many_elements_sum_in_fp32(rng):
    """A mean over 256x256 = 65,536 elements divides by a count past the fp16 maximum
    (65,504): it runs in fp32 and the result is finite and close to fp32. The 4-channel
    mean (4 elements) stays fp16."""
    net, shape = _ConvInstanceNorm().eval(), (1, 3, 256, 256)
    x = rng.standard_normal(shape).astype("float32")
    ref = mdl_tvm.compile(net, "host", input_shapes=[shape])(x)
    config = PrecisionConfig(mode="fp16", emulate=True, keep_fp32=())
    model = mdl_tvm.compile(net, "host", input_shapes=[shape], precision=config)
    assert _relax_dtypes(model)["relax.mean"] == {"float16", "float32"}
    out = model(x)
    assert relative_error(out, ref) < 2e-2  # NaN or inf (a sum past 65504) fails too
    assert model.slow_paths == []


@pytest.mark.parametrize("size, kept", [(64, True), (160, False)])
def test_fp16_keeps_the_last_layer_fp32_only_when_logits_sized(rng, size, kept):
    """A last conv making 3 x 64 x 64 = 12,288 values stays fp32; one making an image of
    3 x 160 x 160 = 76,800 (> `LAST_LAYER_MAX_OUTPUTS`, like style transfer's RGB output)
    runs in fp16, and its output stays close to fp32."""
    from mdl_tvm.compiler.precision_ops import LAST_LAYER_MAX_OUTPUTS

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 3, 3, padding=1)).eval()
    shape = (1, 3, size, size)
    assert (3 * size * size <= LAST_LAYER_MAX_OUTPUTS) == kept
    x = rng.standard_normal(shape).astype("float32")
    model = mdl_tvm.compile(net, "host", input_shapes=[shape],
                            precision=PrecisionConfig(mode="fp16", emulate=True))
    expected = {"float16", "float32"} if kept else {"float16"}
    assert _relax_dtypes(model)["relax.nn.conv2d"] == expected
    ref = mdl_tvm.compile(net, "host", input_shapes=[shape])(x)
    assert relative_error(model(x), ref) < 1e-2


def test_lstm_step_gates_in_fp16_cell_state_in_fp32(rng):
    """The poem LSTM step returns (logits, h, c), h and c typed like its inputs: recurrent
    state. Its gate matmuls run in fp16; the head (last layer) and the cell-state update
    (it meets the fp32 state input) stay fp32; the step stays close to fp32."""
    from apps.poem.model import LSTMStep, load_model

    step = LSTMStep(load_model()[0]).eval()
    h, c = (0.5 * rng.standard_normal(a.shape).astype("float32") for a in step.zero_state())
    token = np.array([5], np.int64)
    example = tuple(torch.from_numpy(a) for a in (token, h, c))
    ref = mdl_tvm.compile(step, "host", example_inputs=example)(token, h, c)
    config = PrecisionConfig(mode="fp16", emulate=True)
    model = mdl_tvm.compile(step, "host", example_inputs=example, precision=config)
    from tvm import relax

    matmuls = [str(b.var.ty.dtype) for b in model.relax_module["main"].body.blocks[0].bindings
               if isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "")
               == "relax.matmul"]
    assert matmuls.count("float16") == 2 * step.layers and matmuls[-1] == "float32"
    assert "float32" in _relax_dtypes(model)["relax.add"]  # c' = f * c + i * g
    for out, expected in zip(model(token, h, c), ref, strict=True):
        assert out.dtype == np.float32
        assert relative_error(out, expected) < 1e-2
