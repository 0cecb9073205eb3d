"""Helpers shared by the rules: the rule interface, block lookup, epilogue fusion, and the
parallel + vector treatment every loop nest outside a register block gets.

A rule is an object with a ``name`` and ``apply(func, cfg) -> Schedule | None``; ``None``
means "not mine" and the next rule is tried (the dlight convention, with the target
profile's `MachineConfig` in place of a `Target`).
"""

from __future__ import annotations

from tvm import s_tir, tirx

from schedules.compute import RULE_KEY, TILE_KEY

# Below this many innermost iterations a parallel loop costs more than it saves.
PARALLEL_MIN_WORK = 16384
# Storage scope of per-tile scratch buffers (register tiles, broadcast copies). TVM 0.27
# lowers every CPU allocation of scope "local" to a TVMBackendAllocWorkspace /
# FreeWorkspace pair, once per loop iteration that holds it (measured: 54,000 calls and
# ~18 M instructions per MobileNetV2 inference on the phone); "global" ones under 1 KB
# become stack arrays, which LLVM keeps in registers.
TILE_SCOPE = "global"


class Rule:
    """Base class of a schedule rule: recognise a PrimFunc and schedule it."""

    name = "rule"

    def apply(self, func: tirx.PrimFunc, cfg) -> s_tir.Schedule | None:
        """Return a schedule of `func`, or None when the rule does not apply.

        Parameters
        ----------
        func : tirx.PrimFunc
            An unscheduled function.
        cfg : schedules.config.MachineConfig
            The target's lanes, registers and cores.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<schedule rule {self.name}>"


def extent(sch: s_tir.Schedule, loop) -> int | None:
    """The constant extent of `loop`, or None when it is symbolic."""
    ext = sch.get(loop).extent
    return int(ext.value) if isinstance(ext, tirx.IntImm) else None


def root_blocks(sch: s_tir.Schedule) -> list:
    """The blocks directly under the root block, in program order."""
    root = sch.mod["main"].body.block
    return list(sch.get_child_blocks(sch.get_sblock(root.name_hint)))


def annotated_block(sch: s_tir.Schedule, rule: str):
    """The root-level block annotated ``mdl.rule == rule`` and its ``mdl.tile``, or None."""
    for block in root_blocks(sch):
        ann = sch.get(block).annotations
        if RULE_KEY in ann and str(ann[RULE_KEY]) == rule:
            tile = int(ann[TILE_KEY]) if TILE_KEY in ann else None
            return block, tile
    return None


def is_spatial(sch: s_tir.Schedule, block) -> bool:
    """True when every block iterator is data-parallel."""
    return all(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(block).iter_vars)


def fuse_epilogue(sch: s_tir.Schedule, producer, loop) -> list:
    """Fuse the element-wise blocks after `producer` into its tile at `loop`.

    Every injective block after `producer` is inlined into the next one, so one block is
    left that reads the tile (plus bias, residual ...) and writes the output; it is moved
    under `loop` with `reverse_compute_at`. Returns the blocks that stay at the root
    (empty when everything fused).
    """
    blocks = root_blocks(sch)
    index = next(i for i, b in enumerate(blocks) if sch.get(b).same_as(sch.get(producer)))
    after = blocks[index + 1:]
    if not after or not all(is_spatial(sch, b) for b in after):
        return after
    # a block that broadcasts (more iterations than the one before it: a squeeze-excite
    # gate times the feature map) ends the fused chain: inlined, the gate's sigmoid would
    # be computed once per pixel instead of once per channel
    end = next((i for i in range(1, len(after)) if work(sch, after[i]) > work(sch, after[i - 1])),
               len(after))
    chain, rest = after[:end], after[end:]
    for block in chain[:-1]:
        try:
            sch.compute_inline(block)
        except Exception:  # noqa: BLE001 - a block with several consumers stays
            return root_blocks(sch)[index + 1:]
    last = chain[-1]
    try:
        sch.reverse_compute_at(last, loop, preserve_unit_loops=True)
    except Exception:  # noqa: BLE001
        return [last, *rest]
    return rest


def work(sch: s_tir.Schedule, block) -> int:
    """Iterations of all loops around `block` (1 for symbolic extents)."""
    total = 1
    for loop in sch.get_loops(block):
        total *= extent(sch, loop) or 1
    return total


def vector_width(extent: int | None, lanes: int) -> int:
    """Widest vector for a loop of `extent`: `lanes`, else the largest power-of-two
    fraction of it (at least 2) that divides the extent; 1 when none does.

    With 8 fp16 lanes a 28-wide row still gets 4-lane (64-bit) vectors, where requiring
    the full register would leave it scalar (fp32's 4 lanes divide 28). Used for the
    direct convolution's fused epilogue rows and the lane split of a plane reduction
    (`schedules.generic`); the depthwise epilogue cuts any row into pieces instead
    (`vectorize_row`); other loops keep whole vectors or stay scalar for LLVM's loop
    vectoriser, which measured better there.
    """
    width = lanes
    while extent and width >= 2:
        if extent % width == 0:
            return width
        width //= 2
    return 1


def vector_parts(width: int, lanes: int) -> list[int]:
    """Consecutive pieces of a row of `width` for vector code: the whole vectors of `lanes`
    (one piece), then halving powers of two, then a last single element if one is left
    (14 by 8 fp16 lanes: 8, 4, 2; 7 by 4: 4, 2, 1; 28 by 16: 16, 8, 4)."""
    parts = [width // lanes * lanes] if width >= lanes else []
    rest, size = width - sum(parts), lanes // 2
    while rest:
        if size <= 1 or rest >= size:
            parts.append(rest if size <= 1 else size)
            rest -= parts[-1]
        size //= 2
    return parts


def vectorize_row(sch: s_tir.Schedule, loop, lanes: int) -> bool:
    """Vectorise a loop of any constant extent: partitioned (`vector_parts`) into whole
    vectors and power-of-two tails, each a vector of its own (a 14-pixel row of SiLU
    epilogue in fp16 is three vectors, not fourteen scalar exps). False when it is not
    worth it (symbolic extent, one lane, a single element)."""
    width = extent(sch, loop)
    if not width or lanes <= 1 or width < 2:
        return False
    parts = vector_parts(width, lanes)
    loops = sch.loop_partition(loop, [*parts[:-1], None]) if len(parts) > 1 else [loop]
    for piece, size in zip(loops, parts, strict=True):
        if size > lanes:
            piece = sch.split(piece, [None, lanes])[1]
        if size > 1:
            sch.vectorize(piece)
    return True


def schedule_spatial(sch: s_tir.Schedule, block, cfg, dtype_lanes: int) -> None:
    """Vectorise a spatial loop nest's innermost loop and parallelise the loops around it.

    The innermost loop is vectorised by `dtype_lanes` only when the lanes divide it (no
    remainder guard in a vector loop; otherwise it stays a scalar loop LLVM may still
    vectorise); the outer loops are fused into one loop, parallel when the nest has enough
    work.
    """
    loops = sch.get_loops(block)
    if not loops:
        return
    total = work(sch, block)
    inner_ext = extent(sch, loops[-1])
    outer = list(loops[:-1])
    if inner_ext and dtype_lanes > 1 and inner_ext % dtype_lanes == 0:
        if inner_ext > dtype_lanes:
            rest, vec = sch.split(loops[-1], [None, dtype_lanes])
            outer.append(rest)
        else:
            vec = loops[-1]
        sch.vectorize(vec)
    elif not outer:
        outer = [loops[-1]]
    if outer:
        fuse_parallel(sch, outer, cfg, total)


def block_dtype(sch: s_tir.Schedule, block) -> str:
    """Dtype of the first buffer `block` writes."""
    writes = sch.get(block).writes
    return str(writes[0].source.dtype) if writes else "float32"


def fuse_parallel(sch: s_tir.Schedule, loops: list, cfg, min_work: int):
    """Fuse `loops` into one loop and make it parallel when `min_work` justifies it."""
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if min_work >= PARALLEL_MIN_WORK and cfg.num_cores > 1:
        sch.parallel(fused)
    return fused


def vectorize_planes(sch: s_tir.Schedule, loops: list, cfg, min_work: int,
                     lanes: int) -> None:
    """NCHW planes as vector runs: the last two `loops` (rows, columns) fused into one
    `vectorize_row` loop, the ones above fused and parallel when `min_work` justifies it."""
    plane = sch.fuse(loops[-2], loops[-1])
    fuse_parallel(sch, list(loops[:-2]), cfg, min_work)
    vectorize_row(sch, plane, lanes)


def schedule_others(sch: s_tir.Schedule, main_block, cfg, lanes: int) -> None:
    """Give every spatial root loop nest not containing `main_block` `schedule_spatial`.

    These are the prologue (padding, packing of non-constant weights) and any epilogue
    block that could not be fused into the main block's tile. An epilogue block (after
    `main_block`) over NCHW planes whose rows the lanes do not divide copies whole planes
    as vectors with tails (`vectorize_row`): a squeeze-excite gate times a 14 x 14 map was
    a scalar 14-pixel loop per row.
    """
    main_outer = sch.get(sch.get_loops(main_block)[0])
    blocks = root_blocks(sch)
    main_index = next((i for i, b in enumerate(blocks)
                       if sch.get(b).same_as(sch.get(main_block))), None)
    for i, block in enumerate(blocks):
        loops = sch.get_loops(block)
        if not loops or sch.get(loops[0]).same_as(main_outer):
            continue
        if not is_spatial(sch, block) or schedule_pad(sch, block, cfg, lanes):
            continue
        after = main_index is None or i > main_index
        if after and len(loops) == 4 and (extent(sch, loops[-1]) or lanes) % lanes:
            vectorize_planes(sch, loops, cfg, work(sch, block), lanes)
        else:
            schedule_spatial(sch, block, cfg, lanes)


def vectorize_init(sch: s_tir.Schedule, init) -> None:
    """Vectorise the innermost loop of a decomposed reduction's init block (if not yet)."""
    loops = sch.get_loops(init)
    if loops and sch.get(loops[-1]).kind != tirx.ForKind.VECTORIZED:
        sch.vectorize(loops[-1])


def schedule_pad(sch: s_tir.Schedule, block, cfg, lanes: int, parallel: bool = True) -> bool:
    """Split a zero-padding block into a fill and a condition-free interior copy.

    The loops above the last two (rows, columns) are fused (and made parallel when
    `parallel` and the nest is big enough); under them `decompose_padding` writes the
    pad value and then copies the interior rows, whose column loop is vectorised when the
    lanes divide it. Returns False (nothing changed) when `block` is not a padding block.
    """
    loops = [lp for lp in sch.get_loops(block) if len(sch.get_child_blocks(lp)) == 1]
    if len(loops) < 2 or not sch.can_decompose_padding(block, loops[-2]):
        return False
    total = work(sch, block)
    if len(loops) > 2:
        outer = sch.fuse(*loops[:-2]) if len(loops) > 3 else loops[0]
        if parallel and total >= PARALLEL_MIN_WORK and cfg.num_cores > 1:
            sch.parallel(outer)
    fill = sch.decompose_padding(block, sch.get_loops(block)[-2])
    for part in (fill, block):
        inner = sch.get_loops(part)[-1]
        ext = extent(sch, inner)
        if ext and lanes > 1 and ext % lanes == 0:
            _, vec = sch.split(inner, [None, lanes])
            sch.vectorize(vec)
    return True


# -- small builders shared by the hand-written kernels (IRBuilder) ---------------------------
def ramp(base, lanes: int):
    """The `lanes` consecutive indices from `base` (a vector index)."""
    return tirx.Ramp(base, 1, lanes)


def scalar_dtype(expr) -> str:
    """Element dtype of a (vector) expression."""
    return str(expr.ty.dtype).split("x")[0]


def cast_to(expr, dtype: str, lanes: int):
    """`expr` as `dtype` (a `lanes`-wide vector when lanes > 1); unchanged when it already is."""
    if scalar_dtype(expr) == dtype:
        return expr
    return tirx.Cast(f"{dtype}x{lanes}" if lanes > 1 else dtype, expr)
