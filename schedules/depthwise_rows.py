"""Rule for the NCHW depthwise k x k convolution as a row kernel with a fused epilogue.

Compute (`depthwise_nchw`, made by `schedules.legalize` when
`schedules.depthwise_kernel.row_lanes` finds a vector width for the geometry):
``out[n, c, y, x] = sum_(ky, kx) data[n, c, y * s + ky - p, x * s + kx - p] * w[c, 0, ky,
kx]`` (``p = k // 2``, zero outside the image), annotated ``mdl.rule = "depthwise_rows"``
with the stride. Unscheduled, it is the reference the tests compare with.

Recognises
    a PrimFunc with that anchor block followed by element-wise blocks (bias, ReLU6 clip,
    residual add) that `schedules.epilogue.extract_epilogue` can apply.

Schedule
    replaces the function by `schedules.depthwise_kernel.depthwise_rows_func` (same
    parameters): several output rows per step sharing their input rows, unaligned loads
    (stride 1) or de-interleaving shuffles (stride 2) instead of per-lane gathers or a
    padded copy of the input, the epilogue applied to the accumulators.
"""

from __future__ import annotations

from tvm import s_tir, te, tirx

from schedules.common import Rule, annotated_block
from schedules.compute import RULE_KEY
from schedules.depthwise_kernel import ROW_KERNELS, choose_row_lanes, depthwise_rows_func
from schedules.epilogue import UnsupportedEpilogue, extract_epilogue

STRIDE_KEY = "mdl.stride"


def depthwise_nchw(data, weight, stride: int, out_dtype: str = "float32"):
    """k x k depthwise convolution, padding ``k // 2``, multiplier 1, annotated for
    `DepthwiseRows`.

    Parameters
    ----------
    data : te.Tensor
        ``[N, C, H, W]``.
    weight : te.Tensor
        ``[C, 1, k, k]``.
    stride : int
        1 or 2.
    out_dtype : str

    Returns
    -------
    te.Tensor
        ``[N, C, OH, OW]``.
    """
    n, c, h, w = (int(v) for v in data.shape)
    k = int(weight.shape[2])
    pad = k // 2
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    ry = te.reduce_axis((0, k), "ry")
    rx = te.reduce_axis((0, k), "rx")

    def _value(b, ch, y, x):
        iy, ix = y * stride + ry - pad, x * stride + rx - pad
        inside = tirx.all(iy >= 0, iy < h, ix >= 0, ix < w)
        pixel = data[b, ch, tirx.max(tirx.min(iy, h - 1), 0), tirx.max(tirx.min(ix, w - 1), 0)]
        pixel = tirx.if_then_else(inside, pixel.astype(out_dtype), tirx.const(0, out_dtype))
        return te.sum(pixel * weight[ch, 0, ry, rx].astype(out_dtype), axis=[ry, rx])

    return te.compute((n, c, oh, ow), _value, name="mdl_depthwise_rows",
                      attrs={RULE_KEY: "depthwise_rows", STRIDE_KEY: stride})


class DepthwiseRows(Rule):
    """Depthwise k x k row kernel with fused epilogue (see module docstring)."""

    name = "depthwise_rows"

    def apply(self, func: tirx.PrimFunc, cfg) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        found = annotated_block(sch, "depthwise_rows")
        if found is None:
            return None
        block = sch.get(found[0])
        params = [r.source for r in block.reads
                  if any(p.same_as(r.source) for p in func.params)]
        weight = next((b for b in params if tuple(int(v) for v in b.ty.shape[1:]) in
                       {(1, k, k) for k in ROW_KERNELS}), None)
        data = next((b for b in params if weight is None or not b.same_as(weight)), None)
        if data is None or weight is None:
            return None
        try:
            epilogue = extract_epilogue(func, "depthwise_rows")
        except UnsupportedEpilogue:
            return None
        out = block.writes[0].source
        stride = int(block.annotations[STRIDE_KEY])
        out_hw = tuple(int(v) for v in out.ty.shape[2:])
        k = int(weight.ty.shape[2])
        lanes = choose_row_lanes(cfg, str(out.ty.dtype), tuple(int(v) for v in data.ty.shape[2:]),
                                 out_hw, (k, k), (stride, stride), (k // 2,) * 4, (1, 1))
        if not lanes:
            return None
        geometry = {"stride": stride,
                    "out_shape": tuple(int(v) for v in out.ty.shape),
                    "dtype": str(out.ty.dtype)}
        new = depthwise_rows_func(func, data, weight, geometry, epilogue, lanes,
                                  parallel=cfg.num_cores > 1)
        new = new.without_attr("global_symbol")
        return s_tir.Schedule(new.with_attrs(dict(func.attrs)) if func.attrs else new)
