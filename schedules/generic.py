"""Rules for everything without a dedicated kernel: pooling and other reductions, and a
fallback that schedules any PrimFunc safely.

`Reduction` recognises
    a PrimFunc with at least one reduction block in normal form (every block iterator bound
    to its own loop): max / average pooling, global (adaptive) pooling, sums and means, and
    convolutions / matmuls TVM legalized itself (grouped convolutions, other layouts).
    Schedule: a small padding block feeding a small window (pooling) is inlined; the
    innermost output axis is split by the vector lanes and moved inside the reduction loops
    when the output is contiguous along it (``out[..., x_o*L : x_o*L + L]`` accumulates in a
    vector). A row the lanes do not divide (LeNet's 14 and 5 pixels) but at most
    `_WHOLE_ROW_LANES` vectors long is vectorised whole (LLVM splits it into legal
    vectors) instead of falling back to scalar code. A reduction over the contiguous
    innermost axes of its input (a global average pool over NCHW planes) sums in vector
    lanes instead (`_lane_partial_sums`). The remaining spatial loops are fused into one
    parallel loop.

`Fallback` recognises
    anything (it never returns None for a function it can parse). Element-wise chains are
    inlined into their last block; every spatial loop nest is fused, vectorised by the lanes
    when they divide it, and made parallel when it has enough work; a reduction nest gets
    its spatial loops fused and parallel. A 4-D nest that selects between inputs at its own
    plane coordinates (a channel concat) copies whole NCHW planes as vector runs with
    power-of-two tails (`_copy_planes`); an element-wise nest whose rows the lanes do not
    divide, reading each buffer at its own plane coordinates or per channel (a batch norm +
    ReLU), runs each plane as one vectorised run too (`_plane_runs`).
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from schedules.common import (
    Rule,
    block_dtype,
    extent,
    fuse_parallel,
    is_spatial,
    root_blocks,
    schedule_pad,
    schedule_spatial,
    vector_width,
    vectorize_init,
    vectorize_planes,
    work,
)

_SMALL_WINDOW = 64  # reduction extents up to this count as a pooling window
_WHOLE_ROW_LANES = 4  # an odd-width output row up to 4 vectors long is one vector


def _normal_loops(sch: s_tir.Schedule, block):
    """``(spatial_loops, reduce_loops, spatial_iters)`` when each block iterator is bound to
    its own loop (spatial and reduction loops each in loop order), else None."""
    stmt = sch.get(block)
    loops = sch.get_loops(block)
    bindings = _bindings(sch, block)
    if bindings is None or len(bindings) != len(loops) or len(loops) != len(stmt.iter_vars):
        return None
    spatial, reduce = [], []
    loop_vars = [sch.get(loop).loop_var for loop in loops]
    for iv, value in zip(stmt.iter_vars, bindings, strict=True):
        if not isinstance(value, tirx.Var):
            return None
        index = next((i for i, v in enumerate(loop_vars) if v.same_as(value)), None)
        if index is None:
            return None
        kind = iv.iter_type
        if kind == tirx.IterVar.DataPar:
            spatial.append((index, iv))
        elif kind == tirx.IterVar.CommReduce:
            reduce.append((index, iv))
        else:
            return None
    return ([loops[i] for i, _ in sorted(spatial, key=lambda p: p[0])],
            [loops[i] for i, _ in sorted(reduce, key=lambda p: p[0])],
            [iv for _, iv in sorted(spatial, key=lambda p: p[0])])


def _if_then_elses(expr):
    """The ``if_then_else`` calls in `expr` (through calls and element-wise operands)."""
    if isinstance(expr, tvm.ir.expr.Call):
        if getattr(expr.op, "name", "") == "prim.if_then_else":
            yield expr
        for arg in expr.args:
            yield from _if_then_elses(arg)
        return
    for field in ("a", "b", "value"):
        sub = getattr(expr, field, None)
        if isinstance(sub, tvm.ir.expr.Expr):
            yield from _if_then_elses(sub)


def _selects(stmt) -> bool:
    """True when the block stores a value that chooses between inputs (``if_then_else``,
    possibly under element-wise ops: a concat)."""
    return isinstance(stmt.body, tirx.BufferStore) and next(
        _if_then_elses(stmt.body.value), None) is not None


def _bindings(sch: s_tir.Schedule, block):
    """The iterator values of `block` when it is the whole body of its innermost loop."""
    loops = sch.get_loops(block)
    if not loops:
        return None
    body = sch.get(loops[-1]).body
    if isinstance(body, s_tir.SBlockRealize) and body.block.same_as(sch.get(block)):
        return list(body.iter_values)
    return None


def _reduce_extent(sch, loops) -> int:
    total = 1
    for loop in loops:
        total *= extent(sch, loop) or 1 << 20
    return total


def _contiguous_in(stmt, iv) -> bool:
    """True when the block's output is indexed by `iv` in its innermost dimension."""
    if not stmt.writes:
        return False
    last = stmt.writes[0].region[-1]
    return isinstance(last.min, tirx.Var) and last.min.same_as(iv.var)


def schedule_reduction(sch: s_tir.Schedule, block, cfg) -> bool:
    """Vectorise and parallelise one reduction block in normal form; False if not normal."""
    found = _normal_loops(sch, block)
    if found is None:
        return False
    spatial, reduce, spatial_iters = found
    if not reduce or not spatial:
        return False
    total = work(sch, block)
    lanes = cfg.lanes(block_dtype(sch, block))
    inner_ext = extent(sch, spatial[-1])
    vectorisable = bool(inner_ext and lanes > 1
                        and _contiguous_in(sch.get(block), spatial_iters[-1]))
    if vectorisable and inner_ext % lanes == 0:
        outer, vec = sch.split(spatial[-1], [None, lanes])
        outer_loops = [*spatial[:-1], outer]
    elif vectorisable and 1 < inner_ext <= _WHOLE_ROW_LANES * lanes:
        outer_loops, vec = spatial[:-1], spatial[-1]  # an odd-width row as one vector
    elif _lane_partial_sums(sch, block, spatial, reduce, cfg, lanes, total):
        return True
    else:
        sch.reorder(*spatial, *reduce)
        fuse_parallel(sch, spatial, cfg, total)
        return True
    sch.reorder(*outer_loops, *reduce, vec)
    fuse_parallel(sch, outer_loops, cfg, total)
    sch.vectorize(vec)
    init = sch.decompose_reduction(block, reduce[0])
    vectorize_init(sch, init)
    return True


def _lane_partial_sums(sch, block, spatial, reduce, cfg, lanes: int, total: int) -> bool:
    """A reduction over the contiguous innermost axes of its input (a global average pool
    over NCHW planes) as ``lanes`` partial sums: the reduce loops fused and split by the
    lanes, the lane loop factored out (``rfactor``) and vectorised -- one vector add per
    ``lanes`` inputs, NCNN's pooling -- then the lanes summed. False (schedule untouched)
    unless the fused extent is a multiple of a vector (`vector_width`: the lanes or a
    power-of-two fraction of them) and at least four of them."""
    stmt = sch.get(block)
    if len(stmt.reads) != 1 or not reduce or lanes <= 1:
        return False
    ivs = [iv for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.CommReduce]
    region, shape = stmt.reads[0].region, stmt.reads[0].source.shape
    tail = region[-len(ivs):]
    if len(ivs) != len(reduce) or len(region) < len(ivs) or not all(
            isinstance(r.min, tirx.Var) and r.min.same_as(iv.var)
            and int(iv.dom.extent) == int(dim)
            for r, iv, dim in zip(tail, ivs, shape[-len(ivs):], strict=True)):
        return False
    size = _reduce_extent(sch, reduce)
    width = vector_width(size, lanes)  # 196 pixels in 8 fp16 lanes: 4-lane vectors
    if width < 2 or size < 4 * width:
        return False
    sch.reorder(*spatial, *reduce)
    fused = sch.fuse(*reduce) if len(reduce) > 1 else reduce[0]
    _, lane = sch.split(fused, [None, width])
    partial = sch.rfactor(lane, factor_axis=len(stmt.writes[0].region))
    loops = sch.get_loops(partial)
    outer = fuse_parallel(sch, loops[:len(spatial)], cfg, total)
    sch.vectorize(sch.get_loops(partial)[-1])
    vectorize_init(sch, sch.decompose_reduction(partial, sch.get_loops(partial)[1]))
    sch.reverse_compute_at(block, outer)
    return True


class Reduction(Rule):
    """Pooling and other reductions (see module docstring)."""

    name = "reduction"

    def apply(self, func: tirx.PrimFunc, cfg) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        blocks = root_blocks(sch)
        reductions = [b for b in blocks if not is_spatial(sch, b)]
        if not reductions:
            return None
        for block in reductions:
            found = _normal_loops(sch, block)
            if found is None:
                return None
            if _reduce_extent(sch, found[1]) <= _SMALL_WINDOW:
                for producer in sch.get_producers(block):
                    if is_spatial(sch, producer) and len(sch.get_consumers(producer)) == 1:
                        try:
                            sch.compute_inline(producer)
                        except Exception:  # noqa: BLE001 - keep it as a loop nest
                            pass
        for block in root_blocks(sch):
            if is_spatial(sch, block):
                _schedule_spatial_or_pad(sch, block, cfg)
            elif not schedule_reduction(sch, block, cfg):
                return None
        return sch


class Fallback(Rule):
    """Safe schedule for any PrimFunc (see module docstring)."""

    name = "fallback"

    def apply(self, func: tirx.PrimFunc, cfg) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        outputs = {b.name_hint for b in _output_blocks(sch)}
        for block in root_blocks(sch):
            stmt = sch.get(block)
            if stmt.name_hint in outputs or not is_spatial(sch, block):
                continue
            consumers = sch.get_consumers(block)
            if consumers and all(is_spatial(sch, c) for c in consumers):
                try:
                    sch.compute_inline(block)
                except Exception:  # noqa: BLE001 - stays a separate loop nest
                    pass
        for block in root_blocks(sch):
            if is_spatial(sch, block):
                _schedule_spatial_or_pad(sch, block, cfg)
                continue
            loops = sch.get_loops(block)
            kinds = _leading_spatial(sch, block, len(loops))
            if kinds:
                fuse_parallel(sch, loops[:kinds], cfg, work(sch, block))
        return sch


def _schedule_spatial_or_pad(sch, block, cfg) -> None:
    lanes = cfg.lanes(block_dtype(sch, block))
    if _copy_planes(sch, block, cfg, lanes) or _plane_runs(sch, block, cfg, lanes):
        return
    if not schedule_pad(sch, block, cfg, lanes):
        schedule_spatial(sch, block, cfg, lanes)


def _copy_planes(sch, block, cfg, lanes: int) -> bool:
    """A 4-D block that reads every buffer at its own two innermost coordinates (a channel
    concat: ``out[n, c, h, w] = c < C0 ? a[n, c, h, w] : b[n, c - C0, h, w]``) copies whole
    NCHW planes: the channel loop is cut where the selecting conditions change (one loop
    per input, where the condition is a constant: no select, no load of the input it does
    not take), each parallel over its channels, the ``h * w`` plane one vectorised run with
    power-of-two tails. The plain rule kept SqueezeNet's 55-pixel rows scalar, one branch
    per pixel: SqueezeNet-style on the phone 63.0 -> 60.0 M instructions (fp32), 39.0 ->
    35.1 M (fp16); on the x86 host LLVM vectorised the plain loop nearly as well (~3 %)."""
    loops, stmt = sch.get_loops(block), sch.get(block)
    bindings = _bindings(sch, block)
    if len(loops) != 4 or bindings is None or len(bindings) != 4 or not _selects(stmt):
        return False
    if not all(bindings[i].same_as(sch.get(loops[i]).loop_var) for i in (1, 2, 3)):
        return False
    h, w = (iv.var for iv in stmt.iter_vars[2:])
    for region in stmt.reads:
        dims = region.region
        if len(dims) != 4 or not (dims[2].min.same_as(h) and dims[3].min.same_as(w)):
            return False
    total, channels = work(sch, block), extent(sch, loops[1])
    cuts = sorted(c for c in _channel_cuts(stmt.body.value, stmt.iter_vars[1].var)
                  if 0 < c < (channels or 0))
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, channels], strict=True)]
    pieces = sch.loop_partition(loops[1], sizes[:-1] + [None]) if cuts else [loops[1]]
    for piece, size in zip(pieces, sizes, strict=True):
        inner = _innermost_block(sch, piece) if cuts else block
        # (n, c, h, w); (c, h, w) below a partition's wrapper
        vectorize_planes(sch, sch.get_loops(inner), cfg, total * size // max(channels, 1),
                         lanes)
    return True


def _plane_runs(sch, block, cfg, lanes: int) -> bool:
    """An element-wise nest whose rows the lanes do not divide, every buffer read and
    written either at the nest's own two innermost coordinates (a whole ``h x w`` plane of
    its shape) or not along them (a per-channel scale): the plane as one vectorised run
    (`vectorize_planes`). The plain rule left DenseNet's BN-ReLU on 28-, 14- and 7-pixel
    rows scalar under 16-lane AVX-512 (one divide per pixel)."""
    loops, stmt = sch.get_loops(block), sch.get(block)
    bindings = _bindings(sch, block)
    if len(loops) < 3 or bindings is None or not len(bindings) == len(loops) == len(
            stmt.iter_vars):
        return False
    plane = (extent(sch, loops[-2]), extent(sch, loops[-1]))
    if not all(plane) or plane[1] % lanes == 0 or plane[0] * plane[1] < lanes:
        return False
    if not all(bindings[i].same_as(sch.get(loops[i]).loop_var) for i in (-2, -1)):
        return False
    h, w = (iv.var for iv in stmt.iter_vars[-2:])
    for region in [*stmt.reads, *stmt.writes]:
        if not any(_uses(d.min, h, w) for d in region.region):
            continue  # constant along the plane (a per-channel scale)
        if not _at_plane(region, h, w, plane):
            return False
    vectorize_planes(sch, loops, cfg, work(sch, block), lanes)
    return True


def _uses(expr, h, w) -> bool:
    """Whether `expr` depends on `h` or `w`."""
    return any(v.same_as(h) or v.same_as(w) for v in tirx.analysis.undefined_vars(expr))


def _at_plane(region, h, w, plane: tuple) -> bool:
    """Whether `region` is one element at ``[..., h, w]`` of a buffer whose last two
    dimensions are `plane`, its other indices free of `h` and `w`."""
    dims, shape = region.region, region.source.shape
    if len(dims) < 2 or not (dims[-2].min.same_as(h) and dims[-1].min.same_as(w)):
        return False
    if any(not (isinstance(d.extent, tirx.IntImm) and d.extent.value == 1) for d in dims[-2:]):
        return False
    if not all(isinstance(v, tirx.IntImm) and v.value == e for v, e in zip(
            shape[-2:], plane, strict=True)):
        return False
    return not any(_uses(d.min, h, w) for d in dims[:-2])


def _innermost_block(sch, loop):
    """The one block under `loop`, below the wrapper blocks `loop_partition` adds."""
    blocks = sch.get_child_blocks(loop)
    while len(blocks) == 1 and sch.get_child_blocks(blocks[0]):
        blocks = sch.get_child_blocks(blocks[0])
    return blocks[0]


def _channel_cuts(expr, var) -> set[int]:
    """The channel indices at which a select's condition on `var` changes (``c < 64``,
    ``64 <= c``: 64)."""
    found = set()
    for select in _if_then_elses(expr):
        cond = select.args[0]
        sides = (getattr(cond, "a", None), getattr(cond, "b", None))
        for const, other in (sides, sides[::-1]):
            if isinstance(const, tirx.IntImm) and isinstance(other, tirx.Var) and \
                    other.same_as(var):
                # c < k, k <= c: k; c <= k, k < c: k + 1
                inclusive = isinstance(cond, (tirx.LE, tirx.GT)) == (other is sides[0])
                found.add(int(const.value) + (1 if inclusive else 0))
    return found


def _output_blocks(sch):
    root = sch.mod["main"].body.block
    return [sch.get(b) for b in sch.get_output_blocks(sch.get_sblock(root.name_hint))]


def _leading_spatial(sch, block, num_loops: int) -> int:
    """How many outer loops bind only spatial iterators (0 when unknown)."""
    found = _normal_loops(sch, block)
    if found is None:
        return 0
    spatial, _reduce, _ = found
    loops = sch.get_loops(block)
    count = 0
    for loop in loops:
        if any(sch.get(loop).same_as(sch.get(s)) for s in spatial):
            count += 1
        else:
            break
    return min(count, num_loops)
