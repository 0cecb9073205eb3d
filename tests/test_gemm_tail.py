"""The GEMM convolution's last pixel block: fewer or half-width vectors instead of a full
block shifted back over pixels already computed (`schedules.gemm_kernel.tail_tile`)."""

import re

import numpy as np
import pytest
from helpers import check_rule_numerics, neon_config, relax_module
from tvm import relax

from schedules import algo, legalize
from schedules.gemm_kernel import tail_tile


@pytest.mark.parametrize("seg, nv, lanes, expected", [
    (49, 1, 8, (1, 4)),  # ResNet-18's 7x7 stride-2 conv in fp16: .4h for the last pixel
    (49, 1, 4, (1, 2)),  # fp32: .2s
    (100, 3, 4, (1, 4)),  # 4 pixels left of a 12-pixel block: one vector
    (28, 3, 4, (1, 4)),
    (30, 3, 4, (2, 4)),  # 6 left: two vectors, not three
    (48, 3, 4, None),  # no pixels left
    (7, 1, 4, None),  # the segment is shorter than a block: the shifted block is it
    (49, 2, 16, None),  # 17 left of 32: two 16-lane vectors, as many as a full block
])
def test_tail_tile_computes_fewer_pixels_than_a_full_block(seg, nv, lanes, expected):
    assert tail_tile(seg, nv, lanes) == expected


@pytest.mark.parametrize("in_c, out_c, kernel, stride, hw, dtype, tile, residual", [
    (24, 32, 1, 1, (7, 7), "float16", (16, 1, 7), False),  # 1 x 1, 49 = 6 x 8 + .4h
    (12, 20, 3, 2, (14, 13), "float32", (8, 1, 7), False),  # im2col, 49 = 12 x 4 + .2s
    (8, 12, 3, 1, (10, 10), "float32", (4, 3, 10), True),  # 100 = 8 x 12 + 4, residual
    (16, 16, 3, 1, (14, 14), "float16", (8, 2, 14), True),  # 196 = 12 x 16 + 4
    (6, 10, 3, 1, (5, 6), "float32", (4, 3, 5), False),  # 30 = 2 x 12 + 6: two vectors
    # stride 1, rows narrower than a vector: each tap's rows copied as one run
    (8, 8, 3, 1, (7, 7), "float16", (8, 1, 3), False),  # 3-row segments, the last shifted
    (6, 8, 5, 1, (6, 6), "float32", (4, 2, 6), True),  # 5x5: runs shifted by up to 2
    # stride 1, rows of 23: each tap's row tail is its last vector shifted back
    (3, 8, 5, 1, (9, 23), "float32", (4, 3, 9), False),
])
def test_gemm_conv_with_a_tail_block_matches_unscheduled(monkeypatch, rng, in_c, out_c, kernel,
                                                        stride, hw, dtype, tile, residual):
    kb, nv, rows = tile
    monkeypatch.setattr(legalize, "choose_conv_algo", lambda *a, **k: algo.ConvAlgo(
        "gemm", 0, kb, nv, rows))
    neon = neon_config()
    pad = kernel // 2
    w = (rng.standard_normal((out_c, in_c, kernel, kernel)) / kernel).astype(dtype)
    bias = rng.standard_normal((1, out_c, 1, 1)).astype(dtype)

    def body(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), strides=stride, padding=pad,
                                       out_dtype=dtype))
        y = bb.emit(relax.op.add(y, relax.const(bias)))
        if residual:
            y = bb.emit(relax.op.add(y, x if in_c == out_c else y))
        return relax.op.nn.relu(y)

    x = rng.standard_normal((1, in_c, *hw)).astype(dtype)
    check_rule_numerics(relax_module(x.shape, body, dtype), x, neon, "gemm_conv", dtype)


@pytest.mark.parametrize("hw, dtype, in_place", [
    (16, "float16", True),  # 256 pixels: whole 8-lane vectors
    (14, "float16", False),  # 196: `ldr q` offsets would not be multiples of 16 bytes
    (14, "float32", True),  # 196 = 49 fp32 vectors
    (7, "float32", False),
])
def test_1x1_conv_reads_in_place_only_planes_of_whole_vectors(hw, dtype, in_place):
    """On AArch64 a 1 x 1 conv reads its input in place only where each plane is a whole
    number of vectors; otherwise it copies the rows to a vector-aligned stride (MobileNetV2
    fp16 on the phone: 53.7 -> 53.1 M instructions, each load no longer needing an address
    computation)."""
    import schedules
    from mdl_tvm.core.targets import get_profile

    w = np.ones((32, 24, 1, 1), dtype)
    mod = relax_module((1, 24, hw, hw), lambda bb, x: relax.op.nn.conv2d(
        x, relax.const(w), out_dtype=dtype), dtype)
    with get_profile("host").tvm_target():
        lowered = schedules.lowering_pipeline(neon_config())(mod)
    text = next(f.script() for gv, f in lowered.functions.items() if "gemm" in gv.name_hint)
    sizes = [int(n) for n in re.findall(r"alloc_buffer\(\((\d+),\)", text)]
    assert (max(sizes) < 24 * hw * hw) is in_place  # the copy holds every input row


def test_im2col_row_tails_are_shifted_vectors_not_scalar_loops():
    """Stride 1, rows wider than a vector: the pixels after a tap's whole vectors are copied
    as the row's last vector shifted back (overlapping the one before), not by a scalar loop
    per tap. The style network's 9 x 9 convs have 243 taps: their builds took 12.1 and 4.2 s
    (LLVM on 729 small loops), 4.6 and 2.5 s now; 224 x 224 style net 0.97-0.98x the time."""
    import schedules
    from mdl_tvm.core.targets import get_profile

    w = np.ones((8, 3, 5, 5), "float32")
    mod = relax_module((1, 3, 9, 23), lambda bb, x: relax.op.nn.conv2d(
        x, relax.const(w), padding=2, out_dtype="float32"), "float32")
    with get_profile("host").tvm_target():
        lowered = schedules.lowering_pipeline(neon_config())(mod)
    text = next(f.script() for gv, f in lowered.functions.items() if "gemm" in gv.name_hint)
    data = re.search(r"(\w+) = T.decl_buffer\(\(621,\), data=x.data\)", text).group(1)
    assert re.search(rf"\b{data}\[T\.Ramp", text)  # vector copies
    assert not re.search(rf"\b{data}\[(?!T\.Ramp)", text)  # and no scalar ones
