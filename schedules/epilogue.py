"""The element-wise epilogue of a fused function, as an expression a hand-written kernel
can apply where its accumulators are.

FuseOps appends the bias add, residual add, activation, casts ... after a kernel's
anchor block. `extract_epilogue` inlines them into one block, checks that it writes the
function's output ``out[i0, i1, ...]`` from the anchor's result at the same coordinates,
and returns an `Epilogue`: ``epilogue.store(indices, value)`` is the statement that
writes ``out[indices]`` with everything the fused operators do, the anchor's result
replaced by `value` (an accumulator) and the other inputs (bias, residual) read at
`indices`. A kernel emits it inside a vectorised loop, so the epilogue is applied while
the accumulators are in registers and the output is written once.

TVM 0.27 has no Python expression mutator; `rewrite` rebuilds the node kinds epilogues
are made of and raises `UnsupportedEpilogue` on anything else (the rule then declines).
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm.ir.expr as ir_expr
from tvm import s_tir, tirx
from tvm.ir.prim import expr as prim

from schedules.common import annotated_block, is_spatial, root_blocks


class UnsupportedEpilogue(Exception):
    """The fused function's epilogue is not a chain of element-wise blocks we can apply."""


_BINARY = (prim.Add, prim.Sub, prim.Mul, prim.Div, prim.Mod, prim.FloorDiv, prim.FloorMod,
           prim.Min, prim.Max, prim.EQ, prim.NE, prim.LT, prim.LE, prim.GT, prim.GE,
           prim.And, prim.Or)
_LEAVES = (prim.IntImm, prim.FloatImm, ir_expr.StringImm)


def rewrite(expr, replace):
    """Rebuild `expr` bottom-up; ``replace(node)`` returns a substitute or None."""
    new = replace(expr)
    if new is not None:
        return new
    if isinstance(expr, _BINARY):
        return type(expr)(rewrite(expr.a, replace), rewrite(expr.b, replace))
    if isinstance(expr, prim.Not):
        return prim.Not(rewrite(expr.a, replace))
    if isinstance(expr, prim.Cast):
        return prim.Cast(expr.ty.dtype, rewrite(expr.value, replace))
    if isinstance(expr, prim.Select):
        return prim.Select(rewrite(expr.condition, replace), rewrite(expr.true_value, replace),
                           rewrite(expr.false_value, replace))
    if isinstance(expr, ir_expr.Call):
        return ir_expr.Call(expr.op, [rewrite(a, replace) for a in expr.args], expr.attrs,
                            expr.ty_args, None, expr.ty)
    if isinstance(expr, ir_expr.TensorLoad):
        return expr.source[tuple(rewrite(i, replace) for i in expr.indices)]
    if isinstance(expr, _LEAVES) or isinstance(expr, ir_expr.Var):
        return expr
    raise UnsupportedEpilogue(f"cannot rebuild {type(expr).__name__} in an epilogue")


@dataclass
class Epilogue:
    """The output store of a fused function, as a function of coordinates and a value.

    Attributes
    ----------
    output : Var
        The output buffer (a parameter of the function).
    iter_vars : list of Var
        The coordinates the store is written in (``out[iter_vars]``).
    value : PrimExpr
        The stored expression; reads the anchor's result as ``anchor[iter_vars]``.
    anchor : Var
        The anchor's result buffer, or the output itself when nothing follows the anchor.
    """

    output: object
    iter_vars: list
    value: object
    anchor: object

    def expr(self, indices, value):
        """The stored value at `indices` with the anchor's result replaced by `value`."""
        subst = dict(zip((v for v in self.iter_vars), indices, strict=True))

        def _replace(node):
            if isinstance(node, ir_expr.TensorLoad) and node.source.same_as(self.anchor):
                if len(node.indices) != len(self.iter_vars) or not all(
                        isinstance(i, ir_expr.Var) and i.same_as(v)
                        for i, v in zip(node.indices, self.iter_vars, strict=True)):
                    raise UnsupportedEpilogue("the epilogue reads the anchor elsewhere")
                return value
            if isinstance(node, ir_expr.Var):
                for var, new in subst.items():
                    if node.same_as(var):
                        return new
            return None

        return rewrite(self.value, _replace)

    def store(self, indices, value):
        """``out[indices] = epilogue(value)`` as a statement."""
        return tirx.BufferStore(self.output, self.expr(indices, value), list(indices))


def extract_epilogue(func: tirx.PrimFunc, anchor_rule: str) -> Epilogue:
    """The `Epilogue` after the block annotated ``mdl.rule == anchor_rule`` in `func`.

    Raises
    ------
    UnsupportedEpilogue
        No such anchor, a non-element-wise block after it, a block that cannot be inlined,
        or a final store that is not ``out[iter_vars] = f(anchor[iter_vars], ...)``.
    """
    sch = s_tir.Schedule(func)
    found = annotated_block(sch, anchor_rule)
    if found is None:
        raise UnsupportedEpilogue(f"no block annotated {anchor_rule!r}")
    anchor = found[0]
    blocks = root_blocks(sch)
    index = next(i for i, b in enumerate(blocks) if sch.get(b).same_as(sch.get(anchor)))
    after = blocks[index + 1:]
    anchor_buf = sch.get(anchor).writes[0].source
    if not after:  # the anchor writes the output: the epilogue is the identity
        iter_vars = [iv.var for iv in sch.get(anchor).iter_vars
                     if iv.iter_type == tirx.IterVar.DataPar]
        return Epilogue(anchor_buf, iter_vars, anchor_buf[tuple(iter_vars)], anchor_buf)
    if not all(is_spatial(sch, b) for b in after):
        raise UnsupportedEpilogue("a reduction after the anchor")
    for block in after[:-1]:
        try:
            sch.compute_inline(block)
        except Exception as err:  # noqa: BLE001 - several consumers, opaque ...
            raise UnsupportedEpilogue(f"cannot inline {sch.get(block).name_hint}") from err
    last = sch.get(after[-1])
    store = last.body
    if not isinstance(store, tirx.BufferStore):
        raise UnsupportedEpilogue("the last block is not a single store")
    iter_vars = [iv.var for iv in last.iter_vars]
    if len(store.indices) != len(iter_vars) or not all(
            isinstance(i, ir_expr.Var) and i.same_as(v)
            for i, v in zip(store.indices, iter_vars, strict=True)):
        raise UnsupportedEpilogue("the output is not written at the block's coordinates")
    if not any(p.same_as(store.buffer) for p in func.params):
        raise UnsupportedEpilogue("the epilogue does not write a function output")
    return Epilogue(store.buffer, iter_vars, store.value, anchor_buf)
