"""Winograd convolution: transform arithmetic, the kernels against their unscheduled TE
reference on odd geometries (fp32 and fp16, phone-like and host lanes), and the cost
model's choice between Winograd tiles and the GEMM convolution."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import lower_and_run, neon_config, relax_module, rules_used
from tvm import relax

import schedules.legalize as legalize
from mdl_tvm.core.targets import get_profile
from schedules import algo, wino_math
from schedules.config import ConvGeometry, MachineConfig, ceil_div
from schedules.winograd_channels import VECTOR_AXIS_ATTR

NEON = neon_config()
HOST = MachineConfig.from_profile(get_profile("host"))
ARM32 = MachineConfig.from_profile(get_profile("arm64"))
ARM16 = MachineConfig.from_profile(get_profile("arm64-fp16"))


def _direct(x, w, padding):
    top, left, bottom, right = padding
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    return torch.nn.functional.conv2d(torch.tensor(xp), torch.tensor(w.astype(np.float64))).numpy()


@pytest.mark.parametrize("m", wino_math.TILE_SIZES)
def test_transforms_compute_the_correlation_and_report_their_error(rng, m):
    """A^T[(G g G^T) * (B^T d B)]A is the 3 x 3 correlation; rounding every stage to fp16
    costs more with bigger tiles (the reason fp16 stops at F(4,3))."""
    x = rng.standard_normal((16, 14, 14))
    w = rng.standard_normal((8, 16, 3, 3)) / 12
    ref = _direct(x[None], w, (1, 1, 1, 1))[0]
    scale = np.abs(ref).max()
    err32 = np.abs(wino_math.reference(x, w, m, (1, 1, 1, 1), "float32") - ref).max() / scale
    err16 = np.abs(wino_math.reference(x, w, m, (1, 1, 1, 1), "float16") - ref).max() / scale
    assert err32 < 2e-5
    assert err16 < {2: 3e-3, 4: 1e-2, 6: 5e-2}[m]
    at, g, bt = wino_math.matrices(m, "float32")
    assert at.shape == (m, m + 2) and g.shape == (m + 2, 3) and bt.shape == (m + 2, m + 2)


@pytest.mark.parametrize("m, matrix, most", [(4, 0, 10), (6, 0, 22), (4, 2, 16)])
def test_transform_rows_share_sums_and_differences(rng, m, matrix, most):
    """The expressions are ``mt @ x`` and spend at most `most` operations: the output
    transform A^T computes each pair ``x_a +- x_b`` it reads once (F(4,3): 10, as NCNN's
    hand-written transform, not the 14 of one expression per row)."""
    from tvm import tirx

    mt = wino_math.matrices(m, "float64")[matrix]
    xs = [tirx.Var(f"x{i}", "float64") for i in range(mt.shape[1])]
    exprs = wino_math.transform_rows(mt, xs, "float64")
    ops = set()  # distinct operations (equal subtrees are one value for LLVM; a product
    # added or subtracted is one fmla / fmls)

    def _visit(e, fused=False):
        if isinstance(e, (tirx.Add, tirx.Sub, tirx.Mul)):
            if not (fused and isinstance(e, tirx.Mul)):
                ops.add(str(e))
            add = not isinstance(e, tirx.Mul)
            _visit(e.a, add)
            _visit(e.b, add)

    for e in exprs:
        _visit(e)
    assert len(ops) <= most
    values = dict(zip(xs, rng.standard_normal(len(xs)), strict=True))

    def _eval(e):
        if isinstance(e, tirx.Var):
            return values[e]
        if isinstance(e, tirx.FloatImm):
            return e.value
        a, b = _eval(e.a), _eval(e.b)
        return {tirx.Add: a + b, tirx.Sub: a - b, tirx.Mul: a * b}[type(e)]

    expected = mt @ np.array(list(values.values()))
    np.testing.assert_allclose([_eval(e) for e in exprs], expected, rtol=1e-12, atol=1e-12)


def test_weight_transform_is_packed_by_output_channel_blocks(rng):
    w = rng.standard_normal((5, 3, 3, 3)).astype("float32")
    u = wino_math.transform_weight(w, 4, 4, "float32")
    _, g, _ = wino_math.matrices(4, "float32")
    expected = np.einsum("ea,kcab,fb->efkc", g, w.astype(np.float64), g).reshape(36, 5, 3)
    assert u.shape == (36, 2, 3, 4) and u.dtype == np.float32
    np.testing.assert_allclose(u[:, 0].transpose(0, 2, 1), expected[:, :4], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(u[:, 1, :, 0], expected[:, 4], rtol=1e-5, atol=1e-6)
    assert not u[:, 1, :, 1:].any()  # channels past K are zero
    assert wino_math.transform_weight(w, 4, 8, "float32", "float16").dtype == np.float16


def _force(monkeypatch, m, by_channels=False, tile=None):
    """Make every 3 x 3 conv Winograd F(m,3); `tile` ``(kb, P)`` fixes the channel-vector
    GEMM's register tile (``P`` tiles per block)."""
    def _choose(cfg, dtype, geo, out_rows, batch=1, winograd=True):
        if tile is not None:
            return algo.ConvAlgo("winograd", m, tile[0], tile[1], by_channels=True)
        return algo.winograd_cost(cfg, dtype, geo, out_rows, m, batch, by_channels)

    monkeypatch.setattr(legalize, "choose_conv_algo", _choose)


def _conv_net(shape, w, bias, padding, residual, dtype):
    def body(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, relax.const(w.astype(dtype)), padding=padding,
                                       out_dtype=dtype))
        y = bb.emit(relax.op.add(y, relax.const(bias.astype(dtype))))
        if residual:
            y = bb.emit(relax.op.add(y, x))
        return relax.op.nn.relu(y)

    return relax_module(shape, body, dtype)


@pytest.mark.parametrize(
    "cfg, n, c, k, hw, padding, m, dtype, by_channels",
    [
        (NEON, 1, 13, 37, (9, 11), (1, 1, 1, 1), 4, "float32", False),  # odd channels, gathered
        (NEON, 1, 12, 12, (12, 20), (1, 1, 1, 1), 2, "float32", False),  # rows of tiles, residual
        (NEON, 2, 6, 10, (8, 8), (1, 1, 1, 1), 4, "float32", False),  # batch 2
        (NEON, 1, 16, 16, (3, 3), (1, 1, 1, 1), 6, "float32", False),  # map smaller than a tile
        (NEON, 1, 8, 8, (1, 1), (1, 1, 1, 1), 2, "float32", False),  # one pixel
        (HOST, 1, 5, 9, (17, 23), (0, 1, 2, 1), 6, "float32", False),  # asymmetric padding, 8 lanes
        (NEON, 1, 12, 20, (10, 14), (1, 1, 1, 1), 4, "float16", False),
        (NEON, 1, 16, 16, (7, 20), (1, 1, 1, 1), 2, "float16", False),  # rows of 8 fp16 tiles
        # F(4,3) by rows of tiles (shuffled out of row vectors), last vector of a row shifted
        (NEON, 1, 8, 12, (9, 22), (1, 1, 1, 1), 4, "float32", False),
        (NEON, 2, 8, 8, (5, 35), (1, 1, 1, 1), 4, "float16", False),
        # 11 channels in parallel ranges of 2 (the last range 1), two groups of tile vectors
        (NEON, 1, 11, 8, (30, 22), (1, 1, 1, 1), 4, "float32", False),
        # output channels as the vector (all tiles in one vector): 7 x 7 as in ResNet layer4,
        # channels not a multiple of the block, one tile, batch 2, fp32
        (NEON, 1, 24, 40, (7, 7), (1, 1, 1, 1), 4, "float16", True),
        (NEON, 1, 13, 19, (7, 5), (1, 1, 1, 1), 4, "float16", True),
        (NEON, 1, 16, 16, (3, 3), (1, 1, 1, 1), 4, "float16", True),
        (NEON, 2, 8, 12, (4, 4), (1, 1, 1, 1), 4, "float32", True),
        (NEON, 1, 20, 20, (6, 7), (1, 1, 1, 1), 4, "float32", True),
        (NEON, 1, 9, 21, (7, 7), (0, 1, 2, 1), 4, "float32", True),  # asymmetric padding
    ],
)
def test_winograd_conv_matches_unscheduled_reference(monkeypatch, rng, cfg, n, c, k, hw, padding,
                                                     m, dtype, by_channels):
    _force(monkeypatch, m, by_channels)
    _check_winograd(rng, cfg, n, c, k, hw, padding, dtype, by_channels)


@pytest.mark.parametrize(
    "cfg, n, c, k, hw, dtype, tile",
    [
        (NEON, 1, 12, 20, (9, 22), "float32", (12, 8)),  # 18 tiles: 2 blocks of 8 + 2, K cut
        (NEON, 2, 8, 8, (7, 9), "float32", (8, 4)),  # batch 2: 12 tiles, blocks of 4
        (NEON, 1, 6, 8, (13, 13), "float32", (4, 6)),  # 16 tiles: blocks of 6 (1.5 vectors) + 4
        (NEON, 1, 16, 24, (20, 36), "float16", (16, 12)),  # 45 tiles: 3 blocks of 12 + 9
        (NEON, 1, 5, 9, (5, 5), "float16", (8, 16)),  # a block wider than the 4 tiles
    ],
)
def test_channel_vector_winograd_blocks_and_tail_match_reference(monkeypatch, rng, cfg, n, c, k,
                                                                 hw, dtype, tile):
    """Blocks of P tiles used by lane, the last one the tiles left (no tile computed twice),
    against the unscheduled TIR and a direct convolution."""
    _force(monkeypatch, 4, tile=tile)
    _check_winograd(rng, cfg, n, c, k, hw, (1, 1, 1, 1), dtype, True)


def test_channel_vector_padding_covers_every_block_load():
    for tiles in range(1, 60):
        for block in (1, 3, 4, 6, 8, 12, 16):
            for lanes in (4, 8):
                padded = algo.tiles_padded(tiles, block, lanes)
                assert padded % lanes == 0 and padded >= tiles
                p = min(block, tiles)
                starts = list(range(0, tiles, p))
                for t0 in starts:  # every block's vector loads stay inside V
                    count = min(p, tiles - t0)
                    assert t0 + -(-count // lanes) * lanes <= padded


def _check_winograd(rng, cfg, n, c, k, hw, padding, dtype, by_channels):
    x = rng.standard_normal((n, c, *hw)).astype(dtype)
    w = (rng.standard_normal((k, c, 3, 3)) / np.sqrt(9 * c)).astype("float32")
    bias = rng.standard_normal((1, k, 1, 1)).astype("float32")
    residual = c == k and padding == (1, 1, 1, 1)
    mod = _conv_net(x.shape, w, bias, padding, residual, dtype)
    plain, expected = lower_and_run(mod, [x], cfg, rules=())
    lowered, actual = lower_and_run(mod, [x], cfg)
    rules = set(rules_used(lowered).values())
    assert {"winograd", "winograd_input"} <= rules, rules
    assert not any(rules_used(plain).values())
    axes = {f.attrs.get(VECTOR_AXIS_ATTR) for _, f in lowered.functions_items() if f.attrs}
    assert ("channels" in axes) == by_channels
    exact = np.maximum(_direct(x, w, padding) + bias + (x if residual else 0), 0)
    scale = np.abs(exact).max()
    tol = 1e-4 if dtype == "float32" else 3e-2
    assert np.abs(actual.astype(np.float64) - exact).max() <= tol * scale
    assert np.abs(actual.astype(np.float64) - expected).max() <= tol * scale


def _geo(c, k, hw, kernel=3, stride=1):
    pad = kernel // 2
    out = (hw + 2 * pad - kernel) // stride + 1
    return ConvGeometry(c, hw, hw, k, out, (kernel, kernel), (stride, stride), pad_top=pad,
                        pad_left=pad), out


@pytest.mark.parametrize(
    "cfg, dtype, shape, expected",
    [
        (ARM32, "float32", (64, 64, 56), "winograd"),  # ResNet layer1
        (ARM32, "float32", (512, 512, 7), "winograd"),  # layer4: 4 tiles, still pays
        (ARM16, "float16", (128, 128, 28), "winograd"),
        (ARM32, "float32", (1, 64, 28), "gemm"),  # one input channel: transforms dominate
        (ARM32, "float32", (4, 4, 2), "gemm"),  # a 2 x 2 map: one tile, transforms dominate
        (ARM32, "float32", (3, 16, 32), "gemm"),  # RGB stem: three input channels
        (ARM16, "float16", (3, 16, 32), "gemm"),
    ],
)
def test_cost_model_picks_the_cheaper_path(cfg, dtype, shape, expected):
    geo, out = _geo(*shape)
    chosen = algo.choose_conv_algo(cfg, dtype, geo, out)
    assert chosen.kind == expected
    other = algo.gemm_cost(cfg, dtype, geo, out)
    if expected == "winograd":
        assert chosen.cost < algo.WINOGRAD_MARGIN * other.cost
    else:
        best = min(algo.winograd_cost(cfg, dtype, geo, out, m).cost
                   for m in algo.winograd_tile_sizes(dtype, shape[0], shape[1]))
        assert best >= algo.WINOGRAD_MARGIN * chosen.cost


def test_cost_model_rules_tile_sizes_by_precision_channels_and_weights():
    assert 6 not in algo.winograd_tile_sizes("float16", 64, 64)  # fp16: transform error
    assert 6 in algo.winograd_tile_sizes("float32", 64, 64)
    assert 6 not in algo.winograd_tile_sizes("float32", 256, 256)  # weights 7.1x, not 4x
    geo, out = _geo(64, 64, 56)
    assert algo.choose_conv_algo(ARM32, "float32", geo, out, winograd=False).kind == "gemm"
    stride2, out2 = _geo(64, 128, 56, stride=2)
    assert algo.choose_conv_algo(ARM32, "float32", stride2, out2).kind == "gemm"
    for cfg, dtype in ((ARM32, "float32"), (ARM16, "float16")):
        for kb, nv in algo.gemm_tiles(cfg, cfg.lanes(dtype)):
            assert kb * nv + nv + max(1, kb // cfg.lanes(dtype)) + 1 <= cfg.num_regs


def test_cost_model_turns_the_gemm_to_channel_vectors_on_few_tiles():
    """ResNet-18's 7 x 7 layer in fp16: F(4,3)'s 4 tiles fill half a vector of tiles, so the
    channel-vector GEMM (measured 6.0 M instructions per conv on the phone, F(2,3) by tiles
    9.8 M) must win; 14 x 14 (16 tiles) stays by tiles; x86 (no indexed FMA) never turns."""
    geo, out = _geo(512, 512, 7)
    chosen = algo.choose_conv_algo(ARM16, "float16", geo, out)
    assert (chosen.kind, chosen.tile_size, chosen.by_channels) == ("winograd", 4, True)
    assert chosen.k_block % ARM16.lanes("float16") == 0 and chosen.tile_vectors == 4
    by_tiles = min(algo.winograd_cost(ARM16, "float16", geo, out, m, by_channels=False).cost
                   for m in (2, 4))
    assert chosen.cost < 0.75 * by_tiles
    assert not any(algo.winograd_cost(HOST, "float32", geo, out, m).by_channels for m in (2, 4))


def test_cost_model_turns_the_gemm_where_tile_vectors_would_be_padded():
    """A 28 x 28 map has 49 F(4,3) tiles: 13 fp32 vectors of tiles compute 52 with a
    16-accumulator tile (l2 of ResNet-18: 11.36 M instructions on the phone), blocks of 12
    tiles by lane and a tail of 1 compute 49 with 24 accumulators (10.26 M; blocks of 8:
    10.42 M); on 7 x 7 in fp32 (4 tiles, one vector) the tile-vector kernel stays."""
    geo, out = _geo(128, 128, 28)
    chosen = algo.choose_conv_algo(ARM32, "float32", geo, out)
    assert (chosen.kind, chosen.by_channels, chosen.tile_vectors) == ("winograd", True, 12)
    assert chosen.k_block * chosen.tile_vectors == 96  # 12 tiles x 8 channels
    geo7, out7 = _geo(512, 512, 7)
    assert not algo.choose_conv_algo(ARM32, "float32", geo7, out7).by_channels


@pytest.mark.parametrize("shape, host", [((64, 256, 13), "gemm"), ((48, 192, 13), "gemm"),
                                         ((64, 64, 56), "winograd"), ((32, 128, 27), "winograd")])
def test_cost_model_charges_winograd_weights_on_x86_only(shape, host):
    """F(4,3)'s U is 4x the 3 x 3 weights and is read from memory at every inference. The
    x86 host config charges those extra bytes, so SqueezeNet's 13 x 13 expand convs (U 2.4 /
    1.3 MB, 16 tiles) take the GEMM there (0.90-0.96x the time at 2 threads); large maps keep
    Winograd. The phone configs count instructions only and keep Winograd everywhere."""
    geo, out = _geo(*shape)
    assert HOST.weight_byte_cost > 0 and ARM32.weight_byte_cost == ARM16.weight_byte_cost == 0
    assert algo.choose_conv_algo(HOST, "float32", geo, out).kind == host
    assert algo.choose_conv_algo(ARM32, "float32", geo, out).kind == "winograd"
    charged = algo.winograd_cost(HOST, "float32", geo, out, 4).cost
    free = algo.winograd_cost(replace(HOST, weight_byte_cost=0.0), "float32", geo, out, 4).cost
    assert charged - free == HOST.weight_byte_cost * 27 * shape[0] * shape[1] * 4


def test_input_transform_scratch_is_private_to_each_thread():
    """The padded plane and the passes' scratch are allocated inside the parallel loop over
    channel ranges: one per thread (a plane shared by the threads raced, and the style
    network's output changed from run to run)."""
    import tvm
    import tvm.s_tir.transform as st

    from schedules.wino_input import input_transform_func

    func = input_transform_func((1, 8, 10, 10), "float32", (1, 1, 1, 1), 4, "float32", 4, 12,
                                tasks=3)
    lowered = tvm.transform.Sequential([
        st.ConvertBlocksToOpaque(), st.PlanAndUpdateBufferAllocationLocation(),
        st.CompactBufferAllocation(), st.LowerOpaqueBlock()])(tvm.IRModule({"main": func}))
    lines = lowered.script().split("\n")
    first_parallel = next(i for i, line in enumerate(lines) if "T.parallel" in line)
    allocs = [i for i, line in enumerate(lines) if "alloc_buffer" in line]
    assert len(allocs) == 2 and min(allocs) > first_parallel
    assert "T.parallel(3)" in lines[first_parallel]  # 8 channels in ranges of 3, 3, 2


@pytest.mark.parametrize("lanes", [4, 16])
def test_input_transform_names_each_butterfly_vector_once(lanes):
    """Tiles gathered across a row narrower than the lanes (3 tiles of 10 pixels) are
    transposed by a butterfly of shuffles whose vectors are each read by two shuffles of the
    next level and by several rows of B^T. Bound as lets, each shuffle is in the IR once;
    as a shared tree, TVM's lowering walked it once per use (3.4 s of
    CompactBufferAllocation for one 8-channel, 16-lane transform; 0.4 s now)."""
    from schedules.wino_input import input_transform_func

    func = input_transform_func((1, 8, 10, 10), "float32", (1, 1, 1, 1), 4, "float32", lanes,
                                max(lanes, 12))
    alpha = 6
    per_row = ceil_div(alpha, lanes)
    butterflies = alpha * per_row  # one transpose per input row and block of `lanes` columns
    assert func.script().count("T.Shuffle(") == butterflies * lanes * int(np.log2(lanes))
