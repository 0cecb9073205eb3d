"""The depthwise row kernel (`schedules.depthwise_kernel`): 3 x 3 stride 1 and 2, 5 x 5 and
7 x 7 stride 1, on odd maps (windows that leave the row at both ends, rows a few pixels
wider than a vector, overlapping last vectors and row groups), fp32 and fp16, host and
phone-like lanes, against the unscheduled function."""

import numpy as np
import pytest
from helpers import lower_and_run, neon_config, relax_module, rules_used
from tvm import relax

from mdl_tvm.core.targets import get_profile
from schedules.config import MachineConfig
from schedules.depthwise_kernel import choose_row_lanes, row_lanes

CONFIGS = {"host": MachineConfig.from_profile(get_profile("host")), "neon": neon_config()}


@pytest.mark.parametrize("hw, stride, dtype", [
    ((14, 14), 1, "float32"), ((7, 7), 1, "float32"), ((13, 9), 1, "float32"),  # 7/7/7-row groups
    ((5, 6), 1, "float32"), ((56, 11), 1, "float32"),  # 5-row group, 8-row groups
    ((14, 14), 2, "float32"), ((16, 18), 2, "float32"), ((16, 20), 1, "float16"),
    ((16, 18), 2, "float16"), ((9, 40), 2, "float32"),
    ((7, 7), 1, "float16"), ((14, 14), 2, "float16")])  # 7-pixel rows: 4-lane fp16 vectors
def test_depthwise_rows_kernel_matches_unscheduled(rng, hw, stride, dtype):
    """The row kernel (groups of `row_group` rows, the last overlapping) on odd maps, with
    bias + ReLU6 fused, against the unscheduled function on phone lanes."""
    channels = 6
    w = rng.standard_normal((channels, 1, 3, 3)).astype(dtype)
    bias = rng.standard_normal((1, channels, 1, 1)).astype(dtype)

    def body(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), strides=stride, padding=1,
                                       groups=channels, out_dtype=dtype))
        y = bb.emit(relax.op.add(y, relax.const(bias)))
        return relax.op.clip(y, 0.0, 6.0)

    x = rng.standard_normal((1, channels, *hw)).astype(dtype)
    mod = relax_module(x.shape, body, dtype)
    _, expected = lower_and_run(mod, [x], neon_config(), rules=())
    lowered, actual = lower_and_run(mod, [x], neon_config())
    assert "depthwise_rows" in rules_used(lowered).values()
    tol = 1e-5 if dtype == "float32" else 1e-2
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * np.abs(expected).max())


def _depthwise_silu(x, w, dtype):
    channels, k = w.shape[0], w.shape[2]

    def body(bb, v):
        y = bb.emit(relax.op.nn.conv2d(v, relax.const(w), padding=k // 2, groups=channels,
                                       out_dtype=dtype))
        return relax.op.nn.silu(y)

    return relax_module(x.shape, body, dtype)


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("kernel", [5, 7])
@pytest.mark.parametrize("hw", [(7, 7), (14, 14), (13, 9), (28, 19), (9, 30)])
def test_large_kernels_match_unscheduled(rng, config, dtype, kernel, hw):
    """5 x 5 and 7 x 7 (EfficientNet, MnasNet, ConvNeXt-style) with SiLU fused: the row
    kernel wherever the row is wider than a vector, the generic one elsewhere; the same
    numbers either way."""
    cfg = CONFIGS[config]
    x = rng.standard_normal((1, 5, *hw)).astype(dtype)
    w = (rng.standard_normal((5, 1, kernel, kernel)) / kernel).astype(dtype)
    mod = _depthwise_silu(x, w, dtype)
    _, expected = lower_and_run(mod, [x], cfg, rules=())
    lowered, actual = lower_and_run(mod, [x], cfg)
    rows = choose_row_lanes(cfg, dtype, hw, hw, (kernel, kernel), (1, 1), (kernel // 2,) * 4,
                            (1, 1))
    assert ("depthwise_rows" in rules_used(lowered).values()) == bool(rows)
    tol = 1e-5 if dtype == "float32" else 1e-2
    np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64),
                               rtol=tol, atol=tol * float(np.abs(expected).max()))


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("hw", [(14, 14), (28, 16), (9, 40), (8, 8)])
def test_5x5_stride_2_matches_unscheduled(rng, config, dtype, hw):
    """5 x 5 stride 2 (EfficientNet's and MnasNet's downsampling): taps from two
    de-interleaved pairs, the fifth shifted by a lane, zeros before the row and past its end
    (an even width: the last window's right column is outside)."""
    cfg = CONFIGS[config]
    x = rng.standard_normal((1, 5, *hw)).astype(dtype)
    w = (rng.standard_normal((5, 1, 5, 5)) / 5).astype(dtype)

    def body(bb, v):
        y = bb.emit(relax.op.nn.conv2d(v, relax.const(w), strides=2, padding=2, groups=5,
                                       out_dtype=dtype))
        return relax.op.nn.silu(y)

    mod = relax_module(x.shape, body, dtype)
    _, expected = lower_and_run(mod, [x], cfg, rules=())
    lowered, actual = lower_and_run(mod, [x], cfg)
    out = ((hw[0] - 1) // 2 + 1, (hw[1] - 1) // 2 + 1)
    rows = choose_row_lanes(cfg, dtype, hw, out, (5, 5), (2, 2), (2,) * 4, (1, 1))
    assert ("depthwise_rows" in rules_used(lowered).values()) == bool(rows)
    tol = 1e-5 if dtype == "float32" else 1e-2
    np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64),
                               rtol=tol, atol=tol * float(np.abs(expected).max()))


def test_row_kernel_geometries():
    assert row_lanes((14, 14), (14, 14), (5, 5), (1, 1), (2,) * 4, (1, 1), 4) == 4
    assert row_lanes((14, 14), (14, 14), (7, 7), (1, 1), (3,) * 4, (1, 1), 4) == 4
    assert row_lanes((14, 14), (7, 7), (5, 5), (2, 2), (2,) * 4, (1, 1), 4) == 4  # stride 2
    assert not row_lanes((13, 13), (7, 7), (5, 5), (2, 2), (2,) * 4, (1, 1), 4)  # odd width
    assert not row_lanes((14, 14), (7, 7), (7, 7), (2, 2), (3,) * 4, (1, 1), 4)  # 7x7 stride 2
    assert not row_lanes((14, 14), (12, 12), (5, 5), (1, 1), (1,) * 4, (1, 1), 4)  # padding 1


@pytest.mark.parametrize(("bits", "hw", "out", "kernel", "stride", "expected"), [
    (512, (14, 14), (14, 14), 3, 1, 0),   # 8 lanes compute 16 pixels, as padded 16 lanes do
    (512, (7, 7), (7, 7), 3, 1, 4),       # 4 lanes: 8 pixels instead of 16
    (512, (14, 14), (14, 14), 5, 1, 8),   # 5 x 5: measured faster at 8 lanes
    (512, (14, 14), (7, 7), 3, 2, 4),     # stride 2: the row kernel's de-interleaving loads
    (512, (56, 56), (56, 56), 3, 1, 16),  # wide rows keep the full width
    (256, (14, 14), (14, 14), 5, 1, 8),   # AVX2: its own 8 lanes only
    (256, (7, 7), (7, 7), 5, 1, 0),
])
def test_x86_row_width_by_geometry(bits, hw, out, kernel, stride, expected):
    cfg = MachineConfig(vector_bits=bits, num_regs=32 if bits == 512 else 16, num_cores=2)
    assert choose_row_lanes(cfg, "float32", hw, out, (kernel, kernel), (stride, stride),
                            (kernel // 2,) * 4, (1, 1)) == expected
