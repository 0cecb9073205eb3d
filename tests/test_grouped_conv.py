"""Grouped convolutions (RegNet / ResNeXt) as one kernel for every group (the GEMM one, or
the packed direct one where no GEMM tile divides a group's outputs): against the
unscheduled TIR on odd geometries, fp32 and fp16, host and phone-like lanes; the per-group
split where a group's outputs do not fill whole register blocks."""

from dataclasses import replace

import numpy as np
import pytest
from helpers import lower_and_run, neon_config, relax_module, rules_used
from tvm import relax

import schedules.legalize as legalize
from mdl_tvm.core.targets import get_profile
from schedules import algo
from schedules.algo import ConvAlgo
from schedules.config import ConvGeometry, MachineConfig

CONFIGS = {"host": MachineConfig.from_profile(get_profile("host")), "neon": neon_config()}


def _grouped(shape, weight, groups, stride, padding, dtype):
    def body(bb, x):
        return relax.op.nn.conv2d(x, relax.const(weight.astype(dtype)), strides=stride,
                                  padding=padding, groups=groups, out_dtype=dtype)
    return relax_module(shape, body, dtype)


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize(("channels", "out", "groups", "size", "kernel", "stride", "padding"), [
    (48, 48, 3, 9, 3, 1, 1),   # RegNet-style: 16 per group, a 9-pixel row
    (32, 64, 2, 7, 3, 2, 1),   # stride 2, more outputs than inputs per group
    (24, 32, 2, 1, 3, 1, 1),   # a 1-pixel map: all padding but the centre
    (30, 48, 3, 5, 1, 1, 0),   # grouped 1x1, 10 inputs per group (not a vector multiple)
])
def test_grouped_kernel_matches_the_unscheduled_conv(rng, config, dtype, channels, out, groups,
                                                     size, kernel, stride, padding):
    """One kernel for all groups: the GEMM one (its tiles reduce over their group's rows)
    wherever a register tile divides a group's outputs and the map holds a vector, else the
    packed direct one."""
    cfg = CONFIGS[config]
    gemm = "conv2d" if size == 1 else "gemm_conv"  # direct: a map narrower than a vector
    x = rng.standard_normal((1, channels, size, size)).astype(dtype)
    w = (rng.standard_normal((out, channels // groups, kernel, kernel))
         / np.sqrt(channels // groups * kernel * kernel))
    mod = _grouped(x.shape, w, groups, stride, padding, dtype)
    _, expected = lower_and_run(mod, [x], cfg, rules=())
    lowered, actual = lower_and_run(mod, [x], cfg)
    rules = rules_used(lowered)
    assert [r for n, r in rules.items() if "grouped" in n] == [gemm], rules
    assert not [n for n in rules if "group_slice" in n]  # one kernel, no per-group copies
    tol = 2e-3 if dtype == "float16" else 1e-5
    scale = float(np.abs(expected.astype(np.float64)).max())
    np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64),
                               rtol=tol, atol=tol * scale)


def test_groups_narrower_than_a_register_block_run_as_split_convs(rng, monkeypatch):
    """2 outputs per group do not fill a block of 8 output channels (the tile forced here):
    each group is its own ordinary conv over a channel slice, and the result is the same."""
    original = legalize.choose_conv_tile
    monkeypatch.setattr(legalize, "choose_conv_algo", lambda *a, **k: ConvAlgo("direct"))
    monkeypatch.setattr(legalize, "choose_conv_tile", lambda *a: replace(original(*a),
                                                                         oc_block=8))
    x = rng.standard_normal((1, 8, 6, 6)).astype("float32")
    w = rng.standard_normal((8, 2, 3, 3))
    mod = _grouped(x.shape, w, 4, 1, 1, "float32")
    _, expected = lower_and_run(mod, [x], CONFIGS["host"], rules=())
    lowered, actual = lower_and_run(mod, [x], CONFIGS["host"])
    names = list(rules_used(lowered))
    assert any("group_slice" in n for n in names) and not any("grouped" in n for n in names)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_nhwc_convs_after_a_grouped_one_fall_back_to_generic_rules(rng):
    """An NHWC conv has no packed rule and is scheduled by a generic one; the grouped conv
    before it (2 outputs per group: one kernel or per-group convs, as the tile decides) and
    it compute what the unscheduled TIR does."""
    w_grouped = rng.standard_normal((8, 2, 3, 3)).astype("float32")
    w_nhwc = rng.standard_normal((3, 3, 8, 4)).astype("float32")

    def body(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, relax.const(w_grouped), padding=1, groups=4))
        y = bb.emit(relax.op.permute_dims(y, [0, 2, 3, 1]))
        return relax.op.nn.conv2d(y, relax.const(w_nhwc), data_layout="NHWC",
                                  kernel_layout="HWIO")

    x = rng.standard_normal((1, 8, 10, 10)).astype("float32")
    mod = relax_module(x.shape, body)
    _, expected = lower_and_run(mod, [x], CONFIGS["host"], rules=())
    lowered, actual = lower_and_run(mod, [x], CONFIGS["host"])
    used = rules_used(lowered)
    assert used["conv2d"] not in (None, "conv2d") and all(used.values()), used
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("config", list(CONFIGS))
def test_grouped_gemm_segments_copy_one_group_at_a_time(rng, config, monkeypatch):
    """Forced 4-row segments (the last shifted) of a stride-2 and a stride-1 grouped conv:
    each (segment, group) task copies its own group's rows and computes what the
    unscheduled TIR does."""
    monkeypatch.setattr(legalize, "choose_conv_algo", lambda *a, **k: ConvAlgo(
        "gemm", 0, 8, 1, 4))
    for stride, size in ((1, 9), (2, 17)):
        x = rng.standard_normal((1, 24, size, size)).astype("float32")
        w = rng.standard_normal((48, 8, 3, 3)) / 8  # 3 groups of 8 inputs, 16 outputs
        mod = _grouped(x.shape, w, 3, stride, 1, "float32")
        _, expected = lower_and_run(mod, [x], CONFIGS[config], rules=())
        lowered, actual = lower_and_run(mod, [x], CONFIGS[config])
        assert "gemm_conv" in rules_used(lowered).values()
        np.testing.assert_allclose(actual, expected, rtol=1e-5,
                                   atol=1e-5 * np.abs(expected).max())


def test_grouped_gemm_cost_keeps_tiles_inside_a_group():
    """The cost model's tile divides a group's outputs and its tasks are the groups (no
    output-channel split); where no tile divides them the GEMM is not a candidate."""
    geo = ConvGeometry(384, 7, 7, 384, 7, (3, 3), (1, 1), (1, 1), 1, 1, 24)
    for cfg in CONFIGS.values():
        chosen = algo.gemm_cost(cfg, "float32", geo, 7)
        assert 16 % chosen.k_block == 0 and chosen.k_groups == 1, chosen
    six = ConvGeometry(36, 6, 6, 12, 6, (3, 3), (1, 1), (1, 1), 1, 1, 2)
    assert algo.gemm_cost(CONFIGS["neon"], "float32", six, 6).cost == float("inf")
