"""`pool_before_pointwise`: an average pool after a 1x1 convolution moved in front of it
(exact up to rounding, a quarter of the MACs for a 2x2 pool); the cases it must leave
alone are left (before / after on small Relax graphs, and DenseNet's transition built)."""

import numpy as np
import pytest
import torch
from torch import nn
from tvm import relax

import mdl_tvm
from mdl_tvm.compiler.pool_before_pointwise import pool_before_pointwise
from mdl_tvm.core.numerics import relative_error
from mdl_tvm.core.relax_utils import op_name
from relay_passes.activations import default_runner

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((4, 6, 1, 1)).astype("float32")
W3 = RNG.standard_normal((4, 6, 3, 3)).astype("float32")
B = RNG.standard_normal((1, 4, 1, 1)).astype("float32")


def _graph(weight=W1, bias=B, bias_first=False, pool=None, relu=False, extra_use=False):
    """conv2d(x, weight) [+ bias] [relu] → avg_pool2d(**pool)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 6, 9, 10), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            v = conv = bb.emit(relax.op.nn.conv2d(x, relax.const(weight)))
            if bias is not None:
                c = relax.const(bias)
                v = bb.emit(relax.op.add(c, v) if bias_first else relax.op.add(v, c))
            if relu:
                v = bb.emit(relax.op.nn.relu(v))
            v = bb.emit(relax.op.nn.avg_pool2d(v, **(pool or {"pool_size": 2, "strides": 2})))
            out = bb.emit_output(relax.Tuple([v, conv]) if extra_use else v)
        bb.emit_func_output(out)
    return bb.get()


def _ops(mod):
    """The main function's ops, in binding order."""
    return [op_name(b.value) for block in mod["main"].body.blocks for b in block.bindings
            if op_name(b.value)]


def _same(a, b):
    x = RNG.standard_normal((1, 6, 9, 10)).astype("float32")
    ra, rb = default_runner(a)(x), default_runner(b)(x)
    return max(relative_error(p, q) for p, q in zip(ra, rb, strict=True))


@pytest.mark.parametrize("kwargs", [{}, {"bias": None}, {"bias_first": True},
                                    {"pool": {"pool_size": 3, "strides": 3}}])
def test_pool_moves_before_the_pointwise_conv(kwargs):
    mod = _graph(**kwargs)
    moved = pool_before_pointwise(mod)
    assert _ops(moved)[0] == "relax.nn.avg_pool2d"
    assert _ops(moved)[1] == "relax.nn.conv2d"
    assert len(_ops(moved)) == len(_ops(mod))
    assert _same(moved, mod) < 1e-6  # odd sizes too: the floor-mode pool drops the same


@pytest.mark.parametrize("kwargs", [
    {"weight": W3},  # 3x3: not per pixel
    {"relu": True},  # a nonlinearity in between
    {"extra_use": True},  # the conv's output is needed unpooled
    {"pool": {"pool_size": 2, "strides": 2, "padding": 1}},  # padded zeros miss the bias
    {"pool": {"pool_size": 2, "strides": 2, "ceil_mode": True}},
    {"bias": RNG.standard_normal((1, 4, 9, 10)).astype("float32")},  # varies per pixel
])
def test_what_does_not_commute_is_left_alone(kwargs):
    mod = _graph(**kwargs)
    assert pool_before_pointwise(mod) is mod


def test_densenet_transition_builds_with_a_quarter_of_its_conv_macs():
    torch.manual_seed(0)
    net = nn.Sequential(nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1, bias=False),
                        nn.AvgPool2d(2, 2)).eval()
    with torch.no_grad():
        net[0].running_mean.uniform_(-1, 1)
        net[0].running_var.uniform_(0.5, 2)
    x = torch.randn(1, 8, 12, 12)
    compiled = mdl_tvm.compile(net, "host", input_shapes=[(1, 8, 12, 12)])
    assert compiled.stats.macs == 4 * 8 * 6 * 6  # the conv runs on the 6x6 pooled map
    assert relative_error(compiled(x.numpy())[0], net(x).detach().numpy()) < 1e-5
