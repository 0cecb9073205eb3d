"""The hand-scheduled max pool (`schedules.pool`): against the unscheduled TIR on the rows
CNNs have (ceil mode, padding, stride 1 and 2, rows narrower than a vector, a 1-pixel
map), fp32 and fp16, host and phone-like lanes; the vector width chosen per row."""

import numpy as np
import pytest
from helpers import lower_and_run, neon_config, relax_module, rules_used
from tvm import relax

from mdl_tvm.core.targets import get_profile
from schedules.config import MachineConfig
from schedules.pool import pool_lanes, vector_range

CONFIGS = {"host": MachineConfig.from_profile(get_profile("host")), "neon": neon_config()}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize(("size", "kernel", "stride", "padding", "ceil"), [
    (55, 3, 2, 0, True),    # SqueezeNet: 55 -> 27, every column of the row used
    (27, 3, 2, 0, True),    # 27 -> 13: narrower than 16 lanes
    (24, 3, 2, 0, True),    # ceil mode reads past the image: the last output is clamped
    (21, 3, 2, 1, False),   # ResNet-style, padded both sides
    (13, 3, 1, 1, False),   # stride 1
    (28, 2, 2, 0, False),   # LeNet / VGG
    (1, 3, 2, 1, False),    # a 1-pixel map: all padding but the centre
])
def test_max_pool_matches_the_unscheduled_pool(rng, config, dtype, size, kernel, stride,
                                               padding, ceil):
    x = rng.standard_normal((1, 3, size, size + 2)).astype(dtype)  # the row is the odd one

    def body(bb, v):
        return relax.op.nn.max_pool2d(v, pool_size=kernel, strides=stride, padding=padding,
                                      ceil_mode=ceil)

    mod = relax_module(x.shape, body, dtype)
    _, expected = lower_and_run(mod, [x], CONFIGS[config], rules=())
    lowered, actual = lower_and_run(mod, [x], CONFIGS[config])
    assert list(rules_used(lowered).values()) == ["max_pool"]
    np.testing.assert_array_equal(actual, expected)  # a maximum is exact


@pytest.mark.parametrize(("in_w", "out_w", "lanes", "expected"), [
    (27, 13, 16, 8),   # 16 lanes: no vector fits 13 outputs; 8: two (one overlapping)
    (55, 27, 16, 16),  # one vector and one overlapping it to the row's end, no scalar
    (111, 55, 16, 16),  # wide rows keep the full width
    (55, 27, 4, 4),    # NEON fp32: never narrower than 4 lanes
])
def test_pool_lanes_leaves_few_scalar_outputs(in_w, out_w, lanes, expected):
    width = pool_lanes(in_w, out_w, (3, 3), 2, 0, lanes)
    assert width == expected
    first, count, last = vector_range(in_w, out_w, 3, 2, 0, width)
    end = last + width if last is not None else first + count * width
    assert out_w - end <= 1  # at most the output whose window passes the last column


def test_vectors_never_read_past_the_row():
    """Every vector's loads end inside the image, the last one exactly at its last column."""
    for in_w in range(3, 70):
        for lanes in (4, 8, 16):
            out_w = (in_w - 3) // 2 + 1
            first, count, last = vector_range(in_w, out_w, 3, 2, 0, lanes)
            starts = [first + v * lanes for v in range(count)] + ([last] if last else [])
            for x0 in starts:
                assert x0 + lanes <= out_w and x0 * 2 + (lanes - 1) * 2 + 3 <= in_w
            if last is not None:
                assert last + lanes == out_w and (count == 0 or last < first + count * lanes)
