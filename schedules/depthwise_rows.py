"""Rule for the NCHW depthwise 3 x 3 convolution as a row kernel with a fused epilogue.

Compute (`depthwise_nchw`, made by `schedules.legalize` when
`schedules.depthwise_kernel.row_lanes` finds a vector width for the geometry): ``out[n, c, y, x] =
sum_(ky, kx) data[n, c, y * s + ky - 1, x * s + kx - 1] * w[c, 0, ky, kx]`` (zero outside
the image), annotated ``mdl.rule = "depthwise_rows"`` with the stride. Unscheduled, it is
the reference the tests compare with.

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
from schedules.depthwise_kernel import depthwise_rows_func, row_lanes
from schedules.epilogue import UnsupportedEpilogue, extract_epilogue

STRIDE_KEY = "mdl.stride"


def depthwise_nchw(data, weight, stride: int, out_dtype: str = "float32"):
    """3 x 3 depthwise convolution, padding 1, multiplier 1, annotated for `DepthwiseRows`.

    Parameters
    ----------
    data : te.Tensor
        ``[N, C, H, W]``.
    weight : te.Tensor
        ``[C, 1, 3, 3]``.
    stride : int
        1 or 2.
    out_dtype : str

    Returns
    -------
    te.Tensor
        ``[N, C, OH, OW]``.
    """
    n, c, h, w = (int(v) for v in data.shape)
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    ry = te.reduce_axis((0, 3), "ry")
    rx = te.reduce_axis((0, 3), "rx")

    def _value(b, ch, y, x):
        iy, ix = y * stride + ry - 1, x * stride + rx - 1
        inside = tirx.all(iy >= 0, iy < h, ix >= 0, ix < w)
        pixel = data[b, ch, tirx.max(tirx.min(iy, h - 1), 0), tirx.max(tirx.min(ix, w - 1), 0)]
        pixel = tirx.if_then_else(inside, pixel.astype(out_dtype), tirx.const(0, out_dtype))
        return te.sum(pixel * weight[ch, 0, ry, rx].astype(out_dtype), axis=[ry, rx])

    return te.compute((n, c, oh, ow), _value, name="mdl_depthwise_rows",
                      attrs={RULE_KEY: "depthwise_rows", STRIDE_KEY: stride})


class DepthwiseRows(Rule):
    """Depthwise 3 x 3 row kernel with fused epilogue (see module docstring)."""

    name = "depthwise_rows"

    def apply(self, func: tirx.PrimFunc, cfg) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        found = annotated_block(sch, "depthwise_rows")
        if found is None:
            return None
        block = sch.get(found[0])
        params = [r.source for r in block.reads
                  if any(p.same_as(r.source) for p in func.params)]
        weight = next((b for b in params if tuple(int(v) for v in b.ty.shape[1:]) == (1, 3, 3)),
                      None)
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
        lanes = row_lanes(tuple(int(v) for v in data.ty.shape[2:]), out_hw, (3, 3),
                          (stride, stride), (1, 1, 1, 1), (1, 1), cfg.lanes(str(out.ty.dtype)),
                          half=cfg.indexed_fma)
        if not lanes:
            return None
        geometry = {"stride": stride,
                    "out_shape": tuple(int(v) for v in out.ty.shape),
                    "dtype": str(out.ty.dtype)}
        new = depthwise_rows_func(func, data, weight, geometry, epilogue, lanes,
                                  parallel=cfg.num_cores > 1)
        new = new.without_attr("global_symbol")
        return s_tir.Schedule(new.with_attrs(dict(func.attrs)) if func.attrs else new)
