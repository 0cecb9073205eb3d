"""The Winograd input transform as a hand-scheduled TIR kernel: ``V = B^T d B`` per tile.

`input_transform_func` returns a PrimFunc (already scheduled, ``tirx.is_scheduled``; the
rule `schedules.wino_input_rule.WinogradInput` puts it in place of the TE reference) that
reads the NCHW input and writes ``V[alpha * alpha, C, T_padded]``: for every Winograd
coordinate and input channel, the transformed tiles one after another (tile
``t = (n * nH + th) * nW + tw``), the layout the batched GEMM streams as vectors of tiles.
Columns past the last tile (up to the GEMM's tile block) hold zeros or copies of the last
tile: the GEMM computes them and the output transform never reads them.

The channels are split into ranges (`tasks`, the parallel loop); each range allocates its
zero-bordered padded plane (``nH * m + 2`` rows) and a scratch block once -- an allocation is
a runtime call, and the border stays zero since every channel writes the same interior --
then per channel copies the image in (vector stores) and transforms its vectors of ``L``
tiles in two 1-D passes, in groups of `_GROUP` vectors: the row pass of the group into the
scratch, then its column pass. Two loops whose bodies LLVM does not unroll: one loop doing
both passes of a vector became one straight-line block that kept the ``alpha^2``
intermediate vectors live and spilled (F(4,3) on AArch64: 480 instructions per vector of
tiles, now 162 + 213; ResNet-18's input transforms 12.3 -> 9.9 M instructions, its runtime
row 1.1 -> 0.4 M). The vectors of tiles are:

* rows of tiles at least ``L`` wide: ``L`` neighbouring tiles of one tile row, read as
  contiguous vectors and de-interleaved by shuffles (stride ``m``; ``ld4`` / ``uzp`` /
  ``ext`` on NEON); the last vector of a row is shifted left to end at the row's end
  (it recomputes, and rewrites with the same values, a few tiles);
* narrower maps: any ``L`` consecutive tiles, each read as ``alpha``-wide rows from its
  own address and transposed in registers (``trn`` / ``zip``).

The transform's arithmetic is `schedules.wino_math.transform_rows` (shared even / odd
parts, +-1 as adds).
"""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from schedules.config import ceil_div
from schedules.wino_math import matrices, transform_rows

# Relax op pattern kind "opaque": FuseOps fuses nothing into a hand-scheduled kernel (its
# loops are not blocks FuseTIR could merge).
OPAQUE = 8
# Tile sizes whose stride-m de-interleave is one structured load (ld2 / ld4 on AArch64).
_LDN = (2, 4)
# Vectors of tiles per row pass / column pass (scratch: 8 x 36 vectors, 4.5 KiB in fp32
# F(4, 3)).
_GROUP = 8


def _transpose(rows: list, lanes: int, bind=lambda v: v) -> list:
    """`lanes` vectors of `lanes` lanes -> their transpose (lane l of output q is
    ``rows[l][q]``), as the butterfly of ``trn1/trn2`` and ``zip`` shuffles; `bind` is applied
    to the inputs and to every level's vectors."""
    width = 1
    cur = [bind(v) for v in rows]
    while width < lanes:
        nxt = list(cur)
        for start in range(0, lanes, 2 * width):
            for off in range(width):
                a, b = cur[start + off], cur[start + off + width]
                lo, hi = [], []
                for block in range(0, lanes, 2 * width):
                    lo += [block + i for i in range(width)] + \
                          [lanes + block + i for i in range(width)]
                    hi += [block + width + i for i in range(width)] + \
                          [lanes + block + width + i for i in range(width)]
                nxt[start + off] = tirx.Shuffle([a, b], lo)
                nxt[start + off + width] = tirx.Shuffle([a, b], hi)
        cur = [bind(v) for v in nxt]
        width *= 2
    return cur


def input_transform_func(data_shape, data_dtype: str, padding, m: int, dtype: str,
                         lanes: int, tiles_padded: int, parallel: bool = True,
                         tasks: int | None = None):
    """Build the input-transform PrimFunc (see the module docstring).

    Parameters
    ----------
    data_shape : tuple of int
        NCHW input shape.
    data_dtype : str
        Input dtype (cast to `dtype` while padding).
    padding : tuple of int
        ``(top, left, bottom, right)`` of the 3 x 3 convolution.
    m : int
        Output tile size (``alpha = m + 2``).
    dtype : str
        Compute dtype of the transform and of ``V``.
    lanes : int
        Vector lanes of `dtype` (a power of two).
    tiles_padded : int
        Tile count ``V`` is padded to (a multiple of `lanes`).
    parallel : bool
        Make the channel loop parallel.
    tasks : int, optional
        Channel ranges the loop is split into (each allocates its scratch once: an
        allocation is a runtime call); default one per channel.

    Returns
    -------
    tirx.PrimFunc
    """
    n, c, h, w = (int(v) for v in data_shape)
    top, left, bottom, right = padding
    alpha = m + 2
    oh, ow = h + top + bottom - 2, w + left + right - 2
    n_h, n_w = ceil_div(oh, m), ceil_div(ow, m)
    tiles = n * n_h * n_w
    if tiles_padded % lanes or tiles_padded < tiles:
        raise ValueError(f"tiles_padded {tiles_padded} must be a multiple of {lanes} "
                         f">= {tiles}")
    rows_p = n_h * m + 2
    cols_p = ceil_div(n_w * m + 2 + lanes, lanes) * lanes
    plane = rows_p * cols_p
    _, _, bt = matrices(m, dtype)
    by_rows = n_w >= lanes
    zero = tirx.const(0, dtype)

    def _vec(base):
        return tirx.Ramp(base, 1, lanes)

    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            T.func_name("mdl_winograd_input")
            data = T.arg("data", T.Buffer((n, c, h, w), data_dtype))
            out = T.arg("V", T.Buffer((alpha * alpha, c, tiles_padded), dtype))
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True,
                         "mdl.schedule_rule": "winograd_input", "op_pattern": OPAQUE})
            with T.sblock("root"):
                count = n * n_h * ceil_div(n_w, lanes) if by_rows else tiles_padded // lanes

                def _one_channel(ci, pad, rows):
                    _pad_planes(data, pad, ci, n, h, w, top, left, plane, cols_p, lanes, dtype)
                    if by_rows:
                        span = ceil_div(lanes * m + 2, lanes)
                        n_tv = ceil_div(n_w, lanes)

                        def _tw0(i):  # a row's last vector shifted back to end at its end
                            return tirx.min(i % n_tv * lanes, n_w - lanes)

                        def _reader(i):
                            tw0 = T.bind(_tw0(i))
                            img, th = i // n_tv // n_h, i // n_tv % n_h
                            base = T.bind(img * plane + th * (m * cols_p) + tw0 * m)

                            def _read_row(r):
                                start = base + r * cols_p
                                if m in _LDN:
                                    return _deinterleave(pad, start, m, lanes)
                                vecs = [pad[_vec(start + k * lanes)] for k in range(span)]
                                return [tirx.Shuffle(vecs, [q + m * lane for lane in range(lanes)])
                                        for q in range(alpha)]
                            return _read_row

                        def _first_tile(i):
                            return i // n_tv * n_w + _tw0(i)

                        _two_passes(out, ci, count, _reader, _first_tile, rows, bt, lanes,
                                    dtype)
                    else:
                        per_row = ceil_div(alpha, lanes)

                        def _reader(i):
                            bases = []
                            for lane in range(lanes):
                                t = tirx.min(i * lanes + lane, tiles - 1)
                                img, rest = t // (n_h * n_w), t % (n_h * n_w)
                                bases.append(T.bind(img * plane + (rest // n_w) * (m * cols_p)
                                                    + (rest % n_w) * m))

                            def _read_cols(r):
                                cols = []
                                for k in range(per_row):
                                    # every vector bound once (a let): the butterfly and
                                    # B^T read each several times, and TVM's passes walk
                                    # a shared tree once per use (seconds per function)
                                    cols += _transpose(
                                        [pad[_vec(b + r * cols_p + k * lanes)] for b in bases],
                                        lanes, T.bind)
                                return cols[:alpha]
                            return _read_cols

                        _two_passes(out, ci, count, _reader, lambda i: i * lanes,
                                    rows, bt, lanes, dtype)
                    if by_rows and tiles_padded > tiles:
                        with T.serial(tiles, tiles_padded) as t:
                            with T.serial(0, alpha * alpha) as e:
                                T.buffer_store(out, zero, [e, ci, t])

                loop = T.parallel if parallel else T.serial
                per = ceil_div(c, max(1, min(tasks or c, c)))
                with loop(0, ceil_div(c, per)) as task:
                    # per task, so per thread: the padded planes and the passes' scratch
                    pad = T.alloc_buffer((n * plane,), dtype)
                    _zero_planes(pad, n * plane, lanes, dtype)
                    rows = T.alloc_buffer((min(count, _GROUP) * alpha * alpha * lanes,), dtype)
                    _channels(c, per, task, lambda ci: _one_channel(ci, pad, rows))

    return ib.get()


def _channels(c: int, per: int, task, body):
    """Run ``body(ci)`` for channels ``task * per ..`` (at most `per`, none past `c`)."""
    extent = per if c % per == 0 else tirx.min(per, c - task * per)
    with T.serial(0, extent) as i:
        body(task * per + i)


def _two_passes(out, ci, count: int, reader, first_tile, rows, bt, lanes: int, dtype: str):
    """``out[:, ci, t : t + L] = B^T d B`` for `count` vectors of tiles, in groups of
    `_GROUP`: the row pass over a group into the scratch block `rows`, then the column pass
    over it.

    ``reader(i)`` binds what vector ``i`` needs and returns ``read_row(r)``, the ``alpha``
    vectors of input row ``r``; ``first_tile(i)`` is its first tile. Two loops per group,
    each body too large for LLVM to unroll, so neither pass holds the other's ``alpha^2``
    vectors live (one loop doing both passes of a vector becomes one block that spills)."""
    alpha = bt.shape[0]
    block = alpha * alpha * lanes
    group = min(count, _GROUP)
    with T.serial(0, ceil_div(count, group)) as g:
        size = tirx.min(group, count - g * group) if count % group else group
        with T.serial(0, size) as j:
            read_row = reader(g * group + j)
            for r in range(alpha):
                row = transform_rows(bt, read_row(r), dtype)
                for e2 in range(alpha):
                    T.buffer_store(rows, row[e2], [tirx.Ramp(
                        j * block + (r * alpha + e2) * lanes, 1, lanes)])
        with T.serial(0, size) as j:
            t0 = T.bind(first_tile(g * group + j))
            for e2 in range(alpha):
                col = transform_rows(
                    bt, [rows[tirx.Ramp(j * block + (r * alpha + e2) * lanes, 1, lanes)]
                         for r in range(alpha)], dtype)
                for e1 in range(alpha):
                    T.buffer_store(out, col[e1], [e1 * alpha + e2, ci, tirx.Ramp(t0, 1, lanes)])


def _deinterleave(pad, start, m: int, lanes: int) -> list:
    """The ``m + 2`` vectors ``[pad[start + q + m * t] for t < L]`` (q < m + 2) of a row of
    ``L`` tiles: the first ``m`` as one structured load (``ld2`` / ``ld4``: LLVM lowers a wide
    load whose only users are stride-m shuffles to it), the last two as the first two
    shifted by a lane with the next tile's first pixels appended (``ext`` / ``ins``)."""
    wide = pad[tirx.Ramp(start, 1, m * lanes)]
    first = [tirx.Shuffle([wide], [q + m * t for t in range(lanes)]) for q in range(m)]
    after = pad[tirx.Ramp(start + m * lanes, 1, lanes)]
    return first + [tirx.Shuffle([first[q], after], list(range(1, lanes)) + [lanes + q])
                    for q in range(2)]


def _zero_planes(pad, size: int, lanes: int, dtype: str):
    """Zero the padded planes (`size` elements, a multiple of `lanes`): once per task, since
    every channel writes the same interior and leaves the border zero."""
    zero = tirx.Broadcast(tirx.const(0, dtype), lanes)
    with T.serial(0, size // lanes) as v:
        T.buffer_store(pad, zero, [tirx.Ramp(v * lanes, 1, lanes)])


def _pad_planes(data, pad, ci, n, h, w, top, left, plane, cols_p, lanes, dtype):
    """Copy channel `ci`'s rows into the interior of its zero-bordered padded planes (vectors
    + a scalar tail)."""
    full = w // lanes * lanes
    with T.serial(0, n) as img:
        with T.serial(0, h) as y:
            row = img * plane + (y + top) * cols_p + left
            if full:
                with T.serial(0, full // lanes) as v:
                    src = data[img, ci, y, tirx.Ramp(v * lanes, 1, lanes)]
                    if data.dtype != dtype:
                        src = tirx.Cast(f"{dtype}x{lanes}", src)
                    T.buffer_store(pad, src, [tirx.Ramp(row + v * lanes, 1, lanes)])
            if full < w:
                with T.serial(full, w) as x:
                    src = data[img, ci, y, x]
                    T.buffer_store(pad, src if data.dtype == dtype else src.astype(dtype),
                                   [row + x])
