"""Rule for NCHW max pooling: the TE reference and its replacement.

`max_pool_reference` is the pooling written plainly in TE (a max over the window, padding
ignored), the function `schedules.legalize` emits for stride 1 or 2 -- marked opaque
(``op_pattern``) so FuseOps keeps it a call of its own -- and the reference the tests
compare with.

Recognises
    a PrimFunc whose root block is annotated ``mdl.rule = "max_pool"`` (its geometry in
    ``mdl.pool``).

Schedule
    replaces it by `schedules.pool.max_pool2d_func`, the hand-scheduled kernel (vertical
    max of whole rows, de-interleaving shuffles for stride 2, ``fmaxnm`` on AArch64).
"""

from __future__ import annotations

from tvm import s_tir, te, tirx

from schedules.common import Rule, annotated_block
from schedules.compute import RULE_KEY
from schedules.pool import max_pool2d_func

OPAQUE = 8  # Relax op pattern "opaque"
GEOMETRY_KEY = "mdl.pool"


def max_pool_reference(shape, dtype: str, kernel, stride, padding, out_hw) -> tirx.PrimFunc:
    """NCHW max pooling as a TE PrimFunc (see `schedules.pool.max_pool2d_func` for the
    parameters)."""
    n, c, h, w = (int(v) for v in shape)
    (kh, kw), (sh, sw) = kernel, stride
    top, left = padding[0], padding[1]
    data = te.placeholder((n, c, h, w), dtype, name="data")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")

    def _value(b, ch, y, x):
        iy, ix = y * sh + ry - top, x * sw + rx - left
        inside = tirx.all(iy >= 0, iy < h, ix >= 0, ix < w)
        value = data[b, ch, tirx.max(tirx.min(iy, h - 1), 0), tirx.max(tirx.min(ix, w - 1), 0)]
        return te.max(tirx.if_then_else(inside, value, tirx.min_value(dtype)), axis=[ry, rx])

    out = te.compute((n, c, *out_hw), _value, name="mdl_max_pool",
                     attrs={RULE_KEY: "max_pool",
                            GEOMETRY_KEY: [kh, kw, sh, sw, *padding[:4], *out_hw]})
    func = te.create_prim_func([data, out]).without_attr("global_symbol")
    return func.with_attr("op_pattern", OPAQUE)


class MaxPool(Rule):
    """The hand-scheduled max pool in place of its reference."""

    name = "max_pool"

    def apply(self, func: tirx.PrimFunc, cfg) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        found = annotated_block(sch, "max_pool")
        if found is None:
            return None
        geo = [int(v) for v in sch.get(found[0]).annotations[GEOMETRY_KEY]]
        data = func.params[0]
        dtype = str(data.ty.dtype)
        new = max_pool2d_func(tuple(int(v) for v in data.ty.shape), dtype, tuple(geo[0:2]),
                              tuple(geo[2:4]), tuple(geo[4:8]), tuple(geo[8:10]),
                              cfg.lanes(dtype), parallel=cfg.num_cores > 1,
                              native_max=cfg.indexed_fma)
        new = new.without_attr("global_symbol")
        return s_tir.Schedule(new.with_attrs(dict(func.attrs)) if func.attrs else new)
