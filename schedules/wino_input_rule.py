"""Rule for the Winograd input transform: the TE reference and its replacement.

`input_transform_reference` is the transform written plainly in TE (``V[e1 * alpha + e2,
c, t] = (B^T d_t B)[e1, e2]`` for the zero-padded tile ``d_t``; padded tile columns repeat
the last tile), the function `schedules.legalize` emits -- marked opaque
(``op_pattern``) so FuseOps keeps it a call of its own -- and the reference the tests
compare with.

Recognises
    a PrimFunc whose root block is annotated ``mdl.rule = "winograd_input"`` (its geometry
    in ``mdl.winograd_input``).

Schedule
    replaces it by `schedules.wino_input.input_transform_func`, the hand-scheduled kernel
    (vectors of tiles, shuffles instead of gathers).
"""

from __future__ import annotations

from tvm import s_tir, te, tirx

from schedules.common import Rule, annotated_block
from schedules.compute import RULE_KEY
from schedules.wino_input import OPAQUE, input_transform_func
from schedules.wino_math import matrices, pick, transform_rows

GEOMETRY_KEY = "mdl.winograd_input"
# Channel ranges per core of the parallel loop: each allocates its scratch once (a runtime
# call per allocation), enough of them to balance the cores.
_TASKS_PER_CORE = 4


def input_transform_reference(data_shape, data_dtype: str, padding, m: int, dtype: str,
                              tiles_padded: int) -> tirx.PrimFunc:
    """The input transform as a TE PrimFunc (see the module docstring).

    Parameters are those of `schedules.wino_input.input_transform_func`.
    """
    n, c, h, w = (int(v) for v in data_shape)
    top, left, bottom, right = padding
    alpha = m + 2
    n_h, n_w = -(-(h + top + bottom - 2) // m), -(-(w + left + right - 2) // m)
    tiles = n * n_h * n_w
    _, _, bt = matrices(m, dtype)
    data = te.placeholder((n, c, h, w), data_dtype, name="data")

    def _pixel(ch, t, r, q):
        t = tirx.min(t, tiles - 1)
        rest = t % (n_h * n_w)
        y, x = rest // n_w * m + r - top, rest % n_w * m + q - left
        inside = tirx.all(y >= 0, y < h, x >= 0, x < w)
        value = data[t // (n_h * n_w), ch, tirx.max(tirx.min(y, h - 1), 0),
                     tirx.max(tirx.min(x, w - 1), 0)].astype(dtype)
        return tirx.if_then_else(inside, value, tirx.const(0, dtype))

    rows = te.compute((c, tiles_padded, alpha, alpha), lambda ch, t, r, e2: pick(
        e2, transform_rows(bt, [_pixel(ch, t, r, q) for q in range(alpha)], dtype)),
        name="mdl_winograd_rows")
    out = te.compute((alpha * alpha, c, tiles_padded), lambda e, ch, t: pick(
        e // alpha, transform_rows(bt, [rows[ch, t, r, e % alpha] for r in range(alpha)],
                                   dtype)),
        name="mdl_winograd_input",
        attrs={RULE_KEY: "winograd_input",
               GEOMETRY_KEY: [*padding, m, tiles_padded]})
    func = te.create_prim_func([data, out]).without_attr("global_symbol")
    return func.with_attr("op_pattern", OPAQUE)


class WinogradInput(Rule):
    """The hand-scheduled input transform in place of its reference."""

    name = "winograd_input"

    def apply(self, func: tirx.PrimFunc, cfg) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        found = annotated_block(sch, "winograd_input")
        if found is None:
            return None
        block = sch.get(found[0])
        top, left, bottom, right, m, tiles_padded = (
            int(v) for v in block.annotations[GEOMETRY_KEY])
        data = func.params[0]
        dtype = str(block.writes[0].source.ty.dtype)
        lanes = cfg.lanes(dtype)
        if tiles_padded % lanes:
            return None
        new = input_transform_func(tuple(int(v) for v in data.ty.shape), str(data.ty.dtype),
                                   (top, left, bottom, right), m, dtype, lanes, tiles_padded,
                                   parallel=cfg.num_cores > 1,
                                   tasks=_TASKS_PER_CORE * cfg.num_cores)
        new = new.without_attr("global_symbol")
        return s_tir.Schedule(new.with_attrs(dict(func.attrs)) if func.attrs else new)
