"""Rule for the packed dense / matmul kernel and its fused epilogue.

Recognises
    a PrimFunc with a root block annotated ``mdl.rule = "dense"`` (made by
    `schedules.compute.dense_packed`): ``out[m, n_chunk, n_block] += x[m, k]
    * w[n_chunk, k, n_block]`` with weights packed so that one chunk is a contiguous
    ``K x n_block`` panel, followed by the unpack to ``[M, N]`` and any element-wise
    epilogue (bias add, ReLU).

Schedule
    ``parallel(n_chunk * m_outer)`` → ``k`` (unrolled by 4, 2 or 1, whichever divides it)
    → ``m_tile`` (unrolled) → ``n_block`` (vectorised): an ``m_tile x n_block`` register
    block, one broadcast of ``x`` times one weight vector per FMA, the panel streamed once.
    One row (a batch-1 GEMV, the LSTM step) on a core with indexed FMAs (AArch64) unrolls
    ``k`` by up to ``4 L`` and first copies those ``x`` values into a small array by vector
    loads, which LLVM keeps in registers and uses lane by lane (``fmla v.4s, w.4s, x.s[i]``,
    as NCNN's and MNN's GEMVs do): ``x`` costs one or two loads per ``4 L`` steps instead of
    one per step (poem step 1.21 M → 1.04 M instructions on the phone). x86 keeps the
    broadcast from memory, which its FMA takes as an operand.
    Unpack + epilogue are inlined into one block computed per tile, so bias and activation
    are applied while the tile is in registers.
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
    schedule_others,
    vectorize_init,
    work,
)

# Reduction steps unrolled together (a divisor of K): the loop's counter, compare and
# branch amortised over them (a batch-1 GEMV otherwise spends 12 instructions on 16 MACs).
_K_UNROLL = 4


class DensePacked(Rule):
    """Register-blocked matmul over packed weight panels (see module docstring)."""

    name = "dense"

    def apply(self, func: tirx.PrimFunc, cfg) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        found = annotated_block(sch, "dense")
        if found is None:
            return None
        dense, m_tile = found
        loops = sch.get_loops(dense)
        if len(loops) != 4:
            return None
        m, n_chunk, n_block, rk = loops
        rows = extent(sch, m)
        if m_tile is None or rows is None or rows % m_tile:
            m_tile = 1
        m_outer, m_inner = sch.split(m, [None, m_tile])
        depth = extent(sch, rk) or 1
        lanes = cfg.lanes(block_dtype(sch, dense))
        gemv = rows == 1 and cfg.indexed_fma  # x86 broadcasts x from memory instead
        unrolls = (4 * lanes, 2 * lanes, lanes, 2, 1) if gemv else (_K_UNROLL, 2, 1)
        k_unroll = next(u for u in unrolls if depth % u == 0)
        rk, rk_inner = sch.split(rk, [None, k_unroll])
        sch.reorder(n_chunk, m_outer, rk, rk_inner, m_inner, n_block)
        if gemv and k_unroll >= lanes:  # x as vectors, used lane by lane
            reads = sch.get(dense).reads
            index = next(i for i, r in enumerate(reads) if len(r.source.ty.shape) == 2)
            x_tile = sch.cache_read(dense, index, TILE_SCOPE)
            sch.compute_at(x_tile, rk)
            sch.vectorize(sch.get_loops(x_tile)[-1])
        total = work(sch, dense)
        outer = sch.fuse(n_chunk, m_outer)
        if not fuse_epilogue(sch, dense, outer):  # tile read inside the tile: registers
            sch.set_scope(dense, 0, TILE_SCOPE)
        if cfg.num_cores > 1 and total >= PARALLEL_MIN_WORK:
            sch.parallel(outer)
        sch.vectorize(n_block)
        sch.unroll(m_inner)
        sch.unroll(rk_inner)
        init = sch.decompose_reduction(dense, rk)
        vectorize_init(sch, init)
        schedule_others(sch, dense, cfg, lanes)
        return sch
