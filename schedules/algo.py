"""Which algorithm computes a convolution: the packed GEMM (im2col; vectors over pixels,
or over output channels on small maps), direct, or Winograd F(m, 3) -- and with which
register tile, decided by an instruction-count model.

`choose_conv_algo` estimates the instructions one inference spends in each candidate and
keeps the cheapest (Winograd must win by `WINOGRAD_MARGIN`):

* GEMM (`gemm_cost`): per reduction step the register tile's FMAs, loads and loop
  (`gemm_step_cost`), its blocks' stores, the im2col copy; with indexed FMAs also the tile
  turned round (`schedules.gemm_channels`: a 7 x 7 map's 49 pixels fill no whole vectors);
* Winograd F(m, 3): the batched GEMM (``alpha^2 * K * C * T / L`` FMAs at the register
  tile's rate plus the tile's init and store per block), the input transform per channel
  and vector of tiles, the output transform per output channel and vector of tiles
  (`TRANSFORM_COST`, measured on the phone) and the gathering epilogue. Small maps and few
  channels make it lose -- unless all tiles fit one vector and the core has indexed FMAs:
  then output channels are the vector (`schedules.winograd_channels`, ``by_channels``).
  Where the machine config charges streamed weights (``weight_byte_cost``: x86 hosts), ``U``'s
  bytes beyond the 3 x 3 weights are added: on small maps with many channels they outweigh
  the FMAs saved.

Rules on top of the model: Winograd only for 3 x 3, stride 1, dilation 1, constant weights;
fp16 never uses F(6,3) (its transform error is ~1e-1 in fp16, `schedules.wino_math`);
F(6,3) only when both channel counts are <= `F6_MAX_CHANNELS` (its weights are 7.1x the
3 x 3 weights, F(4,3)'s 4x: NCNN's rule).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from schedules.config import (
    ConvGeometry,
    MachineConfig,
    ceil_div,
    elem_bytes,
    reads_in_place,
)
from schedules.segments import on_cores, tail_tile, task_choices, whole_segments

# Instructions per vector FMA of the direct packed kernel (0.31 per MAC in fp32).
DIRECT_PER_FMA = 1.25
# Winograd must be at least this much cheaper than direct.
WINOGRAD_MARGIN = 0.9
# F(6,3) only when input and output channels are both at most this (weight size).
F6_MAX_CHANNELS = 128
# Instructions per (channel, vector of tiles) of the input transform (by rows of tiles, by
# gathered tiles) and per (output channel, vector of tiles) of the output transform, by m.
TRANSFORM_COST = {
    2: {"rows": 60.0, "gather": 80.0, "output": 70.0},
    4: {"rows": 220.0, "gather": 290.0, "output": 240.0},
    6: {"rows": 470.0, "gather": 600.0, "output": 520.0},
}
# Instructions per output pixel of the epilogue that gathers pixels from the tile buffer.
EPILOGUE_PER_PIXEL = 2.0
CHANNELS_SPARE = 3  # registers a channel-vector GEMM leaves beside its tile (8 x 3 fp32)
_LOOP_PER_STEP = 0.75  # loop control per reduction step (4 steps unrolled)
_LOADS_PER_VECTOR = 0.6  # paired loads (ldp) on AArch64
_BLOCK_OVERHEAD = 15


@dataclass(frozen=True)
class ConvAlgo:
    """How one convolution is computed.

    Attributes
    ----------
    kind : str
        ``"direct"`` (`schedules.compute.conv2d_packed`), ``"gemm"``
        (`schedules.gemm.conv2d_gemm`) or ``"winograd"``.
    tile_size : int
        Winograd output tile ``m`` (0 for direct).
    k_block : int
        Output channels per GEMM register tile (the packed weights' inner axis).
    tile_vectors : int
        Vectors of tiles (Winograd) or of pixels (GEMM) per register tile.
    rows : int
        Output rows per segment of the GEMM convolution.
    cost : float
        Estimated instructions per inference.
    k_groups : int
        Parallel tasks per segment of the GEMM convolution, each with its share of the
        output-channel chunks (sharing one im2col copy of the segment).
    by_channels : bool
        Output channels as the vector, ``k_block`` a multiple of the lanes: Winograd
        (`schedules.winograd_channels`) or GEMM (`schedules.gemm_channels`, with
        ``tile_vectors`` pixels per block).
    """

    kind: str
    tile_size: int = 0
    k_block: int = 0
    tile_vectors: int = 0
    rows: int = 0
    cost: float = 0.0
    k_groups: int = 1
    by_channels: bool = False


def winograd_tile_sizes(dtype: str, in_channels: int, out_channels: int) -> tuple:
    """The F(m, 3) tile sizes allowed for a convolution (see the module docstring)."""
    sizes = (2, 4) if str(dtype) == "float16" else (2, 4, 6)
    if max(in_channels, out_channels) > F6_MAX_CHANNELS:
        sizes = tuple(m for m in sizes if m != 6)
    return sizes


def gemm_step_cost(cfg: MachineConfig, lanes: int, k_block: int, vectors: int) -> float:
    """Instructions per reduction step of a ``k_block x vectors`` register tile: FMAs, loads
    (tile vectors; weights as vectors with indexed FMAs, else one broadcast each), loop."""
    weights = ceil_div(k_block, lanes) if cfg.indexed_fma else k_block
    loads = (vectors + weights) * (_LOADS_PER_VECTOR if cfg.indexed_fma else 1.0)
    return k_block * vectors + loads + _LOOP_PER_STEP


def gemm_tiles(cfg: MachineConfig, lanes: int, spare: int = 1,
               half: bool = False) -> list[tuple[int, int]]:
    """Candidate ``(k_block, vectors)`` register tiles that fit the register file with
    `spare` registers left for the loop body; `half` adds a half-vector block of weights
    (used by lane from a 64-bit load: few output channels, e.g. an RGB output layer)."""
    if cfg.indexed_fma:
        blocks = [b for b in (lanes // 2 if half else 0, lanes, 2 * lanes, 4 * lanes)
                  if 2 <= b <= 16]
    else:
        blocks = list(range(1, 13))
    found = []
    for kb in blocks:
        weight_regs = ceil_div(kb, lanes) if cfg.indexed_fma else 1
        found += [(kb, nv) for nv in range(1, 7) if _fits(cfg, kb, nv, weight_regs, spare)]
    return found


def _fits(cfg: MachineConfig, rows: int, vectors: int, row_regs: int, spare: int) -> bool:
    """A ``rows x vectors`` tile of (at least 4) accumulators, its `vectors` loaded vectors,
    `row_regs` registers of by-lane values and `spare` ones fit the register file."""
    return rows * vectors + vectors + row_regs + spare <= cfg.num_regs and rows * vectors >= 4


def winograd_cost(cfg: MachineConfig, dtype: str, geo: ConvGeometry, out_rows: int, m: int,
                  batch: int = 1, by_channels: bool | None = None) -> ConvAlgo:
    """Estimated instructions of Winograd F(m, 3) with its best GEMM register tile, vectors
    over tiles or (all tiles in one vector) over output channels; `by_channels` True or
    False keeps only that orientation (infinite cost when it does not apply)."""
    lanes = cfg.lanes(dtype)
    alpha = m + 2
    c, k = geo.in_channels, geo.out_channels
    n_w = ceil_div(geo.out_width, m)
    tiles = batch * ceil_div(out_rows, m) * n_w
    best = ConvAlgo("winograd", m, cost=float("inf"))
    epilogue = batch * k * out_rows * geo.out_width * EPILOGUE_PER_PIXEL
    # 24 fp32 accumulators spill in the Winograd GEMM (its loop keeps more addresses live)
    candidates = [] if by_channels else gemm_tiles(cfg, lanes, spare=4 if lanes == 4 else 1)
    for kb, nv in candidates:
        block = nv * lanes
        padded = ceil_div(tiles, block) * block
        k_chunks = ceil_div(k, kb)
        steps = alpha * alpha * k_chunks * (padded // block) * c
        blocks = alpha * alpha * k_chunks * (padded // block)
        gemm = (steps * gemm_step_cost(cfg, lanes, kb, nv)
                + blocks * (2 * kb * nv + _BLOCK_OVERHEAD))
        cost = gemm + _transform_cost(m, c, k, padded // lanes, n_w >= lanes) + epilogue
        if cost < best.cost:
            best = ConvAlgo("winograd", m, kb, nv, cost=cost)
    # channel vectors only with indexed FMAs: on x86 (16 registers, a broadcast per tile)
    # the 512-channel 7 x 7 conv measured 1.61 ms against F(2,3) by tiles' 1.33 ms
    if cfg.indexed_fma and by_channels is not False:
        channels = _channels_cost(cfg, lanes, (alpha, m, n_w >= lanes), c, k, tiles, epilogue)
        best = channels if channels.cost < best.cost else best
    if cfg.weight_byte_cost and best.cost < float("inf"):
        extra = (alpha * alpha - 9) * c * k * elem_bytes(dtype)
        best = replace(best, cost=best.cost + cfg.weight_byte_cost * extra)
    return best


def tiles_padded(tiles: int, block: int, lanes: int) -> int:
    """``V``'s tile count for blocks of `block` tiles: a multiple of `lanes` that the vector
    loads of every block (``ceil(P / L)`` vectors from its first tile) stay inside."""
    block = min(block, tiles)
    full, tail = divmod(tiles, block)
    ends = [tiles]
    if full:
        ends.append((full - 1) * block + ceil_div(block, lanes) * lanes)
    if tail:
        ends.append(full * block + ceil_div(tail, lanes) * lanes)
    return ceil_div(max(ends), lanes) * lanes


def _channels_cost(cfg: MachineConfig, lanes: int, shape: tuple, c: int, k: int, tiles: int,
                   epilogue: float) -> ConvAlgo:
    """Winograd with output channels as the vector (`schedules.winograd_channels`: blocks of
    ``P`` tiles used by lane, the last block the tiles left): the best ``P x nv`` register
    tile (``kb = nv * L`` channels); `shape` is ``(alpha, m, by_rows)``."""
    alpha, m, by_rows = shape
    table = TRANSFORM_COST[m]
    best = ConvAlgo("winograd", m, cost=float("inf"), by_channels=True)
    # whole or half vectors of tiles per block (one load each; other part-vectors take one
    # load per piece), or all the tiles of a small map
    sizes = (lanes, lanes + lanes // 2, 2 * lanes, 3 * lanes)
    for p in sorted({b for b in sizes if b <= tiles} | {min(tiles, 2 * lanes)}):
        for nv in range(1, 7):
            if not _fits(cfg, p, nv, ceil_div(p, lanes), spare=CHANNELS_SPARE):
                continue
            kb = nv * lanes
            chunks = ceil_div(k, kb)
            full, tail = divmod(tiles, p)
            # the tiles play the weights' part: vectors of them used by lane per step
            blocks = [(full, p), (1, tail)] if tail else [(full, p)]
            gemm = alpha * alpha * chunks * sum(
                count * (c * gemm_step_cost(cfg, lanes, size, nv) + 2 * size * nv
                         + _BLOCK_OVERHEAD) for count, size in blocks)
            # input transform of the tiles per channel (as vectors); output transform per
            # tile and vector of channels
            vectors = tiles_padded(tiles, p, lanes) // lanes
            cost = (gemm + c * vectors * table["rows" if by_rows else "gather"]
                    + tiles * chunks * nv * table["output"] + epilogue)
            if cost < best.cost:
                best = ConvAlgo("winograd", m, kb, p, cost=cost, by_channels=True)
    return best


def _transform_cost(m: int, c: int, k: int, tile_vectors: int, by_rows: bool) -> float:
    table = TRANSFORM_COST[m]
    return tile_vectors * (c * table["rows" if by_rows else "gather"] + k * table["output"])


def direct_cost(cfg: MachineConfig, dtype: str, geo: ConvGeometry, out_rows: int,
                batch: int = 1) -> float:
    """Estimated instructions of the direct packed convolution."""
    lanes = cfg.lanes(dtype)
    outputs = batch * geo.out_channels * out_rows * geo.out_width
    macs = outputs * geo.in_channels * geo.kernel[0] * geo.kernel[1]
    return macs / lanes * DIRECT_PER_FMA + outputs


# im2col: instructions per copied element (unit stride, strided), per copied row; GEMM
# epilogue per accumulator vector (bias, activation, store).
_IM2COL_PER_ELEM, _IM2COL_PER_ROW, _GEMM_EPILOGUE_PER_VECTOR = {1: 0.5, 2: 1.0}, 10.0, 4.0
# ... for channel-vector tiles (a 7 x 7 map's 3 x 3 x 256 rows, 451 KiB, as NCNN's tiles)
_CHANNELS_IM2COL_BYTES = 512 * 1024
_TASKS_PER_CORE = 2  # parallel tasks per core the segments should give
PARALLEL_MIN_COST = 250_000  # estimated instructions under which a GEMM conv is not split


def gemm_cost(cfg: MachineConfig, dtype: str, geo: ConvGeometry, out_rows: int,
              batch: int = 1) -> ConvAlgo:
    """The GEMM convolution's best register tile, segment and task split, with its
    estimated cost; ``cost`` is infinite when no block fits (fewer pixels than one vector).

    With several cores the choice gives ``_TASKS_PER_CORE`` parallel tasks per core where
    it can, unless the convolution is small (`PARALLEL_MIN_COST`: the thread pool's wake-up
    costs about what the split saves) -- then it is the cheapest on one core. A grouped
    convolution's tiles stay within one group (``k_block`` divides its outputs; none may:
    infinite cost) and reduce over that group's inputs only."""
    lanes = cfg.lanes(dtype)
    elem = elem_bytes(dtype)
    kh, kw = geo.kernel
    rows_all = geo.in_channels * kh * kw  # im2col rows (every group's)
    red = rows_all // geo.groups  # reduction of one output channel
    group_out = geo.out_channels // geo.groups
    ow, k = geo.out_width, geo.out_channels
    im2col = not reads_in_place(geo.kernel, geo.stride, geo.pad_top or geo.pad_left
                                or geo.in_width != ow, geo.in_height * geo.in_width, lanes,
                                cfg.indexed_fma)
    wanted = _TASKS_PER_CORE * cfg.num_cores if cfg.num_cores > 1 else 1
    serial = parallel = ConvAlgo("gemm", cost=float("inf"))
    found = []  # (algo, parallel tasks)
    # a grouped im2col conv copies one group's rows per task (no k_groups split)
    per_group_copy = geo.groups > 1 and im2col
    # a half-vector block only where a full one would leave half its lanes idle: the
    # model prefers it on LeNet-5's 6-channel conv too, measured 17 % slower (short reduction)
    for kb, nv in gemm_tiles(cfg, lanes, half=group_out <= lanes // 2):
        if geo.groups > 1 and group_out % kb:
            continue  # a register tile stays within one group
        block, chunks = nv * lanes, ceil_div(k, kb)
        choices = (task_choices(out_rows, ow, block, red * elem, 1, wanted) if per_group_copy
                   else task_choices(out_rows, ow, block, rows_all * elem if im2col else 0,
                                      chunks, wanted))
        for groups, rows in choices:
            seg = rows * ow
            segs = batch * ceil_div(out_rows, rows)
            tail = tail_tile(seg, nv, lanes)
            blocks = [(seg // block, nv), (1, tail[0])] if tail else [
                (ceil_div(seg, block), nv)]
            cost = segs * chunks * sum(
                count * (red * gemm_step_cost(cfg, lanes, kb, vectors)
                         + kb * vectors * (1 + _GEMM_EPILOGUE_PER_VECTOR) + _BLOCK_OVERHEAD)
                for count, vectors in blocks)
            if im2col:  # all rows once per segment: shared by its k-groups, or per group
                cost += segs * rows_all * _im2col_row_cost(geo, seg, rows, lanes)
            tasks = segs * (geo.groups if per_group_copy else groups)
            algo = ConvAlgo("gemm", 0, kb, nv, rows, cost=cost, k_groups=groups)
            found.append((algo, tasks, on_cores(cfg, cost, segs, groups if im2col else 1,
                                                 tasks)))
    found += _gemm_channels(cfg, (lanes, elem), geo, out_rows, batch, wanted)
    best = float("inf")  # the parallel choice's cost on the cores
    for algo, tasks, spread in found:
        serial = algo if algo.cost < serial.cost else serial
        if tasks >= wanted and spread < best:
            parallel, best = algo, spread
    return serial if serial.cost < PARALLEL_MIN_COST or parallel.cost == float("inf") \
        else parallel


def _gemm_channels(cfg: MachineConfig, widths: tuple, geo: ConvGeometry, out_rows: int,
                   batch: int, wanted: int):
    """``(ConvAlgo, tasks, cost on the cores)`` with output channels as the vector
    (`schedules.gemm_channels`: one group, ``kb`` dividing the outputs, blocks of
    ``P = tile_vectors`` pixels, by lane or broadcast, an im2col copy, lane-by-lane
    stores); `widths`: lanes, element bytes."""
    lanes, elem = widths
    # maps under a vector stay direct (its rule takes squeeze-excite's fused channel scale)
    if geo.groups != 1 or out_rows * geo.out_width < lanes:
        return
    red, ow, k = geo.in_channels * geo.kernel[0] * geo.kernel[1], geo.out_width, geo.out_channels
    for nv in (1, 2, 3, 4):
        if k % (nv * lanes):
            continue
        chunks = k // (nv * lanes)
        for p in range(1, 3 * lanes + 1):
            if not _fits(cfg, p, nv, ceil_div(p, lanes), spare=CHANNELS_SPARE):
                continue
            choices = task_choices(out_rows, ow, p, red * elem, chunks, wanted,
                                    _CHANNELS_IM2COL_BYTES)
            for groups, rows in (whole_segments(choices, chunks)
                                 if not cfg.indexed_fma else choices):
                seg, segs = rows * ow, batch * ceil_div(out_rows, rows)
                blocks = [(seg // p, p)] + ([(1, seg % p)] if seg % p else [])
                cost = segs * chunks * sum(
                    count * (red * _channel_step(cfg, lanes, size, nv)
                             + size * nv * (lanes + 2) + _BLOCK_OVERHEAD)
                    for count, size in blocks)
                cost += segs * red * _im2col_row_cost(geo, seg, rows, lanes)
                yield (ConvAlgo("gemm", 0, nv * lanes, p, rows, cost=cost, k_groups=groups,
                                by_channels=True), segs * groups,
                       on_cores(cfg, cost, segs, groups, segs * groups))


def _im2col_row_cost(geo: ConvGeometry, seg: int, rows: int, lanes: int) -> float:
    """Instructions to copy one im2col row of a segment (`seg` pixels in `rows` rows)."""
    return seg * _IM2COL_PER_ELEM[min(geo.stride[1], 2)] / lanes + rows * _IM2COL_PER_ROW


def _channel_step(cfg: MachineConfig, lanes: int, pixels: int, nv: int) -> float:
    """Instructions per step of a channel-vector tile as LLVM emits it on AArch64: FMAs,
    whole vectors in pairs (``ldp``), the pixels past them one load per power-of-two piece
    (7 fp32 pixels: q, d, s), one of loop (measured on ResNet-18's 7 x 7 conv); without
    indexed FMAs, one broadcast per pixel and one load per weight vector."""
    if not cfg.indexed_fma:
        return pixels * nv + pixels + nv + _LOOP_PER_STEP
    whole, rest = divmod(pixels, lanes)
    return pixels * nv + ceil_div(whole, 2) + bin(rest).count("1") + ceil_div(nv, 2) + 1.0


def winograd_eligible(geo: ConvGeometry) -> bool:
    """3 x 3, stride 1, dilation 1, one group."""
    return (geo.kernel == (3, 3) and geo.stride == (1, 1) and geo.dilation == (1, 1)
            and geo.groups == 1)


def choose_conv_algo(cfg: MachineConfig, dtype: str, geo: ConvGeometry, out_rows: int,
                     batch: int = 1, winograd: bool = True) -> ConvAlgo:
    """Direct or Winograd (and which tile) for one convolution, by estimated instructions.

    Parameters
    ----------
    cfg : MachineConfig
    dtype : str
        Compute dtype.
    geo : ConvGeometry
    out_rows : int
        Output height.
    batch : int
    winograd : bool
        Whether Winograd may be chosen (False for weights that are not constants: their
        transform would run at every inference).

    Returns
    -------
    ConvAlgo
    """
    direct = ConvAlgo("direct", cost=direct_cost(cfg, dtype, geo, out_rows, batch))
    gemm = gemm_cost(cfg, dtype, geo, out_rows, batch)
    # the GEMM kernel wherever it applies (its estimate is measured, the direct one is a
    # lower bound the packed kernel does not reach on the phone)
    best = gemm if gemm.cost < float("inf") else direct
    if not (winograd and winograd_eligible(geo)) or str(dtype) not in ("float32", "float16"):
        return best
    for m in winograd_tile_sizes(dtype, geo.in_channels, geo.out_channels):
        algo = winograd_cost(cfg, dtype, geo, out_rows, m, batch)
        if algo.cost < WINOGRAD_MARGIN * best.cost and algo.cost < best.cost:
            best = algo
    return best
