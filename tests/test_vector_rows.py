"""Vector code where rules left scalar loops: row epilogues the lanes do not divide (cut
into whole vectors and halving tails, `schedules.common.vector_parts` / `vectorize_row`)
and reductions over contiguous planes (global average pools as lanes of partial sums)."""

import re

import numpy as np
import pytest
from helpers import lower_and_run, neon_config, relax_module, rules_used
from tvm import relax

import schedules.common


@pytest.mark.parametrize("width, lanes, parts", [
    (14, 8, [8, 4, 2]), (7, 4, [4, 2, 1]), (28, 16, [16, 8, 4]), (56, 16, [48, 8]),
    (16, 4, [16]), (3, 4, [2, 1]), (1, 4, [1])])
def test_vector_parts_cover_the_row_with_whole_vectors_then_halving_tails(width, lanes, parts):
    assert schedules.common.vector_parts(width, lanes) == parts


@pytest.mark.parametrize("hw, kernel, stride, dtype", [
    ((13, 13), 5, 2, "float16"), ((13, 13), 5, 2, "float32"), ((11, 11), 5, 2, "float32")])
def test_depthwise_silu_epilogue_is_vector_code_on_rows_the_lanes_do_not_divide(
        rng, hw, kernel, stride, dtype):
    """A 5 x 5 stride-2 depthwise conv on an odd width (the generic rule) + SiLU on 7- and
    6-pixel rows: the epilogue row is cut into whole vectors and halving tails
    (`vector_parts`), each vectorised, instead of one scalar exp per pixel; numerics as
    unscheduled."""
    channels = 4
    w = (rng.standard_normal((channels, 1, kernel, kernel)) / kernel).astype(dtype)

    def body(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), strides=stride,
                                       padding=kernel // 2, groups=channels, out_dtype=dtype))
        return relax.op.nn.silu(y)

    x = rng.standard_normal((1, channels, *hw)).astype(dtype)
    mod = relax_module(x.shape, body, dtype)
    _, expected = lower_and_run(mod, [x], neon_config(), rules=())
    lowered, actual = lower_and_run(mod, [x], neon_config())
    names = [name for name, rule in rules_used(lowered).items() if rule == "depthwise"]
    assert names
    tol = 1e-5 if dtype == "float32" else 1e-2
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * np.abs(expected).max())
    lanes = neon_config().lanes(dtype)
    width = -(-hw[1] // stride)
    script = lowered[names[0]].script().replace("T.int64", "")
    vectors = [int(b) - int(a) if b else int(a) for a, b in
               re.findall(r"T\.vectorized\(\((\d+)\)(?:, \((\d+)\))?\)", script)]
    # the tails are vector loops of their own (the taps' loop is a whole vector)
    tails = [p for p in schedules.common.vector_parts(width, lanes) if 1 < p < lanes]
    assert sorted(n for n in vectors if n < lanes) == sorted(tails)


@pytest.mark.parametrize("shape, dtype, partial", [
    ((1, 24, 28, 28), "float32", True), ((2, 16, 14, 14), "float16", True),
    ((1, 16, 7, 7), "float32", False)])  # 49 pixels: no whole vectors, the plain loop
def test_global_average_pool_sums_its_plane_in_vector_lanes(rng, shape, dtype, partial):
    """A squeeze-excite's global pool (mean over an NCHW plane) accumulates ``lanes``
    partial sums with vector adds (``rfactor``), then adds the lanes; as unscheduled."""
    x = rng.standard_normal(shape).astype(dtype)
    mod = relax_module(x.shape, lambda bb, v: relax.op.mean(v, axis=[2, 3], keepdims=True),
                       dtype)
    _, expected = lower_and_run(mod, [x], neon_config(), rules=())
    lowered, actual = lower_and_run(mod, [x], neon_config())
    names = [name for name, rule in rules_used(lowered).items() if rule == "reduction"]
    assert names
    tol = 1e-6 if dtype == "float32" else 2e-3
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol)
    script = lowered[names[0]].script()
    assert ("_rf" in script and "T.vectorized" in script) == partial


@pytest.mark.parametrize("axis, dtype", [(1, "float32"), (1, "float16"), (3, "float32")])
def test_channel_concat_copies_whole_planes_in_vectors(rng, axis, dtype):
    """A concat of three tensors along channels (SqueezeNet's fire module, 7 x 7 planes:
    49 pixels, no multiple of the lanes) copies each plane as one vectorised run and its
    tail (channels outside, parallel when big enough), in one channel loop per input (no
    per-pixel select between inputs); along the width it keeps the plain schedule.
    Numerics as unscheduled either way."""
    shapes = [(1, 3, 7, 7), (1, 5, 7, 7), (1, 2, 7, 7)] if axis == 1 else [
        (1, 4, 7, 3), (1, 4, 7, 5)]

    def body(bb, x):
        parts = [bb.emit(relax.op.nn.relu(relax.op.strided_slice(
            x, [axis], [0], [s[axis]]))) if i else bb.emit(relax.op.negative(
                relax.op.strided_slice(x, [axis], [0], [s[axis]]))) for i, s in
            enumerate(shapes)]
        return relax.op.concat(parts, axis=axis)

    x = rng.standard_normal((1, 5, 7, 7)).astype(dtype)
    mod = relax_module(x.shape, body, dtype)
    _, expected = lower_and_run(mod, [x], neon_config(), rules=())
    lowered, actual = lower_and_run(mod, [x], neon_config())
    (concat,) = [f for gv, f in lowered.functions_items() if "concat" in gv.name_hint]
    planes = "ax2_ax3_fused" in concat.script() and "T.vectorized" in concat.script()
    assert planes == (axis == 1), concat.script()
    ranges = set(re.findall(r"for ax1\d* in (?:range|T.parallel)\(T.int64\((\d+)\), "
                            r"T.int64\((\d+)\)\)", concat.script()))
    assert ranges == ({("3", "8"), ("8", "10")} if axis == 1 else set()), ranges
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_squeeze_excite_gate_is_computed_per_channel_and_scales_planes_in_vectors(rng, dtype):
    """The gate conv (1 x 1 map) + sigmoid fused with the multiply that broadcasts it over
    the feature map: the sigmoid stays a block of its own (once per channel, not inlined
    into the per-pixel multiply), and the multiply scales each 7 x 7 plane as vectors."""
    channels, squeeze = 8, 2
    w1 = rng.standard_normal((squeeze, channels, 1, 1)).astype(dtype)
    w2 = rng.standard_normal((channels, squeeze, 1, 1)).astype(dtype)

    def body(bb, x):
        m = bb.emit(relax.op.mean(x, axis=[2, 3], keepdims=True))
        a = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(m, relax.const(w1), out_dtype=dtype)))
        g = bb.emit(relax.op.sigmoid(relax.op.nn.conv2d(a, relax.const(w2), out_dtype=dtype)))
        return relax.op.multiply(x, g)

    x = rng.standard_normal((1, channels, 7, 7)).astype(dtype)
    mod = relax_module(x.shape, body, dtype)
    _, expected = lower_and_run(mod, [x], neon_config(), rules=())
    lowered, actual = lower_and_run(mod, [x], neon_config())
    (gate,) = [f for gv, f in lowered.functions_items() if "multiply" in gv.name_hint]
    script = gate.script()
    assert 'sblock("sigmoid")' in script  # its own block, over the 8 gate values
    assert re.search(r'T\.vectorized\([^\n]*\n\s*with T\.sblock\("T_multiply_ax2_ax3', script), (
        script)  # the multiply: whole planes, vectorised
    tol = 1e-5 if dtype == "float32" else 1e-2
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * np.abs(expected).max())


@pytest.mark.parametrize("hw, dtype", [((7, 7), "float32"), ((14, 14), "float16"),
                                       ((5, 3), "float32")])
def test_per_channel_scale_shift_relu_runs_whole_planes_in_vectors(rng, hw, dtype):
    """A batch norm + ReLU on its own (DenseNet's pre-activation, after a concat) on rows
    the lanes do not divide: each ``h x w`` plane is one vectorised run (the per-channel
    constants read once per plane), not a scalar loop per row; a transposing element-wise
    op (reads ``x[.., w, h]``) keeps the plain schedule. Numerics as unscheduled."""
    channels = 6
    x = rng.standard_normal((1, channels, *hw)).astype(dtype)
    mean, scale = (rng.standard_normal((1, channels, 1, 1)).astype(dtype) for _ in range(2))

    def body(bb, v):
        shifted = bb.emit((v - relax.const(mean)) / relax.const(np.abs(scale) + 1))
        return relax.op.nn.relu(shifted + relax.const(mean))

    mod = relax_module(x.shape, body, dtype)
    _, expected = lower_and_run(mod, [x], neon_config(), rules=())
    lowered, actual = lower_and_run(mod, [x], neon_config())
    (func,) = [f for gv, f in lowered.functions_items() if "relu" in gv.name_hint]
    script = func.script()
    assert "i2_i3_fused" in script and "T.vectorized" in script, script
    tol = 1e-3 if dtype == "float16" else 1e-6
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol)

    square = rng.standard_normal((1, channels, 5, 5)).astype(dtype)
    mod = relax_module(square.shape, lambda bb, v: relax.op.nn.relu(
        relax.op.permute_dims(v, [0, 1, 3, 2]) + relax.const(mean)), dtype)
    lowered, actual = lower_and_run(mod, [square], neon_config())
    (func,) = [f for gv, f in lowered.functions_items() if "relu" in gv.name_hint]
    assert "i2_i3_fused" not in func.script(), func.script()
    expected = np.maximum(square.transpose(0, 1, 3, 2) + mean, 0)
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)
