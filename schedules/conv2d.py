"""Rule for the packed NCHW convolution (groups = 1) and its fused epilogue.

Recognises
    a PrimFunc with a root block annotated ``mdl.rule = "conv2d"`` (made by
    `schedules.compute.conv2d_packed` through `schedules.legalize`), i.e.
    ``conv[n, oc_chunk, oh, ow, oc_block] += pad[n, ic, oh*s + kh, ow*s + kw]
    * w[oc_chunk, ic, kh, kw, oc_block]`` (``mdl.vector = "oc"``) or the same with the last
    two axes swapped (``mdl.vector = "ow"``), optionally preceded by a padding block and
    followed by the NCHW unpack and any element-wise blocks FuseOps put after it
    (bias add, residual add, ReLU, clip).

Schedule
    ``parallel(n * oc_chunk * oh)`` → ``ow_outer`` → ``ic, kh, kw`` → register block:

    * ``"oc"``: ``ow_tile`` (unrolled) → ``oc_block`` (vectorised); one broadcast input pixel
      times one weight vector per FMA;
    * ``"ow"``: ``oc_block`` (unrolled) → ``ow_tile`` (vectorised); one broadcast weight times
      a vector of consecutive input pixels per FMA (stride 1).

    The blocked intermediate is a ``local`` buffer of one tile (registers); the unpack and
    the epilogue are inlined into one block computed at ``ow_outer``, so the output is
    written once, with bias, residual and activation applied, while the tile is in
    registers (whole vector rows for ``"ow"``). Padding is a separate parallel loop nest:
    a fill plus a vectorised, condition-free interior copy.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.tirx.analysis import undefined_vars

from schedules.common import (
    PARALLEL_MIN_WORK,
    TILE_SCOPE,
    Rule,
    annotated_block,
    block_dtype,
    extent,
    fuse_epilogue,
    schedule_others,
    vector_width,
    vectorize_init,
    work,
)
from schedules.compute import VECTOR_KEY


class Conv2DPacked(Rule):
    """Register-blocked direct convolution over packed weights (see module docstring)."""

    name = "conv2d"

    def apply(self, func: tirx.PrimFunc, cfg) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        found = annotated_block(sch, "conv2d")
        if found is None:
            return None
        conv, ow_tile = found
        loops = sch.get_loops(conv)
        if len(loops) != 8:
            return None
        vector_axis = str(sch.get(conv).annotations.get(VECTOR_KEY, "oc"))
        if vector_axis == "ow":
            n, oc_chunk, oh, oc_block, ow, rc, ry, rx = loops
        else:
            n, oc_chunk, oh, ow, oc_block, rc, ry, rx = loops
        ow_extent = extent(sch, ow)
        if ow_tile is None or ow_extent is None or ow_extent % ow_tile:
            ow_tile = 1
        ow_outer, ow_inner = sch.split(ow, [None, ow_tile])
        if vector_axis == "ow":
            sch.reorder(n, oc_chunk, oh, ow_outer, rc, ry, rx, oc_block, ow_inner)
            vector, unrolled = ow_inner, oc_block
        else:
            sch.reorder(n, oc_chunk, oh, ow_outer, rc, ry, rx, ow_inner, oc_block)
            vector, unrolled = oc_block, ow_inner
        total = work(sch, conv)
        outer = sch.fuse(n, oc_chunk, oh)
        fused = not fuse_epilogue(sch, conv, ow_outer)
        if fused:  # the tile lives in registers only when its reader is inside the tile
            sch.set_scope(conv, 0, TILE_SCOPE)
        sch.vectorize(vector)
        sch.unroll(unrolled)
        if cfg.num_cores > 1 and total >= PARALLEL_MIN_WORK:
            sch.parallel(outer)
        if cfg.indexed_fma:
            sch = _broadcast_from_vector(sch, conv, rx, vector_axis, extent(sch, unrolled))
        init = sch.decompose_reduction(conv, rc)
        vectorize_init(sch, init)
        lanes = cfg.lanes(block_dtype(sch, conv))
        if fused and vector_axis == "ow":
            _vectorize_rows(sch, conv, lanes)
        schedule_others(sch, conv, cfg, lanes)
        return sch


def _broadcast_from_vector(sch, conv, rx, vector_axis: str, count: int | None):
    """Load the broadcast operand of one reduction step (``count`` weights for ``"ow"``,
    ``count`` input pixels for ``"oc"``) with vector loads into a local copy.

    The FMAs then take their scalar from a vector register lane (``fmla v.8h, v.8h,
    v.h[i]``, `MachineConfig.indexed_fma`) instead of one scalar load each: AArch64 has
    no paired load for fp16 registers, so without this fp16 pays one load per FMA (and
    fp32 one per two, ``ldp s, s``). Input pixels qualify only when
    they are contiguous (unit stride); otherwise, or when the copy cannot be placed, the
    schedule is returned unchanged.
    """
    if not count or count < 2:
        return sch
    ndim = 5 if vector_axis == "ow" else 4  # packed weights / NCHW input
    reads = sch.get(conv).reads
    index = next((i for i, r in enumerate(reads) if len(r.source.shape) == ndim), None)
    if index is None:
        return sch
    trial = sch.copy()
    try:
        copy = trial.cache_read(conv, index, TILE_SCOPE)
        trial.compute_at(copy, rx, preserve_unit_loops=True)
        inner = trial.get_loops(copy)[-1]
        if extent(trial, inner) != count:  # strided pixels: a copy would not help
            return sch
        trial.vectorize(inner)
    except Exception:  # noqa: BLE001 - keep the scalar loads
        return sch
    return trial


def _vectorize_rows(sch, conv, lanes: int) -> None:
    """Vectorise the epilogue's pixel loop (a whole tile, or the whole row when one tile
    spans it) by the widest vector dividing it, when no width guard is in it."""
    for block in sch.get_consumers(conv):
        loops = sch.get_loops(block)
        if len(loops) < 2:
            continue
        realize = sch.get(loops[-1]).body
        if not isinstance(realize, s_tir.SBlockRealize):
            continue
        if _guards_var(realize.predicate, sch.get(loops[-1]).loop_var):
            continue
        row = extent(sch, loops[-1])
        width = vector_width(row, lanes)
        if width <= 1:
            continue
        sch.unroll(loops[-2])
        vec = loops[-1] if row == width else sch.split(loops[-1], [None, width])[1]
        sch.vectorize(vec)


def _guards_var(pred, var) -> bool:
    """True when the predicate expression mentions `var`."""
    return any(v.same_as(var) for v in undefined_vars(pred))
