"""Winograd batched GEMM + output transform + fused epilogue as a hand-scheduled TIR kernel.

`winograd_output_func` replaces the fused function of a Winograd convolution (the TE
reference `schedules.winograd.winograd_conv2d` plus FuseOps' element-wise blocks) by:

``parallel(K / kb)`` → blocks of ``nv * L`` tiles →

* for each of the ``alpha^2`` Winograd coordinates, a ``kb x nv`` tile of vector
  accumulators over ``C`` (``U``'s ``kb`` weights loaded as one vector and used by lane,
  ``V``'s tiles as vectors), stored to a scratch block ``M[alpha^2, kb, nv * L]``;
* per output channel and vector of tiles: the column pass of ``A^T`` (an ``alpha`` loop into
  a stack buffer) and the row pass, giving ``m`` vectors of one output row of ``L`` tiles;
  each tile's ``m`` pixels are picked by a shuffle and written with the epilogue
  (`schedules.epilogue`) as one vector -- a scalar loop for tiles cut by the image edge.
"""

from __future__ import annotations

from contextlib import contextmanager

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from schedules.common import ramp as _vec
from schedules.register_tile import neon_applies, reduce_tile
from schedules.wino_math import matrices, transform_rows

OPAQUE = 8  # Relax op pattern "opaque"


def winograd_output_func(func, v, u, geometry: dict, epilogue, lanes: int,
                         parallel: bool = True):
    """Build the GEMM + output-transform PrimFunc for the fused function `func`.

    Parameters
    ----------
    func : tirx.PrimFunc
        The fused function (its parameters are kept).
    v, u : Var
        ``V[alpha^2, C, T_padded]`` and ``U[alpha^2, K / kb, C, kb]`` (parameters of `func`).
    geometry : dict
        ``m``, ``vectors`` (nv), ``tiles_hw`` (nH, nW), ``out_shape`` (N, K, OH, OW),
        ``dtype`` (compute dtype).
    epilogue : schedules.epilogue.Epilogue
    lanes : int
    parallel : bool

    Returns
    -------
    tirx.PrimFunc
    """
    e_count, c, tiles_padded = (int(d) for d in v.ty.shape)
    _, chunks, _, kb = (int(d) for d in u.ty.shape)
    m, nv, dtype = geometry["m"], geometry["vectors"], geometry["dtype"]
    tp = nv * lanes
    at, _, _ = matrices(m, dtype)
    with winograd_frame(func, "mdl_winograd_gemm", v, u) as (ib, vflat, uflat):
        loop = T.parallel if parallel else T.serial
        with loop(0, chunks) as kc:
            mbuf = T.alloc_buffer((e_count * kb * tp,), dtype)
            with T.serial(0, tiles_padded // tp) as blk:
                t0 = blk * tp
                with T.serial(0, e_count) as e:
                    _gemm_tile(mbuf, vflat, uflat, e, kc, t0,
                               (c, tiles_padded, chunks, kb, nv, lanes), dtype,
                               bool(geometry.get("neon")))
                _output_tiles(mbuf, epilogue, kc, t0, at, geometry, (kb, nv, lanes), dtype)
    return ib.get()


@contextmanager
def winograd_frame(func, name: str, v, u, attrs: dict | None = None):
    """The PrimFunc frame of a Winograd GEMM kernel (this one and
    `schedules.winograd_channels`): `func`'s parameters, the scheduled / opaque attributes
    (plus `attrs`), the root block; yields ``(builder, V, U)`` with ``V`` and ``U`` as flat
    buffers. Call ``builder.get()`` after the ``with``."""
    e_count, c, tiles_padded = (int(d) for d in v.ty.shape)
    _, chunks, _, kb = (int(d) for d in u.ty.shape)
    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            T.func_name(name)
            for p in func.params:
                T.arg(p.name, p)
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True,
                         "mdl.schedule_rule": "winograd", "op_pattern": OPAQUE,
                         **(attrs or {})})
            with T.sblock("root"):
                vflat = T.decl_buffer((e_count * c * tiles_padded,), v.ty.dtype, data=v.data)
                uflat = T.decl_buffer((e_count * chunks * c * kb,), u.ty.dtype, data=u.data)
                yield ib, vflat, uflat


def _gemm_tile(mbuf, vflat, uflat, e, kc, t0, dims, dtype, neon: bool):
    """``mbuf[e, kk, :] = sum_c U[e, kc, c, kk] * V[e, c, t0 : t0 + tp]``."""
    c, tiles_padded, chunks, kb, nv, lanes = dims
    tp = nv * lanes
    args = (vflat, e * c * tiles_padded + t0, tiles_padded, uflat, (e * chunks + kc) * c * kb,
            c, (kb, nv, lanes), dtype)
    if neon and kb >= lanes and neon_applies(vflat, uflat, (kb, nv, lanes), dtype, kb):
        # the micro-kernel stores its tile straight into M
        reduce_tile(mbuf, *args, neon=True, acc_base=e * kb * tp)
        return
    acc = T.alloc_buffer((kb * tp,), dtype)
    reduce_tile(acc, *args)
    for i in range(kb * nv):
        T.buffer_store(mbuf, acc[_vec(i * lanes, lanes)],
                       [_vec(e * kb * tp + i * lanes, lanes)])


def _output_tiles(mbuf, epilogue, kc, t0, at, geometry, tile, dtype):
    """Output transform and epilogue of one block of tiles for each of its channels."""
    kb, nv, lanes = tile
    m = geometry["m"]
    alpha = m + 2
    tp = nv * lanes
    n_h, n_w = geometry["tiles_hw"]
    _, k_out, oh, ow = geometry["out_shape"]
    tiles = geometry["out_shape"][0] * n_h * n_w
    cols = T.alloc_buffer((m * alpha * lanes,), dtype)
    rows = T.alloc_buffer((m * lanes,), dtype)
    seg = T.alloc_buffer((m,), dtype)
    with T.serial(0, kb) as kk:
        k = kc * kb + kk
        with T.If(k < k_out):
            with T.Then():
                with T.serial(0, nv) as vi:
                    def _m(e, kk=kk, vi=vi):
                        return mbuf[_vec(e * kb * tp + kk * tp + vi * lanes, lanes)]

                    def _row(i, row, k=k, vi=vi):
                        for lane in range(lanes):
                            t = t0 + vi * lanes + lane
                            _tile_row(epilogue, seg, row, lane, t, i, k,
                                      (tiles, n_h, n_w, m, oh, ow, lanes))

                    output_transform(_m, (cols, rows), at, (m, lanes), dtype, _row)


def output_transform(read, scratch, at, dims, dtype, emit_row):
    """``A^T M A`` of one vector of Winograd-domain values, as two passes.

    ``read(e)`` is the vector at Winograd coordinate ``e < alpha^2``; the column pass writes
    the first buffer of `scratch` (``m * alpha * L`` elements), then a serial loop over
    output rows ``i`` stores the ``m`` vectors of row ``i`` (one per output column) in the
    second (``m * L``) and calls ``emit_row(i, row)`` with them loaded back: stored once, so
    the callers' per-tile or per-channel shuffles of `row` do not each recompute the row
    pass (an expression would be recomputed in every branch that uses it)."""
    cols, rows = scratch
    m, lanes = dims
    alpha = m + 2
    with T.serial(0, alpha) as e2:
        col = transform_rows(at, [read(e1 * alpha + e2) for e1 in range(alpha)], dtype)
        for i in range(m):
            T.buffer_store(cols, col[i], [_vec((i * alpha + e2) * lanes, lanes)])
    with T.serial(0, m) as i:
        row = transform_rows(
            at, [cols[_vec((i * alpha + e2) * lanes, lanes)] for e2 in range(alpha)], dtype)
        for j in range(m):
            T.buffer_store(rows, row[j], [_vec(j * lanes, lanes)])
        emit_row(i, [rows[_vec(j * lanes, lanes)] for j in range(m)])


def _tile_row(epilogue, seg, row, lane, t, i, k, dims):
    """Write row `i` of tile `t` (lane `lane` of the ``m`` row vectors) with the epilogue."""
    tiles, n_h, n_w, m, oh, ow, lanes = dims
    img, rest = t // (n_h * n_w), t % (n_h * n_w)
    th, tw = rest // n_w, rest % n_w
    y, x0 = th * m + i, tw * m
    with T.If(tirx.all(t < tiles, y < oh)):
        with T.Then():
            row_segment(epilogue, seg, row, lane, (img, k, y, x0), (m, ow, lanes),
                        n_w * m <= ow)


def row_segment(epilogue, seg, row, lane, where, dims, full: bool):
    """Write lane `lane` of the ``m`` vectors `row` as the ``m`` pixels of output row
    ``where = (img, k, y, x0)`` onwards, through the epilogue: one vector store, or a scalar
    loop where the segment passes the image's right edge (`full`: it never does)."""
    img, k, y, x0 = where
    m, ow, lanes = dims
    T.buffer_store(seg, tirx.Shuffle(row, [j * lanes + lane for j in range(m)]), [_vec(0, m)])

    def _write(loop, end):
        with loop(0, end) as j:
            stmt = epilogue.store([img, k, y, x0 + j], seg[j])
            T.buffer_store(stmt.buffer, stmt.value, list(stmt.indices))

    if full:
        _write(T.vectorized, m)
    else:
        with T.If(x0 + m <= ow):
            with T.Then():
                _write(T.vectorized, m)
            with T.Else():
                _write(T.serial, ow - x0)
