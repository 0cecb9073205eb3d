"""The GEMM convolution's register tile with output channels as the vector.

The packed GEMM kernel (`schedules.gemm_kernel`) runs its vectors over output pixels: a
7 x 7 map's 49 pixels fill 12 fp32 vectors and a tail, a 14 x 14 map's 196 pixels a 12-pixel
block 16 times and a 4-pixel tail, and each tail block does few FMAs per load. NCNN's
``pack4`` im2col GEMM turns the tile round: output channels are the vector lanes (``kb =
nv * L`` of them) and each pixel's im2col value is a scalar used by lane
(``fmla v.4s, w.4s, x.s[p]``). `channel_block` emits one ``P x nv`` tile of that kind:
per reduction step the ``nv`` weight vectors of the chunk (the same ``[K / kb, R, kb]``
packing) and the ``P`` pixels of the im2col row as ``ceil(P / L)`` vectors used by lane --
or, on cores without indexed FMAs (x86), each pixel broadcast from memory (AVX-512's
``vfmadd231ps zmm, zmm, [mem]{1to16}``: MLAS's SGEMM kernel has the same shape).
The block may hold any number of pixels, so a segment is cut into whole blocks and one
block of the pixels left, none computed twice.

The epilogue (bias, residual, activation; `schedules.epilogue`) is applied to each
accumulator vector, which holds ``L`` channels of one pixel: stored lane by lane into the
NCHW output (a scatter of ``L`` scalars, the residual gathered the same way), about two
instructions per output on the phone, against the thousands of MACs behind each.

Preconditions: ``kb`` a multiple of the lanes and of no more than the output channels'
count (no partial chunk: the caller checks ``K % kb == 0``), one group; the im2col row's
``ceil(P / L) * L`` elements from the block's first pixel lie inside its buffer row.
"""

from __future__ import annotations

from tvm.script.ir_builder import tirx as T

from schedules.config import ceil_div
from schedules.register_tile import reduce_tile


def check_channel_tile(kb: int, lanes: int, k_out: int, groups: int, seg: int,
                       pixels: int) -> None:
    """Raise ValueError unless a ``pixels x (kb / lanes)`` channel tile fits the conv."""
    if kb % lanes or k_out % kb or groups != 1:
        raise ValueError(f"channel-vector GEMM needs kb ({kb}) a multiple of the {lanes} "
                         f"lanes dividing the {k_out} outputs and one group (not {groups})")
    if not 1 <= pixels <= seg:
        raise ValueError(f"channel-vector GEMM: {pixels} pixels per block do not fit a "
                         f"segment of {seg}")


def channel_block(epilogue, acc_dtype: str, operands, where, tile) -> None:
    """One register tile: pixels ``q0 ..`` of a segment, every channel of chunk ``kc``.

    Parameters
    ----------
    epilogue : schedules.epilogue.Epilogue
    acc_dtype : str
    operands : tuple
        ``(wflat, red, (buf, base, rstride), neon, by_lane)``: the packed weights, the
        reduction length, the im2col buffer with its offset of pixel 0 and row stride,
        whether the NEON micro-kernels apply (`schedules.register_tile.reduce_tile`) and
        whether the core has indexed FMAs (pixels loaded as vectors and used by lane;
        else broadcast one by one).
    where : tuple
        ``(kc, img, p0, q0)``: the chunk, the image, the segment's first output pixel and
        the block's first pixel in the segment.
    tile : tuple of int
        ``(pixels, kb, lanes, ow)``.
    """
    wflat, red, (buf, base, rstride), neon, by_lane = operands
    kc, img, p0, q0 = where
    pixels, kb, lanes, ow = tile
    nv = kb // lanes
    acc = T.alloc_buffer((pixels * kb,), acc_dtype)
    reduce_tile(acc, wflat, kc * red * kb, kb, buf, base + q0, red, (pixels, nv, lanes),
                acc_dtype, w_stride=rstride,
                w_lanes=ceil_div(pixels, lanes) * lanes if by_lane else 0, neon=neon)
    for p in range(pixels):
        pix = p0 + q0 + p
        for v in range(nv):
            with T.vectorized(0, lanes) as lane:
                stmt = epilogue.store([img, kc * kb + v * lanes + lane, pix // ow, pix % ow],
                                      acc[(p * nv + v) * lanes + lane])
                T.buffer_store(stmt.buffer, stmt.value, list(stmt.indices))
