"""Max pooling as a hand-scheduled TIR kernel: vertical max of whole rows, then a
de-interleaving shuffle for the horizontal window (no lane-by-lane gathers).

`max_pool2d_func` returns a PrimFunc (already scheduled, ``tirx.is_scheduled``; the rule
`schedules.pool_rule.MaxPool` puts it in place of the TE reference) for an NCHW
``max_pool2d`` with stride 1 or 2. Per plane (the parallel loop) and output row, a
vector of ``L`` outputs reads the ``(L - 1) * s + k`` input columns it needs as contiguous
vectors from each of the ``k`` input rows, takes their element-wise max (the vertical
window), and picks the ``k`` horizontal taps by shuffles -- for stride 2 the even and odd
lanes (``uzp1`` / ``uzp2`` on NEON) and the even lanes shifted by one (``ext``). Outputs
whose window leaves the image (the padding) or whose loads would pass the row's end are
computed by a scalar loop that clamps indices into the image: for a maximum, a clamped
index repeats an element of the same window, which is what padding with -inf gives.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from schedules.common import ceil_div as _ceil_div

# Relax op pattern kind "opaque": FuseOps fuses nothing into a hand-scheduled kernel (its
# loops are not blocks FuseTIR could merge).
OPAQUE = 8


def vector_range(in_width: int, out_width: int, kernel: int, stride: int, pad_left: int,
                 lanes: int) -> tuple[int, int]:
    """``(first, count)``: the output columns ``first + v * lanes`` (``v < count``) whose
    vector of `lanes` outputs reads only columns inside the image, with whole-vector loads
    that end inside the row."""
    first = _ceil_div(pad_left, stride)
    span = _ceil_div((lanes - 1) * stride + kernel, lanes) * lanes
    count = 0
    while True:
        x0 = first + count * lanes
        if x0 + lanes > out_width or x0 * stride - pad_left + span > in_width:
            return first, count
        count += 1


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
        Vector lanes of `dtype`.
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
    first, count = vector_range(w, ow, kw, sw, left, lanes)
    nvec = _ceil_div((lanes - 1) * sw + kw, lanes)

    def _clamp(v, hi):
        return tirx.max(tirx.min(v, hi), 0)

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
                                x0 = first + v * lanes
                                col = x0 * sw - left
                                vecs = []
                                for j in range(nvec):
                                    loads = [data[b, ch, r, tirx.Ramp(col + j * lanes, 1, lanes)]
                                             for r in rows]
                                    acc = loads[0]
                                    for ld in loads[1:]:
                                        acc = _maxnum(acc, ld, native_max)
                                    vecs.append(acc)
                                res = None
                                for tap in range(kw):
                                    sel = tirx.Shuffle(vecs, [lane * sw + tap
                                                              for lane in range(lanes)])
                                    res = sel if res is None else _maxnum(res, sel,
                                                                          native_max)
                                T.buffer_store(out, res, [b, ch, y, tirx.Ramp(x0, 1, lanes)])
                        for lo, hi in ((0, min(first, ow)), (first + count * lanes, ow)):
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
