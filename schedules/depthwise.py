"""Rule for the NCHW depthwise convolution and its fused epilogue.

Recognises
    a PrimFunc with a root block annotated ``mdl.rule = "depthwise"`` (made by
    `schedules.compute.depthwise_conv2d`): ``dw[n, c, oh, ow] += pad[n, c / m, oh*s + kh,
    ow + kw]`` (for stride s > 1 the input is split into s column phases, so ``ow`` still
    reads consecutive columns) ``* w[c, 0, kh, kw]``, with the output width padded to a
    whole vector block, followed by a crop block and any element-wise epilogue.

Schedule
    ``parallel(n * c / g)`` → pad (and phase-split) this task's ``g`` channel planes into a
    scratch buffer that stays in cache (``g`` planes fit 16 KB: one workspace allocation
    per task, not per channel) → ``g`` → ``oh`` → ``ow_outer`` → ``kh, kw`` (unrolled) → ``ow_vecs``
    (unrolled, independent accumulators) → ``lanes`` (vectorised): each tap is one weight
    broadcast times contiguous input vectors. Padding is a fill plus a vectorised interior
    copy; the phase split reads ``s`` neighbours per step (an interleaved group LLVM
    vectorises). The crop and the epilogue are inlined into one block per output row,
    vectorised when the lanes divide the width.
"""

from __future__ import annotations

from tvm import s_tir, tirx

from schedules.common import (
    PARALLEL_MIN_WORK,
    TILE_SCOPE,
    Rule,
    annotated_block,
    block_dtype,
    extent,
    fuse_epilogue,
    is_spatial,
    schedule_others,
    schedule_pad,
    vectorize_init,
    vectorize_row,
    work,
)
from schedules.compute import ROLE_KEY


class DepthwiseConv2D(Rule):
    """Vectorised-over-width depthwise convolution (see module docstring)."""

    name = "depthwise"

    def apply(self, func: tirx.PrimFunc, cfg) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        found = annotated_block(sch, "depthwise")
        if found is None:
            return None
        conv, tile = found
        loops = sch.get_loops(conv)
        if len(loops) != 6:
            return None
        n, c, oh, ow, ry, rx = loops
        ow_extent = extent(sch, ow)
        if tile is None or ow_extent is None or ow_extent % tile:
            tile = 1
        lanes = cfg.lanes(block_dtype(sch, conv))
        vecs = tile // lanes if tile % lanes == 0 else 1
        ow_outer, ow_vecs, ow_inner = sch.split(ow, [None, vecs, tile // vecs])
        sch.reorder(n, c, oh, ow_outer, ry, rx, ow_vecs, ow_inner)
        total = work(sch, conv)
        outer = sch.fuse(n, c)
        group = _channels_per_task(sch, cfg, extent(sch, outer))
        if group > 1:
            outer, _ = sch.split(outer, [None, group])
        fused = not fuse_epilogue(sch, conv, oh)
        if fused:  # the tile lives in registers only when its reader is inside the tile
            sch.set_scope(conv, 0, TILE_SCOPE)
        _prologue_per_channel(sch, conv, outer, cfg, lanes)
        if cfg.num_cores > 1 and total >= PARALLEL_MIN_WORK:
            sch.parallel(outer)
        sch.vectorize(ow_inner)
        sch.unroll(ow_vecs)
        sch.unroll(ry)
        sch.unroll(rx)
        init = sch.decompose_reduction(conv, ry)
        vectorize_init(sch, init)
        if fused:
            _vectorize_epilogue(sch, conv, lanes)
        schedule_others(sch, conv, cfg, lanes)
        return sch


# Bytes of input planes one parallel task pads into its scratch buffer (fits in L1).
_TASK_BYTES = 16384


def _channels_per_task(sch, cfg, channels: int | None) -> int:
    """Channels per parallel task: a divisor of `channels` whose input planes fit in
    `_TASK_BYTES`, leaving at least two tasks per core.

    Each task allocates its padded scratch planes once (a runtime workspace call when
    they exceed the stack limit), so small planes grouped together save one allocation
    per channel; 112x112 planes stay one per task.
    """
    data = sch.mod["main"].params[0]
    if not channels or len(data.shape) != 4:
        return 1
    plane = int(data.shape[2]) * int(data.shape[3]) * data.dtype.bits // 8
    limit = max(1, min(_TASK_BYTES // max(plane, 1), channels // (2 * cfg.num_cores)))
    return max(d for d in range(1, limit + 1) if channels % d == 0)


def _prologue_per_channel(sch, conv, outer, cfg, lanes: int) -> None:
    """Pad (and phase-split) one channel plane inside the parallel channel loop.

    The plane is then hot in cache for the taps; the padding is decomposed into a fill
    and a vectorised interior copy, the phase split stays a plain loop LLVM vectorises.
    """
    producers = [conv]
    while True:
        spatial = [b for b in sch.get_producers(producers[-1]) if is_spatial(sch, b)]
        if len(spatial) != 1:
            break
        producers.append(spatial[0])
    for block in producers[1:]:
        try:
            sch.compute_at(block, outer, preserve_unit_loops=True)
        except Exception:  # noqa: BLE001 - stays a root nest for schedule_others
            return
    for block in producers[1:]:
        if not schedule_pad(sch, block, cfg, lanes, parallel=False):
            _phase_split_inner(sch, block)


def _phase_split_inner(sch, block) -> None:
    """Make the phase loop innermost and unrolled: ``phase[p][j] = row[j*s + p]`` then reads
    ``s`` neighbouring inputs per ``j``, an interleaved group LLVM vectorises with shuffles."""
    if sch.get(block).annotations.get(ROLE_KEY) != "phase_split":
        return
    loops = [lp for lp in sch.get_loops(block) if len(sch.get_child_blocks(lp)) == 1]
    if len(loops) >= 2:
        sch.reorder(loops[-1], loops[-2])
        sch.unroll(loops[-2])


def _vectorize_epilogue(sch, conv, lanes: int) -> None:
    """Vectorise the fused epilogue's row loop, a width the lanes do not divide by pieces
    (`vectorize_row`: a 14-pixel row's SiLU was 14 scalar exps)."""
    for block in sch.get_consumers(conv):
        loops = sch.get_loops(block)
        if loops:
            vectorize_row(sch, loops[-1], lanes)
