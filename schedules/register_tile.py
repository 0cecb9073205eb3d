"""The register-tiled reduction shared by the packed GEMM and the Winograd GEMM kernels.

``acc[kk, v] = sum_r W[r, kk] * X[r, v]`` for a ``kb x nv`` tile of ``L``-lane vector
accumulators (``kk < kb`` output channels, ``v < nv`` vectors of pixels or tiles):

* ``W`` is packed ``kb`` weights per reduction step (``w[w_base + r * kb + kk]``); with
  ``kb >= L`` they are loaded as one vector and used by lane (``fmla v.4s, v.4s, v.s[i]``
  on AArch64), otherwise broadcast one by one;
* ``X`` row ``r`` starts at ``x_base + r * x_stride`` and its ``nv`` vectors are adjacent;
* the first steps run before the loop, the very first writing the products (``fmul``), so
  the accumulators need no zero-fill; the rest is unrolled by `REDUCE_UNROLL` (NCNN's and
  MNN's micro-kernels unroll the same way: one weight vector and ``nv`` data vectors per
  step, ``kb * nv`` FMAs).

Mixed dtypes (fp16 storage with fp32 accumulation) widen the loaded vectors to ``dtype``.
On AArch64 (``neon=True``) a tile with one dtype and whole-vector weights is a call of the
hand-written NEON micro-kernel instead (`schedules.neon_tile`: ``ld1`` of several registers
per operand and step, which LLVM does not emit from TIR).
"""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import tirx as T

from schedules.common import cast_to as _cast
from schedules.common import ramp as _vec
from schedules.neon_tile import tile_fits, tile_kernel

REDUCE_UNROLL = 4


def neon_applies(xbuf, wbuf, tile, dtype: str, w_lanes: int) -> bool:
    """Whether `reduce_tile` with ``neon=True`` runs the NEON micro-kernel for this tile:
    by-lane weights loaded as whole vectors, one dtype for both operands and the
    accumulators, and a kernel that fits the registers (`schedules.neon_tile.tile_fits`)."""
    kb, nv, lanes = tile
    return (w_lanes > 0 and w_lanes % lanes == 0
            and str(xbuf.dtype) == str(wbuf.dtype) == str(dtype)
            and tile_fits(kb, nv, w_lanes // lanes, str(dtype), lanes))


def reduce_tile(acc, xbuf, x_base, x_stride, wbuf, w_base, red: int, tile, dtype: str,
                w_stride: int | None = None, w_lanes: int | None = None, neon: bool = False,
                acc_base=0):
    """Emit the reduction of one register tile into `acc` (``kb * nv * L`` elements).

    Parameters
    ----------
    acc : tirx.Buffer
        The accumulators, ``acc[(kk * nv + v) * L + lane]``; overwritten (no zero-fill).
    xbuf, wbuf : tirx.Buffer
        Flat data and packed-weight buffers.
    x_base, x_stride, w_base : PrimExpr or int
        Offsets of ``X[0, 0]`` and ``W[0, 0]``, and the distance between rows of ``X``.
    red : int
        Reduction length (at least 1).
    tile : tuple of int
        ``(kb, nv, L)``.
    dtype : str
        Accumulation dtype.
    w_stride : int, optional
        Distance between the reduction steps of ``W`` (default ``kb``: packed).
    w_lanes : int, optional
        Load ``W``'s step as one vector of this many lanes (at least ``kb``; may read past
        the ``kb`` used weights, within the step's `w_stride`) and use it by lane; 0
        broadcasts each weight. Default: ``kb`` lanes when ``kb >= L``, else 0.
    neon : bool
        The target is AArch64: use the hand-written micro-kernel (`schedules.neon_tile`)
        where it has one for the tile (`neon_applies`).
    acc_base : PrimExpr or int
        Offset of the tile in `acc`; non-zero only where the micro-kernel runs (TIR
        accumulators must stay a small local buffer that LLVM keeps in registers).
    """
    if red < 1:
        raise ValueError(f"a register tile needs a reduction of at least 1, not {red}")
    kb, nv, lanes = tile
    w_stride = kb if w_stride is None else w_stride
    w_lanes = (kb if kb >= lanes else 0) if w_lanes is None else w_lanes
    if w_lanes and not kb <= w_lanes <= max(w_stride, kb):
        raise ValueError(f"w_lanes {w_lanes} must cover the {kb} weights of a step and stay "
                         f"within its stride {w_stride}")
    by_lane = w_lanes > 0
    if neon and neon_applies(xbuf, wbuf, tile, dtype, w_lanes):
        _neon_tile((acc, acc_base), (xbuf, x_base, x_stride), (wbuf, w_base, w_stride), red,
                   (kb, nv, w_lanes // lanes), str(dtype))
        return
    if not isinstance(acc_base, int) or acc_base:
        raise ValueError("acc_base is for the NEON micro-kernel only")

    def _step(r, first: bool):
        wv = (_cast(wbuf[_vec(w_base + r * w_stride, w_lanes)], dtype, w_lanes)
              if by_lane else None)
        xs = [_cast(xbuf[_vec(x_base + r * x_stride + v * lanes, lanes)], dtype, lanes)
              for v in range(nv)]
        for kk in range(kb):
            if by_lane:
                wk = tirx.Shuffle([wv] * -(-lanes // w_lanes), [kk] * lanes)
            else:
                wk = tirx.Broadcast(_cast(wbuf[w_base + r * w_stride + kk], dtype, 1), lanes)
            for v in range(nv):
                slot = _vec((kk * nv + v) * lanes, lanes)
                value = wk * xs[v] if first else acc[slot] + wk * xs[v]
                T.buffer_store(acc, value, [slot])

    # straight-line head (the odd steps, or one unroll's worth), then whole unrolled steps:
    # no tail after the loop, whose accumulators LLVM would copy between registers
    head = red % REDUCE_UNROLL or min(red, REDUCE_UNROLL)
    for r in range(head):
        _step(r, first=r == 0)
    if red > head:
        with T.serial(0, (red - head) // REDUCE_UNROLL) as ro:
            for ri in range(REDUCE_UNROLL):
                _step(head + ro * REDUCE_UNROLL + ri, first=False)


def _neon_tile(acc, x, w, red: int, tile, dtype: str):
    """The reduction as a call of the inlined NEON micro-kernel (`schedules.neon_tile`)."""
    (acc, acc_base), (xbuf, x_base, x_stride), (wbuf, w_base, w_stride) = acc, x, w
    name, ir = tile_kernel(*tile, red, dtype)
    elem = {"float32": 4, "float16": 2}[dtype]

    def _bytes(stride):
        return tirx.Cast("int64", stride) * elem

    with T.attr(0, "pragma_import_llvm", ir):
        T.evaluate(T.call_extern("int32", name, T.address_of(acc[acc_base]),
                                 T.address_of(xbuf[x_base]), T.address_of(wbuf[w_base]),
                                 _bytes(x_stride), _bytes(w_stride)))
