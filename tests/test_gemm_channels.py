"""The GEMM convolution with output channels as the vector (`schedules.gemm_channels`):
numerics against the unscheduled TIR on odd geometries, and the choice between it and the
pixel-vector tile."""

import pytest
from helpers import check_rule_numerics, neon_config, relax_module
from tvm import relax

from schedules import algo, legalize, segments
from schedules.config import ConvGeometry, MachineConfig


@pytest.mark.parametrize("in_c, out_c, kernel, stride, hw, dtype, tile, residual", [
    (12, 16, 3, 2, (14, 13), "float32", (8, 12, 7), False),  # 49 = 4 x 12 + 1
    (12, 16, 3, 2, (2, 14, 13), "float32", (8, 12, 7), True),  # batch 2
    (10, 8, 3, 2, (14, 14), "float32", (8, 7, 2), True),  # 7 pixels: q + d + s loads
    (9, 16, 1, 1, (7, 7), "float16", (16, 11, 7), True),  # 1 x 1 stride 1 (copied)
    (8, 24, 3, 1, (5, 6), "float32", (12, 8, 2), False),  # segments shifted (5 rows by 2)
    (6, 8, 3, 1, (1, 1), "float16", (8, 1, 1), True),  # a 1-pixel map
    (5, 8, 5, 2, (9, 9), "float32", (4, 5, 5), False),  # 5 x 5, few input channels
    (16, 32, 3, 1, (3, 3), "float16", (32, 4, 3), False),  # kb = 4 vectors, 9 = 4 + 4 + 1
])
def test_channel_tile_matches_unscheduled(monkeypatch, rng, in_c, out_c, kernel, stride, hw,
                                          dtype, tile, residual):
    kb, pixels, rows = tile
    monkeypatch.setattr(legalize, "choose_conv_algo", lambda *a, **k: algo.ConvAlgo(
        "gemm", 0, kb, pixels, rows, by_channels=True))
    pad = kernel // 2
    w = (rng.standard_normal((out_c, in_c, kernel, kernel)) / kernel).astype(dtype)
    bias = rng.standard_normal((1, out_c, 1, 1)).astype(dtype)
    batch, hw = (hw[0], hw[1:]) if len(hw) == 3 else (1, hw)
    out_hw = [(n + 2 * pad - kernel) // stride + 1 for n in hw]
    res = rng.standard_normal((batch, out_c, *out_hw)).astype(dtype)  # gathered by lane

    def body(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), strides=stride, padding=pad,
                                       out_dtype=dtype))
        y = bb.emit(relax.op.add(y, relax.const(bias)))
        if residual:
            y = bb.emit(relax.op.add(y, relax.const(res)))
        return relax.op.nn.relu(y)

    x = rng.standard_normal((batch, in_c, *hw)).astype(dtype)
    check_rule_numerics(relax_module(x.shape, body, dtype), x, neon_config(), "gemm_conv",
                        dtype)


def test_channel_tile_rejects_a_partial_chunk():
    from schedules.gemm_channels import check_channel_tile

    with pytest.raises(ValueError, match="multiple of the 4 lanes dividing the 12"):
        check_channel_tile(8, 4, 12, 1, 49, 12)
    with pytest.raises(ValueError, match="do not fit a segment of 7"):
        check_channel_tile(8, 4, 16, 1, 7, 12)


def _geo(c, k, hw, ks, stride):
    ow = (hw + 2 * (ks // 2) - ks) // stride + 1
    return ConvGeometry(c, hw, hw, k, ow, (ks, ks), (stride, stride), (1, 1), ks // 2,
                        ks // 2), ow


@pytest.mark.parametrize("c, k, hw, ks, stride, dtype, channels", [
    (256, 512, 14, 3, 2, "float32", True),  # ResNet-18's 7 x 7 stride-2 conv
    (256, 512, 14, 3, 2, "float16", True),
    (128, 256, 28, 3, 2, "float16", True),  # 14 x 14
    (64, 128, 56, 3, 2, "float32", False),  # 28 x 28: whole pixel vectors
    (3, 64, 224, 7, 2, "float32", False),  # the stem
    (256, 510, 14, 3, 2, "float32", False),  # no kb divides 510: pixel vectors
    (240, 960, 1, 1, 1, "float16", False),  # squeeze-excite's 1 x 1 map: the direct kernel
])
def test_cost_model_picks_channel_vectors_on_small_maps(c, k, hw, ks, stride, dtype, channels):
    geo, ow = _geo(c, k, hw, ks, stride)
    arm = MachineConfig(vector_bits=128, num_regs=32, num_cores=4, fp16_arith=True,
                        indexed_fma=True)
    chosen = algo.choose_conv_algo(arm, dtype, geo, ow)
    assert chosen.kind == ("gemm" if hw > 1 else "direct") and chosen.by_channels is channels


@pytest.mark.parametrize("c, k, hw, ks, stride, channels", [
    (256, 512, 14, 3, 2, True),  # 7 x 7 output: 49 pixels pad 16-lane vectors to 64
    (1152, 320, 7, 1, 1, True),  # MnasNet's 1 x 1 on 7 x 7 (5 chunks of 64: 5 tasks)
    # 28 x 28: 4 segments of 8 rows (5 tasks of pixel vectors ran 3:2; 0.96-0.98x measured)
    (64, 128, 56, 3, 2, True),
    (160, 160, 14, 1, 1, False),  # 14 x 14 1 x 1, read in place
])
def test_cost_model_on_x86_turns_the_tile_where_pixel_vectors_are_padded(c, k, hw, ks, stride,
                                                                          channels):
    """AVX-512 has no indexed FMAs: the channel tile broadcasts its pixels (measured on the
    host: 256 -> 512 3 x 3 s2 to 7 x 7, 0.70 -> 0.55 ms), in whole-map segments, with
    enough tasks for 2 cores."""
    geo, ow = _geo(c, k, hw, ks, stride)
    x86 = MachineConfig(vector_bits=512, num_regs=32, num_cores=2)
    chosen = algo.choose_conv_algo(x86, "float32", geo, ow)
    assert chosen.by_channels is channels
    if channels:
        assert chosen.rows == ow or ow > 7
        assert (k // chosen.k_block) % chosen.k_groups == 0
        assert chosen.k_groups * -(-ow // chosen.rows) >= 4


@pytest.mark.parametrize("in_c, out_c, kernel, stride, hw, tile, residual", [
    (12, 32, 1, 1, (7, 7), (32, 6, 7), True),  # 49 = 8 x 6 + 1, 2 vectors of 16
    (8, 16, 3, 2, (14, 13), (16, 5, 7), False),  # 3 x 3 stride 2, 49 = 9 x 5 + 4
    (9, 48, 3, 1, (3, 3), (48, 4, 3), True),  # 3 vectors, 9 = 2 x 4 + 1, padded map
])
def test_broadcast_channel_tile_matches_unscheduled(monkeypatch, rng, in_c, out_c, kernel,
                                                    stride, hw, tile, residual):
    """Without indexed FMAs (x86) the channel tile broadcasts each pixel from memory."""
    kb, pixels, rows = tile
    monkeypatch.setattr(legalize, "choose_conv_algo", lambda *a, **k: algo.ConvAlgo(
        "gemm", 0, kb, pixels, rows, by_channels=True))
    w = (rng.standard_normal((out_c, in_c, kernel, kernel)) / kernel).astype("float32")
    out_hw = [(n + 2 * (kernel // 2) - kernel) // stride + 1 for n in hw]
    res = rng.standard_normal((1, out_c, *out_hw)).astype("float32")

    def body(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), strides=stride,
                                       padding=kernel // 2))
        if residual:
            y = bb.emit(relax.op.add(y, relax.const(res)))
        return relax.op.nn.relu(y)

    x = rng.standard_normal((1, in_c, *hw)).astype("float32")
    x86 = MachineConfig(vector_bits=512, num_regs=32, num_cores=2)
    check_rule_numerics(relax_module(x.shape, body, "float32"), x, x86, "gemm_conv")


def test_x86_tasks_fill_both_cores_evenly():
    """5 tasks on 2 cores run as 3 (`segments.balance`): MnasNet's 1152 -> 320 on 7 x 7
    takes 10 tasks of 32 channels rather than 5 of 64 (host, 2 threads: 0.83-0.97x)."""
    assert segments.balance(5, 2) == pytest.approx(1.2)
    assert segments.balance(10, 2) == 1.0 and segments.balance(3, 1) == 1.0
    geo, ow = _geo(1152, 320, 7, 1, 1)
    x86 = MachineConfig(vector_bits=512, num_regs=32, num_cores=2)
    chosen = algo.choose_conv_algo(x86, "float32", geo, ow)
    tasks = chosen.k_groups * -(-ow // chosen.rows)
    assert tasks % 2 == 0 and tasks >= 4


def test_shared_copy_pays_a_launch_per_segment_on_x86_only():
    """k-groups sharing a segment's im2col copy launch two parallel loops per segment."""
    x86 = MachineConfig(vector_bits=512, num_regs=32, num_cores=2)
    arm = MachineConfig(vector_bits=128, num_regs=32, num_cores=4, indexed_fma=True)
    assert segments.on_cores(x86, 1e6, 7, 2, 14) == 1e6 + 13 * segments.LAUNCH_COST
    assert segments.on_cores(x86, 1e6, 7, 1, 7) == pytest.approx(1e6 * 8 / 7)
    assert segments.on_cores(arm, 1e6, 7, 2, 14) == 1e6
