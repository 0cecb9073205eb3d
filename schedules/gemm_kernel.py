"""The packed GEMM convolution as a hand-scheduled TIR kernel with a fused epilogue.

An NCHW convolution is ``Y[k, p] = sum_r W[k, r] * X[r, p]`` over output pixels
``p = y * OW + x`` and ``r = (c, ky, kx)``; with groups, ``r`` runs over output channel
``k``'s group's rows of ``X`` only (a register tile's ``kb`` channels lie in one group).
`gemm_conv_func` builds it as:

``parallel(n, segment, k_group)`` (a group: ``1 / k_groups`` of the output-channel chunks):
a segment is ``rows`` output rows (``S = rows * OW`` pixels; the
last segment is shifted up to end at the last row, recomputing a few rows). Unless the
convolution is 1 x 1, stride 1, unpadded (then ``X`` is the input itself), the segment's
``X[R, S]`` is copied once (im2col: each input row segment as vectors, stride 2 by
de-interleaving shuffles, zeros where the window leaves the image) -- by each segment's
task, or, when tasks split a segment's output channels (``k_groups > 1``, small maps),
once per segment by a loop parallel over input channels before the groups' parallel loop.
A grouped convolution's tasks are (segment, channel group) pairs instead, each copying only
its group's rows (NCNN's per-group im2col: a small, cache-resident copy) before its chunks;
read in place (1 x 1), a tile starts at its group's first row. With stride 1, rows as wide
as the input's and narrower than two vectors (7 x 7, 14 x 14 maps), on cores with indexed
FMAs (AArch64), each tap's rows are one contiguous run, copied as whole vectors.

``k_chunks`` → pixel blocks of ``nv * L`` (the last one shifted left to end at the
segment's end) → ``R``: a ``kb x nv`` tile of vector accumulators
(`schedules.register_tile`: per step ``nv`` pixel vectors and one ``kb``-wide weight vector
whose lanes feed the FMAs, ``fmla v.4s, v.4s, v.s[i]``). Then the fused epilogue
(`schedules.epilogue`) writes each accumulator vector to the output with bias, residual
and activation applied; shifted blocks write some pixels twice with the same values.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from schedules.common import cast_to as _cast
from schedules.common import ramp as _vec
from schedules.config import ceil_div, reads_in_place
from schedules.gemm_channels import channel_block, check_channel_tile
from schedules.register_tile import reduce_tile
from schedules.segments import tail_tile

OPAQUE = 8  # Relax op pattern "opaque"


def _flat(var, size: int, dtype: str):
    """A 1-D view of parameter buffer `var`."""
    return T.decl_buffer((size,), dtype, data=var.data)


def gemm_conv_func(func, data, weight, geometry: dict, epilogue, lanes: int,
                   parallel: bool = True):
    """Build the GEMM convolution PrimFunc for the fused function `func`.

    Parameters
    ----------
    func : tirx.PrimFunc
        The fused function (its parameters are kept).
    data, weight : Var
        The input ``[N, C, H, W]`` and the packed weights ``[K / kb, C, KH, KW, kb]``
        (parameters of `func`).
    geometry : dict
        ``strides``, ``padding`` (top, left, bottom, right), ``dilation``, ``out_shape``
        (N, K, OH, OW), ``vectors`` (nv), ``rows`` (output rows per segment), ``dtype``
        (accumulation dtype), ``k_groups`` (parallel tasks per segment, a divisor of the
        output-channel chunks; default 1), ``by_lane`` (the core has indexed FMAs: a
        ``kb`` smaller than the lanes is still loaded as one vector and used by lane),
        ``groups`` (channel groups, default 1; ``kb`` divides a group's outputs).
    epilogue : schedules.epilogue.Epilogue
    lanes : int
    parallel : bool

    Returns
    -------
    tirx.PrimFunc
    """
    n, c, h, w = (int(v) for v in data.ty.shape)
    chunks, cg, kh, kw, kb = (int(v) for v in weight.ty.shape)
    sh, sw = geometry["strides"]
    _, k_out, oh, ow = geometry["out_shape"]
    nv, rows, dtype = geometry["vectors"], geometry["rows"], geometry["dtype"]
    groups = geometry.get("groups", 1)  # checked against the shapes by `conv2d_gemm`
    rows_all, red = c * kh * kw, cg * kh * kw  # im2col rows; one output's reduction
    # output-channel chunks per group (1 chunk of every output when groups = 1)
    group_chunks = k_out // groups // kb if groups > 1 else chunks
    seg = rows * ow
    # channel vectors (`schedules.gemm_channels`): `vectors` is the block's pixel count
    by_channels = bool(geometry.get("by_channels"))
    tp = nv if by_channels else nv * lanes
    if by_channels:
        check_channel_tile(kb, lanes, k_out, groups, seg, tp)
    elif seg < tp:
        raise ValueError(f"segment of {seg} pixels is shorter than the {tp}-pixel block")
    by_lane = bool(geometry.get("by_lane"))  # the core has indexed FMAs
    # never in place by channel vectors (their by-lane loads may pass the input's end)
    direct = not by_channels and reads_in_place(
        (kh, kw), (sh, sw), any(geometry["padding"]), h * w, lanes, by_lane)
    n_seg, n_blk = ceil_div(oh, rows), ceil_div(seg, tp)
    k_groups = geometry.get("k_groups", 1)
    if chunks % k_groups:
        raise ValueError(f"k_groups={k_groups} does not divide the {chunks} "
                         "output-channel chunks")
    per_group = chunks // k_groups
    if groups > 1 and k_groups > 1 and not direct:
        raise ValueError("a grouped im2col convolution's tasks are its channel groups: "
                         f"k_groups must be 1, not {k_groups}")
    # fewer weights per step than lanes: one short vector used by lane (indexed FMAs)
    half_block = kb if kb < lanes and by_lane else None
    neon = bool(geometry.get("neon"))  # AArch64 code: NEON micro-kernels (`neon_tile`)

    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            T.func_name("mdl_gemm_conv")
            for p in func.params:
                T.arg(p.name, p)
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True,
                         "mdl.schedule_rule": "gemm_conv", "op_pattern": OPAQUE})
            with T.sblock("root"):
                wflat = _flat(weight, chunks * red * kb, weight.ty.dtype)
                dflat = _flat(data, n * c * h * w, data.ty.dtype)
                loop = T.parallel if parallel else T.serial
                # rows of the im2col copy a whole number of vectors apart: every load of
                # the tile is at an offset `ldp q` / `ldr q` can encode
                # (channel vectors: one vector more, for a block's loads past its end)
                stride = ceil_div(seg, lanes) * lanes + (lanes if by_channels else 0)

                tail = (seg % tp or None) if by_channels else tail_tile(seg, nv, lanes)
                full = seg // tp if tail else n_blk
                # the weights' load width of a full block, kept by the narrower tail block
                # (reduce_tile's default would follow the tail's lanes)
                w_lanes = half_block if half_block is not None else (kb if kb >= lanes else 0)
                # one chunk wider than the output channels (an RGB output layer): only the
                # used channels are reduced (the TIR tile's unused FMAs were dead code)
                k_used = min(kb, k_out) if chunks == 1 else kb

                def _block(kc, img, y0, src, q0, tile):
                    """One register tile: pixels ``q0 + ...`` of the segment (`src`: the
                    buffer, its offset of pixel 0 and its row stride)."""
                    buf, base, rstride = src
                    acc = T.alloc_buffer((kb * tile[0] * tile[1],), dtype)
                    # read in place: the tile's group starts `red` rows further per group
                    x0 = base + q0 + (kc // group_chunks * red * rstride
                                      if groups > 1 and direct else 0)
                    reduce_tile(acc, buf, x0, rstride, wflat, kc * red * kb, red,
                                (k_used, *tile), dtype, w_stride=kb, w_lanes=w_lanes,
                                neon=neon)
                    _store(epilogue, acc, img, kc * kb, y0 * ow + q0, (kb, *tile),
                           (k_out, ow), kb * chunks != k_out)

                def _gemm(chunk0, count, img, y0, src, src_base, stride):
                    """Output-channel chunks ``chunk0 ..`` (`count` of them)."""
                    with T.serial(0, count) as kc_inner:
                        kc = chunk0 + kc_inner
                        if by_channels:  # whole blocks, then one of the pixels left
                            operands = (wflat, red, (src, src_base, stride), neon, by_lane)
                            with T.serial(0, full) as blk:
                                channel_block(epilogue, dtype, operands,
                                              (kc, img, y0 * ow, blk * tp), (tp, kb, lanes, ow))
                            if tail:
                                channel_block(epilogue, dtype, operands,
                                              (kc, img, y0 * ow, seg - tail),
                                              (tail, kb, lanes, ow))
                            return
                        with T.serial(0, full) as blk:
                            q0 = blk * tp if tail else T.bind(tirx.min(blk * tp, seg - tp))
                            _block(kc, img, y0, (src, src_base, stride), q0, (nv, lanes))
                        if tail:  # the pixels left, in fewer or narrower vectors
                            _block(kc, img, y0, (src, src_base, stride),
                                   seg - tail[0] * tail[1], tail)

                def _segment(where):
                    return where // n_seg, T.bind(tirx.min(where % n_seg * rows, oh - rows))

                if groups > 1 and not direct:
                    # one task per (segment, group), with its own im2col copy of the
                    # group's input channels only (a cache-sized buffer), then its chunks
                    with loop(0, n * n_seg * groups) as task:
                        img, y0 = _segment(task // groups)
                        grp = task % groups
                        src = T.alloc_buffer((red * stride,), dtype)
                        _im2col(src, stride, dflat, img, y0, geometry, (n, c, h, w),
                                (kh, kw), lanes, dtype, channels=(grp * cg, cg))
                        _gemm(grp * group_chunks, group_chunks, img, y0, src, 0, stride)
                elif k_groups > 1 and not direct:
                    # tasks split by output-channel chunks share one im2col copy of the
                    # segment, made first by a loop parallel over input channels
                    with T.serial(0, n * n_seg) as where:
                        img, y0 = _segment(where)
                        src = T.alloc_buffer((rows_all * stride,), dtype)
                        _im2col(src, stride, dflat, img, y0, geometry, (n, c, h, w),
                                (kh, kw), lanes, dtype, loop)
                        with loop(0, k_groups) as task:
                            _gemm(task * per_group, per_group, img, y0, src, 0, stride)
                else:
                    with loop(0, n * n_seg * k_groups) as task:
                        img, y0 = _segment(task // k_groups)
                        first = task % k_groups * per_group
                        if direct:
                            _gemm(first, per_group, img, y0, dflat,
                                  T.bind(img * c * h * w + y0 * ow), h * w)
                        else:  # one task per segment, with its own im2col copy
                            src = T.alloc_buffer((rows_all * stride,), dtype)
                            _im2col(src, stride, dflat, img, y0, geometry, (n, c, h, w),
                                    (kh, kw), lanes, dtype)
                            _gemm(first, per_group, img, y0, src, 0, stride)
    return ib.get()


def _store(epilogue, acc, img, k0, p0, tile, out_hw, guard: bool):
    """The epilogue of one tile: vectors of pixels ``p0 + v * L`` of channels ``k0 + kk``."""
    kb, nv, lanes = tile
    k_out, ow = out_hw
    for kk in range(kb):
        k = k0 + kk

        def _body(k=k, kk=kk):
            for v in range(nv):
                with T.vectorized(0, lanes) as lane:
                    p = p0 + v * lanes + lane
                    stmt = epilogue.store([img, k, p // ow, p % ow],
                                          acc[(kk * nv + v) * lanes + lane])
                    T.buffer_store(stmt.buffer, stmt.value, list(stmt.indices))

        if guard:
            with T.If(k < k_out):
                with T.Then():
                    _body()
        else:
            _body()


def _im2col(col, col_stride, dflat, img, y0, geometry, shape, kernel, lanes, dtype,
            loop=T.serial, channels=None):
    """``col[(c, ky, kx) * col_stride + j * OW + x] = data[img, c0 + c, (y0 + j) * sh + ky
    * dh - top, x * sw + kx * dw - left]`` (zero outside the image), row by row, for the
    ``channels = (c0, count)`` (default: all); `loop` runs over them."""
    n, c, h, w = shape
    c0, count = channels or (0, c)
    kh, kw = kernel
    (sh, sw), (dh, dw) = geometry["strides"], geometry["dilation"]
    top, left = geometry["padding"][:2]
    ow, rows = geometry["out_shape"][3], geometry["rows"]
    zero = tirx.const(0, dtype)
    # stride 1 with rows as wide as the input's: a tap's rows are one contiguous run, copied
    # so where a row holds less than two vectors (the row copy would be mostly scalar;
    # on wider rows it costs more than the row copy: style transfer fp16 +3 %), on cores
    # with indexed FMAs (measured there; on the AVX-512 host it slowed the demo by 20 %)
    planar = (geometry.get("by_lane") and sh == sw == 1 and w == ow and rows * ow >= lanes
              and ow < 2 * lanes)
    with loop(0, count) as local:
        ch = c0 + local
        for ky in range(kh):
            for kx in range(kw):
                r = (local * kh + ky) * kw + kx
                off = kx * dw - left
                if planar and abs(off) < w:
                    _copy_plane(col, dflat, r * col_stride, (img * c + ch) * h * w,
                                y0 + ky * dh - top, off, (rows, ow, h), lanes, dtype)
                    continue
                lo = min(ow, max(0, ceil_div(-off, sw)))
                hi = max(lo, min(ow, (w - 1 - off) // sw + 1))
                # whole vectors whose loads (sw * lanes wide) stay inside the row
                nvec = 0
                while (lo + (nvec + 1) * lanes <= hi
                       and (lo + nvec * lanes) * sw + off + sw * lanes <= w):
                    nvec += 1
                with T.serial(0, rows) as j:
                    iy = (y0 + j) * sh + ky * dh - top
                    dst = r * col_stride + j * ow
                    row = T.bind(((img * c + ch) * h + tirx.max(tirx.min(iy, h - 1), 0)) * w)
                    with T.If(tirx.all(iy >= 0, iy < h)):
                        with T.Then():
                            _copy_row(col, dflat, dst, row, off, (lo, hi, nvec), sw, ow,
                                      lanes, dtype)
                        with T.Else():
                            with T.serial(0, ow) as x:
                                T.buffer_store(col, zero, [dst + x])


def _copy_plane(col, dflat, dst, plane, iy0, off, geometry, lanes, dtype):
    """One tap of a stride-1 im2col whose rows are as wide as the input's (``W == OW``):
    ``col[dst + j * OW + x] = data[plane + (iy0 + j) * W + x + off]`` for the rows inside
    the image is a single contiguous run, copied as whole vectors (the last one shifted
    back over the run's end) however narrow a row is; then the ``|off|`` columns per row
    the shift carried over from a neighbouring row, and the rows outside, are zeroed."""
    rows, ow, h = geometry
    zero = tirx.const(0, dtype)
    j_lo = T.bind(tirx.max(0, tirx.min(rows, -iy0)))
    j_hi = T.bind(tirx.max(j_lo, tirx.min(rows, h - iy0)))
    for a, b in ((0, j_lo), (j_hi, rows)):
        with T.serial(a * ow, b * ow) as x:
            T.buffer_store(col, zero, [dst + x])
    # the run, clipped to the image's rows j_lo..j_hi (no read outside them)
    skip = max(0, -off)
    size = T.bind((j_hi - j_lo) * ow - abs(off))
    d0 = T.bind(dst + j_lo * ow + skip)
    s0 = T.bind(plane + (iy0 + j_lo) * ow + off + skip)

    def _vector(at):
        T.buffer_store(col, _cast(dflat[_vec(s0 + at, lanes)], dtype, lanes),
                       [_vec(d0 + at, lanes)])

    with T.If(size >= lanes):
        with T.Then():
            with T.serial(0, size // lanes) as v:
                _vector(v * lanes)
            with T.If(size % lanes > 0):
                with T.Then():
                    _vector(size - lanes)
        with T.Else():
            with T.serial(0, tirx.max(size, 0)) as x:
                T.buffer_store(col, _cast(dflat[s0 + x], dtype, 1), [d0 + x])
    # columns whose source fell in the previous (off < 0) or next (off > 0) row
    edge = range(skip) if off < 0 else range(ow - off, ow)
    if off:
        with T.serial(j_lo, j_hi) as j:
            for x in edge:
                T.buffer_store(col, zero, [dst + j * ow + x])


def _copy_row(col, dflat, dst, row, off, span, sw, ow, lanes, dtype):
    lo, hi, nvec = span
    zero = tirx.const(0, dtype)
    for a, b in ((0, lo), (hi, ow)):
        if b > a:
            with T.serial(a, b) as x:
                T.buffer_store(col, zero, [dst + x])
    if nvec:
        with T.serial(0, nvec) as v:
            x0 = lo + v * lanes
            src = row + x0 * sw + off
            if sw == 1:
                val = dflat[_vec(src, lanes)]
            else:
                loads = [dflat[_vec(src + i * lanes, lanes)] for i in range(sw)]
                val = tirx.Shuffle(loads, [i * sw for i in range(lanes)])
            T.buffer_store(col, _cast(val, dtype, lanes), [_vec(dst + x0, lanes)])
    if lo + nvec * lanes < hi:
        if nvec and sw == 1:
            # the tail as the row's last whole vector, shifted back over the vectors before
            # it (inside the row: hi + off <= W): one store instead of a scalar loop
            T.buffer_store(col, _cast(dflat[_vec(row + hi - lanes + off, lanes)], dtype, lanes),
                           [_vec(dst + hi - lanes, lanes)])
        else:
            with T.serial(lo + nvec * lanes, hi) as x:
                T.buffer_store(col, _cast(dflat[row + x * sw + off], dtype, 1), [dst + x])
