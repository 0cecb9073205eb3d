"""Constant folding in numpy: the weight arithmetic of an imported model, without builds.

What it rewrites
----------------
Every binding whose value is a call of a simple op (elementwise arithmetic, ``sqrt``,
reshapes, transposes, ``astype``) on constants, or on variables this pass has
already folded, is bound to the computed constant instead. Batch-norm folding and
``DecomposeOpsForInference`` leave such chains by the hundred (``sqrt(var + eps)``,
``gamma / …``, ``W * scale``, ``beta - mean * scale``); TVM's ``FoldConstant`` evaluates each
one by legalizing, building and running a TIR kernel (MobileNetV2 at 32x32: 454 builds,
~18 s of a ~31 s host compile), numpy takes milliseconds. ``FoldConstant`` still runs after
this pass: it inlines the folded constants into their uses and folds whatever op this pass
does not know.

The results are bit-identical: every op here is a single IEEE-754 operation per element
in the tensor's own dtype (numpy computes float32 in float32), as TVM's kernels do.

Preconditions: static shapes on the folded values (a symbolic one is left to
``FoldConstant``).
"""

from __future__ import annotations

import numpy as np

from mdl_tvm.core.relax_utils import constant_value, op_name, static_shape, with_blocks

_BINARY = {"relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply,
           "relax.divide": np.divide}
_UNARY = {"relax.sqrt": np.sqrt, "relax.negative": np.negative}
_SHAPING = ("relax.reshape", "relax.expand_dims", "relax.squeeze", "relax.permute_dims",
            "relax.astype")  # only their first argument is a tensor
_FOLDABLE = frozenset(_BINARY) | frozenset(_UNARY) | frozenset(_SHAPING)


def evaluate(name: str, call, args: list[np.ndarray]) -> np.ndarray | None:
    """The value of one call of op `name` on numpy arguments, or None for a call this pass
    leaves to ``FoldConstant`` (an unknown op, integer or mixed dtypes, a symbolic shape)."""
    if name in _BINARY or name in _UNARY:  # float only: integer division rounds differently
        if any(a.dtype != args[0].dtype for a in args) or args[0].dtype.kind != "f":
            return None
        return (_BINARY.get(name) or _UNARY[name])(*args)
    shape = static_shape(call)
    if name not in _SHAPING or shape is None:
        return None
    if name == "relax.permute_dims":
        axes = call.attrs.axes
        return np.ascontiguousarray(np.transpose(
            args[0], None if axes is None else [int(a) for a in axes]))
    if name == "relax.astype":
        return args[0].astype(str(call.attrs.dtype))
    return args[0].reshape(shape)


def fold_constants(mod, func_name: str = "main"):
    """`mod` with the constant arithmetic of `func_name` evaluated in numpy (see module).

    Bindings keep their variables; a folded one is bound to a ``relax.const``."""
    from tvm import relax

    values, blocks = {}, []

    def numpy_of(arg):
        return values.get(arg) if isinstance(arg, relax.Var) else constant_value(arg)

    for block in mod[func_name].body.blocks:
        bindings = []
        for binding in block.bindings:
            value, name = binding.value, op_name(binding.value)
            if isinstance(binding, relax.VarBinding) and name in _FOLDABLE:
                args = [numpy_of(a) for a in list(value.args)[: 1 if name in _SHAPING else None]]
                result = (evaluate(name, value, args)
                          if all(a is not None for a in args) else None)
                if result is not None:
                    values[binding.var] = result
                    binding = relax.VarBinding(binding.var,
                                               relax.const(result, str(result.dtype)))
            bindings.append(binding)
        blocks.append(bindings)
    return with_blocks(mod, func_name, blocks) if values else mod
