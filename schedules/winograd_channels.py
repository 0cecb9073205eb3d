"""Winograd GEMM + output transform with output channels as the vector, for maps of few tiles.

The tile-vector kernel (`schedules.winograd_kernel`) runs its vectors over tiles: a 7 x 7
map has 4 tiles of F(4,3), half of an 8-lane fp16 vector, so it falls back to F(2,3)
(16 tiles) and does 1.8x the GEMM work. NCNN's ``pack8`` Winograd (its
``conv3x3s1_winograd43_pack8_fp16sa`` path) turns the GEMM round instead: output channels
are the vector lanes and each tile's transformed input value is a scalar used by lane.
`winograd_channels_func` does that when all tiles fit one vector (``T <= L``):

``parallel(K / kb)`` with ``kb = nv * L`` →

* for each of the ``alpha^2`` Winograd coordinates, a ``T x nv`` tile of vector
  accumulators over ``C``: ``V``'s ``T`` tiles of channel ``c`` loaded as one vector and
  used by lane (``fmla v.8h, u.8h, v.h[t]``), ``U``'s ``kb`` channels as ``nv`` vectors
  (the same ``[alpha^2, K / kb, C, kb]`` packing as the tile-vector kernel); stored to a
  scratch block ``M[alpha^2, T, kb]``;
* per tile and vector of channels: the column and row passes of ``A^T`` give the ``m x m``
  output pixels as vectors of ``L`` channels, written through the epilogue (bias, residual,
  activation, `schedules.epilogue`) lane by lane into NCHW -- ``m^2 * K`` scattered stores
  per tile, small next to the ``alpha^2 * C * K`` MACs per tile of the GEMM.

Preconditions: ``V[alpha^2, C, T_padded]`` from `schedules.wino_input` with
``T <= L <= T_padded``; compute dtype fp32 or fp16 (``U`` may be stored narrower).
"""

from __future__ import annotations

from tvm.script.ir_builder import tirx as T

from schedules.common import ramp as _vec
from schedules.register_tile import reduce_tile
from schedules.wino_math import matrices
from schedules.winograd_kernel import output_transform, winograd_frame

# Function attribute that tells this kernel from the tile-vector one in a built module.
VECTOR_AXIS_ATTR = "mdl.vector_axis"


def winograd_channels_func(func, v, u, geometry: dict, epilogue, lanes: int,
                           parallel: bool = True):
    """Build the channel-vector GEMM + output-transform PrimFunc for the fused `func`.

    Parameters
    ----------
    func : tirx.PrimFunc
        The fused function (its parameters are kept).
    v, u : Var
        ``V[alpha^2, C, T_padded]`` and ``U[alpha^2, K / kb, C, kb]`` (parameters of `func`).
    geometry : dict
        ``m``, ``tiles_hw`` (nH, nW), ``out_shape`` (N, K, OH, OW), ``dtype`` (compute).
    epilogue : schedules.epilogue.Epilogue
    lanes : int
        Vector lanes of the compute dtype; ``kb`` must be a multiple.
    parallel : bool

    Returns
    -------
    tirx.PrimFunc

    Raises
    ------
    ValueError
        More tiles than one vector holds, or ``kb`` not a multiple of `lanes`.
    """
    e_count, c, tiles_padded = (int(d) for d in v.ty.shape)
    _, chunks, _, kb = (int(d) for d in u.ty.shape)
    m, dtype = geometry["m"], geometry["dtype"]
    n_h, n_w = geometry["tiles_hw"]
    tiles = geometry["out_shape"][0] * n_h * n_w
    if not tiles <= lanes <= tiles_padded or kb % lanes:
        raise ValueError(f"channel-vector Winograd needs tiles {tiles} <= lanes {lanes} <= "
                         f"padded tiles {tiles_padded} and kb {kb} a multiple of the lanes")
    nv = kb // lanes
    at, _, _ = matrices(m, dtype)
    with winograd_frame(func, "mdl_winograd_channels", v, u,
                        {VECTOR_AXIS_ATTR: "channels"}) as (ib, vflat, uflat):
        loop = T.parallel if parallel else T.serial
        with loop(0, chunks) as kc:
            mbuf = T.alloc_buffer((e_count * tiles * kb,), dtype)
            acc = T.alloc_buffer((tiles * kb,), dtype)
            with T.serial(0, e_count) as e:
                reduce_tile(acc, uflat, (e * chunks + kc) * c * kb, kb, vflat,
                            e * c * tiles_padded, c, (tiles, nv, lanes), dtype,
                            w_stride=tiles_padded, w_lanes=lanes)
                for i in range(tiles * nv):
                    T.buffer_store(mbuf, acc[_vec(i * lanes, lanes)],
                                   [_vec(e * tiles * kb + i * lanes, lanes)])
            _output_channels(mbuf, epilogue, kc, at, geometry, (tiles, kb, lanes), dtype)
    return ib.get()


def _output_channels(mbuf, epilogue, kc, at, geometry, tile, dtype):
    """Output transform and epilogue of every tile for each vector of the chunk's channels."""
    tiles, kb, lanes = tile
    m = geometry["m"]
    alpha = m + 2
    n_h, n_w = geometry["tiles_hw"]
    _, k_out, oh, ow = geometry["out_shape"]
    cols = T.alloc_buffer((m * alpha * lanes,), dtype)
    seg = T.alloc_buffer((lanes,), dtype)
    with T.serial(0, tiles) as t:
        img, rest = t // (n_h * n_w), t % (n_h * n_w)
        y0, x0 = rest // n_w * m, rest % n_w * m
        with T.serial(0, kb // lanes) as vi:
            k0 = kc * kb + vi * lanes
            with T.If(k0 < k_out):
                with T.Then():
                    def _m(e, t=t, vi=vi):
                        return mbuf[_vec((e * tiles + t) * kb + vi * lanes, lanes)]

                    def _row(i, row, img=img, k0=k0, y0=y0, x0=x0):
                        with T.If(y0 + i < oh):
                            with T.Then():
                                for j in range(m):
                                    _pixel(epilogue, seg, row[j], (img, k0, y0 + i, x0 + j),
                                           (k_out, ow, lanes))

                    output_transform(_m, cols, at, (m, lanes), dtype, _row)


def _pixel(epilogue, seg, value, where, dims):
    """Write one output pixel's vector of channels (`value`) with the epilogue."""
    img, k0, y, x = where
    k_out, ow, lanes = dims

    def _write(loop, end):
        with loop(0, end) as kl:
            stmt = epilogue.store([img, k0 + kl, y, x], seg[kl])
            T.buffer_store(stmt.buffer, stmt.value, list(stmt.indices))

    with T.If(x < ow):
        with T.Then():
            T.buffer_store(seg, value, [_vec(0, lanes)])
            if k_out % lanes == 0:
                _write(T.vectorized, lanes)
            else:
                with T.If(k0 + lanes <= k_out):
                    with T.Then():
                        _write(T.vectorized, lanes)
                    with T.Else():
                        _write(T.serial, k_out - k0)
