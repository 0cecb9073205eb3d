"""Depthwise k x k convolution (3 x 3 and 5 x 5 stride 1 or 2; 7 x 7 stride 1) as a
hand-scheduled row kernel with a fused epilogue.

`depthwise_rows_func` replaces the fused function of an NCHW depthwise convolution (the TE
reference `schedules.depthwise_rows.depthwise_nchw` plus FuseOps' element-wise blocks):

``parallel(n * c)`` → groups of ``G`` output rows (`row_group`: the count that computes the
fewest rows and loads, e.g. 7 for 14- and 7-row maps; the last group shifted up to end at
the last row) → vectors of ``L`` output pixels (the last one
shifted left to end at the row's end) → the ``G * s + k - 1`` input rows the group reads
are loaded once per vector and shared by its output rows:

* stride 1: the ``k`` windows of a row are unaligned vector loads at ``x - k // 2`` ...
  ``x + k // 2``;
* stride 2, 3 x 3: ``2L`` pixels at ``2x - 1`` de-interleaved by one ``ld2`` into the left
  (``2x - 1``) and middle (``2x``) taps; the right taps are the left ones shifted by a
  lane (``ext``) with pixel ``2x + 2L - 1`` appended;
* stride 2, 5 x 5: pairs at ``2x - 2`` and ``2x`` give four taps, the fifth is the third
  shifted by a lane with pixel ``2x + 2L`` appended (zero past the row's end);

each tap is one FMA of a window by a broadcast weight. At the image border the part of a
window outside the image is zeros shuffled in (``ext``) and rows outside the image
are skipped (the first and last groups are generated with the border known), so the input
is never copied into a padded plane. The epilogue (`schedules.epilogue`) writes each
accumulator vector with bias and activation applied.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from schedules.common import cast_to as _cast
from schedules.common import ramp as _vec

OPAQUE = 8  # Relax op pattern "opaque"
# Instructions per output vector and input row of a row group: k * k FMAs per output row,
# the k windows of an input row (stride 1: k loads; stride 2, 3 x 3: an ``ld2``, a pixel
# load, an ``ext`` and address arithmetic).
_STRIDE2_ROW_LOADS = {3: 4, 5: 6}
# accumulators beside the weights and the windows in 32 registers, by (kernel, stride)
_MAX_GROUP = {(3, 1): 8, (3, 2): 4, (5, 1): 4, (5, 2): 2, (7, 1): 4}
ROW_KERNELS = (3, 5, 7)  # square kernel sizes the row kernel takes (5 and 7 at stride 1 ...)


def supported(in_hw, out_hw, kernel, stride, padding, dilation, lanes: int) -> bool:
    """Whether `depthwise_rows_func` handles this geometry: k x k (3, 5 or 7), dilation 1,
    padding ``k // 2``, stride 1 with the same output size, or (3 x 3) stride 2 whose last
    window ends inside the row; rows of at least ``L + 1`` input pixels."""
    (h, w), (oh, ow) = in_hw, out_hw
    k = kernel[0]
    if (kernel[1] != k or k not in ROW_KERNELS or tuple(dilation) != (1, 1)
            or tuple(padding) != (k // 2,) * 4):
        return False
    if stride == (1, 1):
        return (oh, ow) == (h, w) and ow >= lanes + 1
    if stride == (2, 2) and k in (3, 5):  # 5 x 5: an even width (one column past the row)
        return 2 * ow <= w and ow >= lanes and w >= 2 * lanes and (k == 3 or w % 2 == 0)
    return False


def choose_row_lanes(cfg, dtype: str, in_hw, out_hw, kernel, stride, padding,
                     dilation) -> int:
    """The row kernel's vector width for a geometry on `cfg`, 0 for the generic kernel.

    With indexed FMAs (NEON) the core's lanes or half of them (64-bit ``.4h`` / ``.2s``,
    `row_lanes`). On x86 with 16 lanes (AVX-512) a row too narrow for them may take 8 or
    4 (256- / 128-bit halves), except a 3 x 3 stride-1 row that computes no fewer pixels
    that way than the generic kernel's whole-vector rows: host, 2 threads, 14-pixel rows,
    5 x 5 + SiLU on 672 channels 176 -> 117 us, 7-pixel rows 5 x 5 on 1152 channels
    161 -> 92 us, MobileNetV2's stride-2 rows 40 -> 13 us, but its 3 x 3 stride-1
    14-pixel rows 104 -> 117 us (8 lanes, as many pixels as 16 lanes padded). AVX2's
    4-lane halves measured 4-6 % slower on MobileNetV2: only the core's 8 there."""
    lanes = cfg.lanes(dtype)
    if cfg.indexed_fma or lanes < 16:
        return row_lanes(in_hw, out_hw, kernel, stride, padding, dilation, lanes,
                         half=bool(cfg.indexed_fma))
    for width in (lanes, lanes // 2, lanes // 4):
        if not supported(in_hw, out_hw, kernel, stride, padding, dilation, width):
            continue
        ow = out_hw[1]
        computed = len(vector_starts(ow, width)) * width
        if (width == lanes or tuple(kernel) != (3, 3) or tuple(stride) != (1, 1)
                or computed < -(-ow // lanes) * lanes):
            return width
    return 0


def row_lanes(in_hw, out_hw, kernel, stride, padding, dilation, lanes: int,
              half: bool = True) -> int:
    """The vector width the row kernel runs a geometry with: the core's `lanes`, or, with
    `half`, half of them (NEON's 64-bit vectors: fp16 ``.4h`` on a 7-pixel row, where 8
    lanes do not fit) -- never under 4; 0 when `supported` accepts neither."""
    for width in (lanes, lanes // 2) if half else (lanes,):
        if width >= 4 and supported(in_hw, out_hw, kernel, stride, padding, dilation, width):
            return width
    return 0


def depthwise_rows_func(func, data, weight, geometry: dict, epilogue, lanes: int,
                        parallel: bool = True):
    """Build the row-kernel PrimFunc for the fused function `func`.

    Parameters
    ----------
    func : tirx.PrimFunc
        The fused function (its parameters are kept).
    data, weight : Var
        Input ``[N, C, H, W]`` and weights ``[C, 1, k, k]`` (parameters of `func`).
    geometry : dict
        ``stride`` (1 or 2), ``out_shape`` (N, C, OH, OW), ``dtype`` (accumulation dtype).
    epilogue : schedules.epilogue.Epilogue
    lanes : int
    parallel : bool

    Returns
    -------
    tirx.PrimFunc
    """
    n, c, h, w = (int(v) for v in data.ty.shape)
    s, dtype = geometry["stride"], geometry["dtype"]
    k = int(weight.ty.shape[2])
    _, _, oh, ow = geometry["out_shape"]
    group = row_group(oh, s, k)
    starts = vector_starts(ow, lanes)
    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            T.func_name("mdl_depthwise_rows")
            for p in func.params:
                T.arg(p.name, p)
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True,
                         "mdl.schedule_rule": "depthwise_rows", "op_pattern": OPAQUE})
            with T.sblock("root"):
                dflat = T.decl_buffer((n * c * h * w,), data.ty.dtype, data=data.data)
                loop = T.parallel if parallel else T.serial
                with loop(0, n * c) as plane:
                    img, ch = plane // c, plane % c
                    wts = [T.bind(tirx.Broadcast(_cast(weight[ch, 0, ky, kx], dtype, 1), lanes))
                           for ky in range(k) for kx in range(k)]
                    acc = T.alloc_buffer((group * lanes,), dtype)
                    ctx = {"dflat": dflat, "base": plane * h * w, "wts": wts, "acc": acc,
                           "img": img, "ch": ch, "epilogue": epilogue, "lanes": lanes,
                           "dtype": dtype, "s": s, "h": h, "w": w, "ow": ow, "group": group,
                           "k": k}
                    for y0, kind in _groups(oh, h, s, group, k // 2):
                        if kind == "loop":
                            first, count = y0
                            with T.serial(0, count) as g:
                                _row_group(ctx, first + g * group, starts, None)
                        else:
                            _row_group(ctx, y0, starts, y0)
    return ib.get()


def vector_starts(ow: int, lanes: int) -> list[int]:
    """First columns of a row's output vectors: every `lanes`, the last shifted left to end
    at the row's end."""
    return sorted({*range(0, ow - lanes + 1, lanes), ow - lanes})


def row_group(oh: int, s: int, k: int = 3) -> int:
    """Output rows per group: the fewest estimated instructions for the whole map, where a
    group of ``G`` rows computes ``ceil(oh / G) * G`` rows (the last group overlaps) and loads
    its ``G * s + k - 1`` input rows once (ties: the smaller group, less code)."""
    loads = k if s == 1 else _STRIDE2_ROW_LOADS[k]

    def _cost(g):
        return -(-oh // g) * (g * k * k + (g * s + k - 1) * loads)

    return min(range(1, min(oh, _MAX_GROUP[(k, s)]) + 1), key=lambda g: (_cost(g), g))


def _groups(oh: int, h: int, s: int, group: int, pad: int = 1):
    """Row groups: ``(y0, "static")`` for groups touching the top or bottom border
    (generated with the border known), ``((first, count), "loop")`` for the rest."""
    def _inside(y0):
        return y0 * s - pad >= 0 and (y0 + group - 1) * s + pad <= h - 1

    heads = sorted({*range(0, oh - group + 1, group), oh - group})
    out, run = [], []
    for y0 in heads:
        if _inside(y0) and (not run or y0 == run[-1] + group):
            run.append(y0)
            continue
        if run:
            out.append(((run[0], len(run)), "loop"))
            run = []
        if _inside(y0):
            run.append(y0)
        else:
            out.append((y0, "static"))
    if run:
        out.append(((run[0], len(run)), "loop"))
    return out


def _row_group(ctx, y0, starts, static_y0):
    """``group`` output rows from ``y0``: every vector start, then the epilogue. Starts
    whose windows all lie inside the row (stride 1: from ``x - k // 2`` to ``x + L - 1 +
    k // 2``; stride 2: all but the first and last) run in a loop; the others are generated
    with their column known, so the windows that leave the row get zeros shuffled in."""
    lanes, pad, w = ctx["lanes"], ctx["k"] // 2, ctx["w"]
    if ctx["s"] == 1:
        interior = [x for x in starts if x >= pad and x + lanes + pad <= w]
    else:
        interior = starts[1:-1]
    edges = [x for x in starts if x not in interior]
    lead = [x for x in edges if not interior or x < interior[0]]  # left of the interior
    for x0 in lead:
        _vector(ctx, y0, x0, static_y0)
    if interior and all(b - a == lanes for a, b in zip(interior, interior[1:], strict=False)):
        with T.serial(0, len(interior)) as v:
            _vector(ctx, y0, interior[0] + v * lanes, static_y0)
    else:
        for x0 in interior:
            _vector(ctx, y0, x0, static_y0)
    for x0 in edges[len(lead):]:
        _vector(ctx, y0, x0, static_y0)


def _vector(ctx, y0, x0, static_y0):
    """One vector of ``L`` output pixels at column `x0` in each row of the group."""
    lanes, dtype, s, h, w = (ctx[name] for name in ("lanes", "dtype", "s", "h", "w"))
    group, acc, dflat, base, k = (ctx[name] for name in ("group", "acc", "dflat", "base", "k"))
    pad = k // 2
    started = set()  # accumulators written: the first tap of each is a product, no zero-fill
    for r in range(group * s + k - 1):  # input rows y0 * s - pad + r
        if static_y0 is not None and not 0 <= static_y0 * s - pad + r < h:
            continue
        row = base + (y0 * s - pad + r) * w
        if s == 1:
            wins = [_window(dflat, row, x0 + kx - pad, w, lanes, dtype) for kx in range(k)]
        else:
            wins = _stride2_windows(dflat, row, x0, (lanes, k, w), dtype,
                                    isinstance(x0, int) and x0 == 0)
        for j in range(group):
            ky = r - j * s
            if not 0 <= ky < k:
                continue
            slot = _vec(j * lanes, lanes)
            val = acc[slot] if j in started else None
            for kx in range(k):
                term = wins[kx] * ctx["wts"][ky * k + kx]
                val = term if val is None else val + term
            started.add(j)
            T.buffer_store(acc, val, [slot])
    if len(started) != group:  # every output row's middle input row is inside the image
        raise ValueError(f"row group at {static_y0} has output rows without input rows")
    for j in range(group):
        with T.vectorized(0, lanes) as lane:
            stmt = ctx["epilogue"].store([ctx["img"], ctx["ch"], y0 + j, x0 + lane],
                                         acc[j * lanes + lane])
            T.buffer_store(stmt.buffer, stmt.value, list(stmt.indices))


def _window(dflat, row, a, w, lanes, dtype):
    """The `lanes` input pixels from column `a` of a row (stride 1), zeros outside it: a
    plain load inside, else the row's first or last vector with zeros shuffled in. `a` is
    an expression only for interior vectors, which stay inside."""
    if not isinstance(a, int) or 0 <= a <= w - lanes:
        return _cast(dflat[_vec(row + a, lanes)], dtype, lanes)
    zero = tirx.Broadcast(tirx.const(0, dtype), lanes)
    if a < 0:  # lanes before column 0 are zeros
        first = _cast(dflat[_vec(row, lanes)], dtype, lanes)
        return tirx.Shuffle([zero, first], [lanes + a + i for i in range(lanes)])
    last = _cast(dflat[_vec(row + w - lanes, lanes)], dtype, lanes)
    return tirx.Shuffle([last, zero], [a - (w - lanes) + i for i in range(lanes)])


def _stride2_windows(dflat, row, x0, geometry, dtype, left_edge):
    """The `k` tap windows (input columns ``2x - k // 2`` ... ``2x + k // 2``) of one row at
    stride 2, k = 3 or 5."""
    lanes, k, w = geometry
    zero = tirx.Broadcast(tirx.const(0, dtype), lanes)

    # one 2L-lane load split into its even and odd lanes is one de-interleaving
    # load (``ld2`` on NEON, LLVM's interleaved-access lowering; both halves must be used,
    # the casts come after the split): at 2x - 1 it gives the left and middle taps, and the
    # right taps are the left ones shifted by one lane with the next pixel appended
    def _taps(col):
        pair = dflat[_vec(row + col, 2 * lanes)]
        return [_cast(tirx.Shuffle([pair], [2 * i + p for i in range(lanes)]), dtype, lanes)
                for p in (0, 1)]

    def _later(vec, col):  # `vec` one lane on (one tap two columns right), pixel `col` appended
        past = isinstance(col, int) and col >= w  # interior vectors (expressions) are inside
        after = zero if past else tirx.Broadcast(_cast(dflat[row + col], dtype, 1), lanes)
        return tirx.Shuffle([vec, after], list(range(1, lanes + 1)))

    def _earlier(vec):  # `vec` one lane back, a zero in front (the columns before the row)
        return tirx.Shuffle([zero, vec], list(range(lanes - 1, 2 * lanes - 1)))

    if k == 3:
        if left_edge:
            mid, right = _taps(2 * x0)
            return [_earlier(right), mid, right]
        left, mid = _taps(2 * x0 - 1)
        return [left, mid, _later(left, 2 * x0 + 2 * lanes - 1)]
    mid, right = _taps(2 * x0)
    left2, left1 = (_earlier(mid), _earlier(right)) if left_edge else _taps(2 * x0 - 2)
    return [left2, left1, mid, right, _later(mid, 2 * x0 + 2 * lanes)]
