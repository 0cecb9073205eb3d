"""Max pooling as a hand-scheduled TIR kernel: vertical max of whole rows, then a
de-interleaving shuffle for the horizontal window (no lane-by-lane gathers).

`max_pool2d_func` returns a PrimFunc (already scheduled, ``tirx.is_scheduled``; the rule
`schedules.pool_rule.MaxPool` puts it in place of the TE reference) for an NCHW
``max_pool2d`` with stride 1 or 2. Per plane (the parallel loop) and output row, a
vector of ``L`` outputs needs the ``(L - 1) * s + k`` input columns from its first one;
it reads them as contiguous vectors from each of the ``k`` input rows (the last vector
shifted back to end at the last column needed, so no load passes it), takes their
element-wise max (the vertical window), and picks the ``k`` horizontal taps by shuffles --
for stride 2 the even and odd lanes (``uzp1`` / ``uzp2`` on NEON) and the even lanes
shifted by one (``ext``). After the vectors that fit one after another, one more vector
ends at the last output whose window is inside the image (it recomputes a few outputs of
the previous one, with the same values). Outputs whose window leaves the image (the
padding) or that no vector reaches are computed by a scalar loop that clamps indices into
the image: for a maximum, a clamped index repeats an element of the same window, which is
what padding with -inf gives. `pool_lanes` picks the vector width per shape: on AVX-512
a 13-pixel row gets two 8-lane vectors instead of 13 scalar outputs.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from schedules.config import ceil_div

# Relax op pattern kind "opaque": FuseOps fuses nothing into a hand-scheduled kernel (its
# loops are not blocks FuseTIR could merge).
OPAQUE = 8


def vector_range(in_width: int, out_width: int, kernel: int, stride: int, pad_left: int,
                 lanes: int) -> tuple[int, int, int | None]:
    """``(first, count, last)``: the output columns ``first + v * lanes`` (``v < count``)
    and, if not None, ``last`` (the vector ending at the last output it can reach, past the
    others) whose vector of `lanes` outputs reads only columns inside the image."""
    first = ceil_div(pad_left, stride)
    needed = (lanes - 1) * stride + kernel

    def fits(x0: int) -> bool:
        return x0 >= first and x0 + lanes <= out_width and (
            x0 * stride - pad_left + needed <= in_width)

    count = 0
    while fits(first + count * lanes):
        count += 1
    end = first + count * lanes  # the first output no vector covers yet
    last = next((x0 for x0 in range(out_width - lanes, end - lanes, -1) if fits(x0)), None)
    return first, count, (None if last is None or last + lanes <= end else last)


def _vector_end(first: int, count: int, last: int | None, lanes: int) -> int:
    """The first output column after the vectors of `vector_range` (``first`` if none)."""
    return first + count * lanes if last is None else last + lanes


def _scalar_outputs(in_width: int, out_width: int, kernel: int, stride: int, pad_left: int,
                    lanes: int) -> tuple[int, int]:
    """``(vector iterations, scalar outputs)`` of one output row at `lanes`."""
    first, count, last = vector_range(in_width, out_width, kernel, stride, pad_left, lanes)
    end = _vector_end(first, count, last, lanes)
    return count + (last is not None), out_width - (end - first)


def pool_lanes(in_width: int, out_width: int, kernel, stride: int, pad_left: int,
               lanes: int) -> int:
    """The vector width for a row: `lanes`, or a half or quarter of it (at least 4) where
    fewer scalar outputs make up for more vector iterations (a vector costs about what
    two scalar outputs of a 3 x 3 window do)."""
    kh, kw = kernel
    best, best_cost = lanes, None
    for width in (lanes, lanes // 2, lanes // 4):
        if width < 4 and width != lanes:
            continue
        iters, scalar = _scalar_outputs(in_width, out_width, kw, stride, pad_left, width)
        nvec = ceil_div((width - 1) * stride + kw, width)
        cost = iters * (kh * nvec + 2 * kw) + scalar * 2 * kh * kw
        if best_cost is None or cost < best_cost:
            best, best_cost = width, cost
    return best


def _maxnum(a, b, native: bool):
    """``max(a, b)``; with `native`, LLVM's ``maxnum`` (one ``fmaxnm`` on AArch64, where a
    plain ``max`` becomes compare + select)."""
    if not native:
        return tirx.max(a, b)
    dtype = str(getattr(a, "dtype", None) or a.ty.dtype)
    return T.call_llvm_pure_intrin(dtype, "llvm.maxnum", a, b)


def max_pool2d_func(shape, dtype: str, kernel, stride, padding, out_hw, lanes: int,
                    parallel: bool = True, native_max: bool = False):
    """Build the max-pool PrimFunc (see the module docstring).

    Parameters
    ----------
    shape : tuple of int
        NCHW input shape.
    dtype : str
    kernel, stride : tuple of int
        ``(h, w)``; strides 1 or 2.
    padding : tuple of int
        ``(top, left, bottom, right)``.
    out_hw : tuple of int
        Output height and width (as the operator computed them, ceil mode included).
    lanes : int
        Vector lanes of `dtype` (the widest; `pool_lanes` may take a half or a quarter).
    parallel : bool
        Make the plane loop parallel.
    native_max : bool
        Use ``llvm.maxnum`` (AArch64's ``fmaxnm``) for the maximum.

    Returns
    -------
    tirx.PrimFunc
    """
    n, c, h, w = (int(v) for v in shape)
    (kh, kw), (sh, sw) = kernel, stride
    top, left = padding[0], padding[1]
    oh, ow = out_hw
    if sw not in (1, 2):
        raise ValueError(f"max_pool2d_func handles strides 1 and 2, not {sw}")
    lanes = pool_lanes(w, ow, (kh, kw), sw, left, lanes)
    first, count, last = vector_range(w, ow, kw, sw, left, lanes)
    needed = (lanes - 1) * sw + kw
    nvec = ceil_div(needed, lanes)
    # vector j loads columns from offset j * lanes; the last one ends at `needed`
    offsets = [j * lanes for j in range(nvec - 1)] + [needed - lanes]

    def _column(k: int) -> int:  # where relative input column k sits in the loaded vectors
        j = min(k // lanes, nvec - 1)
        return j * lanes + k - offsets[j]

    def _clamp(v, hi):
        return tirx.max(tirx.min(v, hi), 0)

    def _vector(b, ch, y, rows, x0):
        col = x0 * sw - left
        vecs = []
        for off in offsets:
            loads = [data[b, ch, r, tirx.Ramp(col + off, 1, lanes)] for r in rows]
            acc = loads[0]
            for ld in loads[1:]:
                acc = _maxnum(acc, ld, native_max)
            vecs.append(acc)
        res = None
        for tap in range(kw):
            sel = tirx.Shuffle(vecs, [_column(lane * sw + tap) for lane in range(lanes)])
            res = sel if res is None else _maxnum(res, sel, native_max)
        T.buffer_store(out, res, [b, ch, y, tirx.Ramp(x0, 1, lanes)])

    end = _vector_end(first, count, last, lanes)
    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            T.func_name("mdl_max_pool2d")
            data = T.arg("data", T.Buffer((n, c, h, w), dtype))
            out = T.arg("out", T.Buffer((n, c, oh, ow), dtype))
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True,
                         "mdl.schedule_rule": "max_pool", "op_pattern": OPAQUE})
            with T.sblock("root"):
                loop = T.parallel if parallel else T.serial
                with loop(0, n * c) as plane:
                    b, ch = plane // c, plane % c
                    with T.serial(0, oh) as y:
                        rows = [T.bind(_clamp(y * sh - top + a, h - 1)) for a in range(kh)]
                        if count:
                            with T.serial(0, count) as v:
                                _vector(b, ch, y, rows, first + v * lanes)
                        if last is not None:
                            _vector(b, ch, y, rows, last)
                        for lo, hi in ((0, min(first, ow)), (end, ow)):
                            if hi > lo:
                                with T.serial(lo, hi) as x:
                                    res = None
                                    for r in rows:
                                        for tap in range(kw):
                                            val = data[b, ch, r, _clamp(x * sw - left + tap,
                                                                        w - 1)]
                                            res = val if res is None else _maxnum(
                                                res, val, native_max)
                                    T.buffer_store(out, res, [b, ch, y, x])
    return ib.get()
