"""`fold_scale_shift`: a per-channel affine chain after a conv folded into its weights and
one bias; chains it must leave alone are left (before / after on small Relax graphs)."""

import numpy as np
import pytest
import torch
from helpers import seeded
from torch import nn
from tvm import relax

import mdl_tvm
from mdl_tvm.compiler.fold_scale_shift import channel_vector, compose, fold_scale_shift
from mdl_tvm.core.graph_stats import graph_stats
from mdl_tvm.core.numerics import relative_error
from relay_passes.activations import default_runner

RNG = np.random.default_rng(0)
W = RNG.standard_normal((4, 3, 3, 3)).astype("float32")


def _graph(steps, extra_use=False):
    """conv2d(x, W) followed by ``(op, constant, constant_first)`` steps."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, 6, 6), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            v = conv = bb.emit(relax.op.nn.conv2d(x, relax.const(W)))
            for op, c, first in steps:
                c = relax.const(np.asarray(c, "float32"))
                v = bb.emit(op(c, v) if first else op(v, c))
            out = bb.emit_output(relax.op.add(v, conv) if extra_use else v)
        bb.emit_func_output(out)
    return bb.get()


def _ops(mod):
    return graph_stats(mod).op_counts


def _run(mod, x):
    return default_runner(mod)(x)[0]


def test_bn_after_a_biased_conv_becomes_one_bias():
    c = lambda: RNG.uniform(0.5, 2, (1, 4, 1, 1))  # noqa: E731
    mod = _graph([(relax.op.add, c(), False), (relax.op.subtract, c(), False),
                  (relax.op.divide, c(), False), (relax.op.multiply, c(), True),
                  (relax.op.add, c(), False)])
    folded = fold_scale_shift(mod)
    assert _ops(folded) == {"nn.conv2d": 1, "add": 1}
    x = RNG.standard_normal((1, 3, 6, 6)).astype("float32")
    assert relative_error(_run(folded, x), _run(mod, x)) < 1e-6


def test_scale_alone_leaves_no_add_and_constant_minus_conv_folds():
    mod = _graph([(relax.op.multiply, RNG.uniform(1, 2, (4, 1, 1)), False)])
    assert _ops(fold_scale_shift(mod)) == {"nn.conv2d": 1}
    mod = _graph([(relax.op.subtract, RNG.uniform(1, 2, (1, 4, 1, 1)), True),
                  (relax.op.multiply, 2.0, False)])
    x = RNG.standard_normal((1, 3, 6, 6)).astype("float32")
    folded = fold_scale_shift(mod)
    assert _ops(folded) == {"nn.conv2d": 1, "add": 1}
    assert relative_error(_run(folded, x), _run(mod, x)) < 1e-6


@pytest.mark.parametrize("steps, extra_use", [
    ([(relax.op.add, RNG.uniform(size=(1, 4, 1, 1)), False)], False),  # already the bias
    ([(relax.op.multiply, RNG.uniform(size=(1, 4, 4, 4)), False)], False),  # per pixel
    ([(relax.op.divide, RNG.uniform(1, 2, (1, 4, 1, 1)), True)], False),  # c / conv
    ([(relax.op.multiply, RNG.uniform(size=(1, 4, 1, 1)), False)], True),  # conv used twice
])
def test_what_is_not_an_exclusive_per_channel_affine_chain_is_left(steps, extra_use):
    mod = _graph(steps, extra_use)
    assert fold_scale_shift(mod).same_as(mod)


def test_compose_and_channel_vector():
    v, a, b = RNG.standard_normal(5), RNG.uniform(1, 2, 5), RNG.uniform(1, 2, 5)
    steps = [("relax.subtract", a, True), ("relax.divide", b, False), ("relax.add", a, False)]
    s, t = compose(steps, 5)
    assert np.allclose(s * v + t, (a - v) / b + a)
    with pytest.raises(ValueError, match="not affine"):
        compose([("relax.divide", a, True)], 5)
    assert channel_vector(np.ones((1, 5, 1, 1)), 5).shape == (5,)
    assert channel_vector(np.float32(2), 5).tolist() == [2.0] * 5
    assert channel_vector(np.ones((1, 5, 2, 1)), 5) is None
    assert channel_vector(np.ones(5), 5) is None  # broadcasts over the width, not channels


class BiasedConvBn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6)
        self.bn.running_mean.uniform_(-1, 1)
        self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def test_compile_folds_a_bn_after_a_biased_conv():
    model = seeded(BiasedConvBn).eval()
    compiled = mdl_tvm.compile(model, "host", input_shapes=[(1, 3, 8, 8)])
    assert not {"divide", "subtract", "multiply"} & set(compiled.stats.op_counts)
    assert compiled.stats.num_weights == 2  # the weight and one bias: the BN shift joined it
    x = RNG.standard_normal((1, 3, 8, 8)).astype("float32")
    assert relative_error(compiled.run(x)[0], model(torch.from_numpy(x)).detach().numpy()) < 1e-5
