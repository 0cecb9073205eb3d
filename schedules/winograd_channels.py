"""Winograd GEMM + output transform with output channels as the vector.

The tile-vector kernel (`schedules.winograd_kernel`) runs its vectors over tiles: a 7 x 7
map has 4 tiles of F(4,3), half of an 8-lane fp16 vector, and a 28 x 28 map's 49 tiles
fill 13 fp32 vectors (52 tiles computed). NCNN's ``pack4`` / ``pack8`` Winograd turns the
GEMM round instead: output channels are the vector lanes and each tile's transformed input
value is a scalar used by lane. `winograd_channels_func` does that for blocks of ``P`` tiles
(the last block has the ``T mod P`` tiles left, so no tile is computed twice):

``parallel(K / kb)`` with ``kb = nv * L`` → blocks of ``P`` tiles →

* for each of the ``alpha^2`` Winograd coordinates, a ``P x nv`` tile of vector
  accumulators over ``C``: ``V``'s ``P`` tiles of channel ``c`` loaded as ``ceil(P / L)``
  vectors and used by lane (``fmla v.4s, u.4s, v.s[t]``), ``U``'s ``kb`` channels as ``nv``
  vectors (the same ``[alpha^2, K / kb, C, kb]`` packing as the tile-vector kernel); stored
  to a scratch block ``M[alpha^2, P, kb]``;
* per tile and vector of channels: the column and row passes of ``A^T`` give each output
  row of the tile as ``m`` vectors of ``L`` channels; a shuffle per channel picks its ``m``
  pixels, written through the epilogue (bias, residual, activation, `schedules.epilogue`)
  as one vector (lane-by-lane stores, with the residual gathered, cost ResNet-18's layer1
  1.6 M instructions per conv on the phone).

Preconditions: ``V[alpha^2, C, T_padded]`` from `schedules.wino_input` with ``T_padded`` at
least `tiles_padded` (the last block's vector loads stay inside); compute dtype fp32 or
fp16 (``U`` may be stored narrower).
"""

from __future__ import annotations

from tvm.script.ir_builder import tirx as T

from schedules.algo import tiles_padded
from schedules.common import ramp as _vec
from schedules.register_tile import neon_applies, reduce_tile
from schedules.wino_math import matrices
from schedules.winograd_kernel import output_transform, row_segment, winograd_frame

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
        ``m``, ``vectors`` (tiles per block, ``P``), ``tiles_hw`` (nH, nW), ``out_shape``
        (N, K, OH, OW), ``dtype`` (compute).
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
        ``T_padded`` too short for the blocks' loads, or ``kb`` not a multiple of `lanes`.
    """
    e_count, c, padded = (int(d) for d in v.ty.shape)
    _, chunks, _, kb = (int(d) for d in u.ty.shape)
    m, dtype = geometry["m"], geometry["dtype"]
    n_h, n_w = geometry["tiles_hw"]
    tiles = geometry["out_shape"][0] * n_h * n_w
    block = min(int(geometry.get("vectors", tiles)), tiles)
    if padded < tiles_padded(tiles, block, lanes) or kb % lanes:
        raise ValueError(f"channel-vector Winograd needs {tiles_padded(tiles, block, lanes)} "
                         f"padded tiles (has {padded}) and kb {kb} a multiple of the lanes")
    nv = kb // lanes
    neon = bool(geometry.get("neon"))
    at, _, _ = matrices(m, dtype)
    full, tail = divmod(tiles, block)
    with winograd_frame(func, "mdl_winograd_channels", v, u,
                        {VECTOR_AXIS_ATTR: "channels"}) as (ib, vflat, uflat):
        loop = T.parallel if parallel else T.serial
        with loop(0, chunks) as kc:
            mbuf = T.alloc_buffer((e_count * block * kb,), dtype)
            acc = T.alloc_buffer((block * kb,), dtype)

            def _block(t0, count):
                w_lanes = -(-count // lanes) * lanes
                with T.serial(0, e_count) as e:
                    args = (uflat, (e * chunks + kc) * c * kb, kb, vflat, e * c * padded + t0,
                            c, (count, nv, lanes), dtype)
                    if neon and neon_applies(uflat, vflat, (count, nv, lanes), dtype, w_lanes):
                        # the micro-kernel stores its tile straight into M
                        reduce_tile(mbuf, *args, w_stride=padded, w_lanes=w_lanes, neon=True,
                                    acc_base=e * count * kb)
                    else:
                        reduce_tile(acc, *args, w_stride=padded, w_lanes=w_lanes)
                        for i in range(count * nv):
                            T.buffer_store(mbuf, acc[_vec(i * lanes, lanes)],
                                           [_vec(e * count * kb + i * lanes, lanes)])
                _output_channels(mbuf, epilogue, kc, at, geometry, (t0, count, kb, lanes),
                                 dtype)

            if full == 1:
                _block(0, block)
            elif full:
                with T.serial(0, full) as b:
                    _block(b * block, block)
            if tail:
                _block(full * block, tail)
    return ib.get()


def _output_channels(mbuf, epilogue, kc, at, geometry, tile, dtype):
    """Output transform and epilogue of a block's tiles for each vector of the chunk's
    channels (`tile`: first tile, tiles in the block, ``kb``, lanes): each output row of a
    tile comes as ``m`` vectors of channels, written as one ``m``-pixel segment per channel."""
    t0, tiles, kb, lanes = tile
    m = geometry["m"]
    alpha = m + 2
    n_h, n_w = geometry["tiles_hw"]
    _, k_out, oh, ow = geometry["out_shape"]
    cols = T.alloc_buffer((m * alpha * lanes,), dtype)
    rows = T.alloc_buffer((m * lanes,), dtype)
    seg = T.alloc_buffer((m,), dtype)
    with T.serial(0, tiles) as t:
        img, rest = (t0 + t) // (n_h * n_w), (t0 + t) % (n_h * n_w)
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
                                for kl in range(lanes):
                                    _channel(epilogue, seg, row, kl, (img, k0, y0 + i, x0),
                                             (m, ow, lanes, k_out), n_w * m <= ow)

                    output_transform(_m, (cols, rows), at, (m, lanes), dtype, _row)


def _channel(epilogue, seg, row, kl, where, dims, full: bool):
    """Lane `kl` of the row's channel vectors: channel ``k0 + kl``'s ``m`` pixels (skipped
    past the last channel)."""
    img, k0, y, x0 = where
    m, ow, lanes, k_out = dims
    if k_out % lanes == 0:
        row_segment(epilogue, seg, row, kl, (img, k0 + kl, y, x0), (m, ow, lanes), full)
        return
    with T.If(k0 + kl < k_out):
        with T.Then():
            row_segment(epilogue, seg, row, kl, (img, k0 + kl, y, x0), (m, ow, lanes), full)
