"""Small questions about Relax expressions that passes, rules and the compiler all ask.

Pure functions over TVM objects; `tvm` is imported when a function runs, so importing this
module stays cheap (the runtime side never needs it).
"""

from __future__ import annotations

import numpy as np


def static_shape(expr) -> tuple[int, ...] | None:
    """The static shape of a Relax expression (or a type with a ``shape``), or None when
    it has none or a symbolic one."""
    ty = getattr(expr, "ty", expr)
    shape = getattr(ty, "shape", None)
    if shape is None:
        return None
    try:
        return tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        return None


def op_name(call) -> str:
    """``"relax.nn.conv2d"`` for a call of a registered op; ``""`` for anything else."""
    import tvm

    op = getattr(call, "op", None)
    return op.name if isinstance(op, tvm.ir.Op) else ""


def vars_in(expr) -> list:
    """Every `relax.Var` that `expr` reads, in post order (with repeats)."""
    from tvm import relax

    found = []
    relax.analysis.post_order_visit(
        expr, lambda e: found.append(e) if isinstance(e, relax.Var) else None)
    return found


def alias_chain(expr, bound: dict) -> list:
    """``[expr, ...]``: `expr` followed back through var-to-var bindings (``bound``: var ->
    bound value) to the first var bound to something else, or to a non-var; the last item
    is the root."""
    from tvm import relax

    chain = [expr]
    while isinstance(chain[-1], relax.Var) and isinstance(bound.get(chain[-1]), relax.Var):
        chain.append(bound[chain[-1]])
    return chain


def uses_of(bindings, result) -> dict:
    """``{var: [binding, ...]}``: every binding of `bindings` that reads the var, and None
    once per read by the function's `result` expression."""
    uses: dict = {}
    for b in bindings:
        for v in vars_in(b.value):
            uses.setdefault(v, []).append(b)
    for v in vars_in(result):
        uses.setdefault(v, []).append(None)
    return uses


def main_bindings(mod, func_name: str = "main"):
    """``(bindings, function)`` of `func_name`'s single dataflow block.

    Raises
    ------
    ValueError
        When the function has more than one binding block (it was already lowered).
    """
    func = mod[func_name]
    blocks = list(func.body.blocks)
    if len(blocks) != 1:
        raise ValueError(
            f"{func_name} has {len(blocks)} binding blocks; graph passes need exactly one "
            "dataflow block (run them before lowering)"
        )
    return list(blocks[0].bindings), func


def bound_constants(mod, func_name: str = "main") -> dict:
    """``{(binding number, arg index): numpy array}`` for every constant call argument."""
    import tvm

    bindings, _ = main_bindings(mod, func_name)
    consts = {}
    for index, binding in enumerate(bindings):
        for i, arg in enumerate(getattr(binding.value, "args", ())):
            if isinstance(arg, tvm.ir.Constant) and hasattr(arg.value, "numpy"):
                consts[(index, i)] = arg.value.numpy()
    return consts


def flatten_outputs(value) -> list[np.ndarray]:
    """A VM result (a tensor, or nested tuples of tensors) as a flat list of numpy arrays
    (copies: the VM may reuse a result's memory)."""
    if hasattr(value, "numpy"):
        return [value.numpy()]
    if hasattr(value, "__dlpack__"):  # a tvm-ffi tensor (the runtime without `tvm`)
        return [np.from_dlpack(value).copy()]
    if hasattr(value, "__iter__"):
        return [arr for item in value for arr in flatten_outputs(item)]
    raise TypeError(f"unexpected VM output of type {type(value).__name__}")


def int_values(expr) -> list[int]:
    """The integers of a Relax tuple of immediates (``strided_slice``'s axes / begin / end)
    or of a plain sequence."""
    return [int(getattr(f, "value", f)) for f in getattr(expr, "fields", expr)]


def constant_value(arg) -> np.ndarray | None:
    """A call argument as numpy when it is a constant: a tensor constant, or a scalar
    immediate such as an epsilon (``T.float32(1e-05)``); None for anything else."""
    import tvm

    if isinstance(arg, (tvm.tirx.FloatImm, tvm.tirx.IntImm)):  # before Constant: a subclass
        return np.asarray(arg.value, dtype=str(arg.ty))
    if isinstance(arg, tvm.ir.Constant) and hasattr(arg.value, "numpy"):
        return arg.value.numpy()
    return None


def with_blocks(mod, func_name: str, blocks: list):
    """A copy of `mod` whose function `func_name` has the binding `blocks` (lists of
    bindings, one per block of the original body, same kinds) and the same result."""
    import tvm
    from tvm import relax

    func = mod[func_name]
    new_blocks = [(relax.DataflowBlock if isinstance(old, relax.DataflowBlock)
                   else relax.BindingBlock)(bindings)
                  for old, bindings in zip(func.body.blocks, blocks, strict=True)]
    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    out[func_name] = relax.Function(func.params, relax.SeqExpr(new_blocks, func.body.body),
                                    func.ret_ty, func.is_pure, func.attrs)
    return out
