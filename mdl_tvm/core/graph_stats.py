"""Static statistics of a high-level Relax module: weight bytes, MACs, operator counts.

Read from the graph before lowering, so they describe the network (after compression and
precision passes), not TVM's generated loops.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from mdl_tvm.core.relax_utils import static_shape


@dataclass(frozen=True)
class GraphStats:
    """What `CompiledModel.summary()` reports about the network."""

    weight_bytes: int
    num_weights: int
    macs: int
    op_counts: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "weight_bytes": self.weight_bytes,
            "num_weights": self.num_weights,
            "macs": self.macs,
            "op_counts": dict(self.op_counts),
        }


def _call_macs(op_name: str, call, out_shape) -> int:
    if out_shape is None:
        return 0
    out_elems = int(np.prod(out_shape))
    if op_name in ("relax.nn.conv2d", "relax.nn.conv1d", "relax.nn.conv2d_transpose"):
        w_shape = static_shape(call.args[1])
        if w_shape is None:
            return 0
        if op_name == "relax.nn.conv2d_transpose":  # weight IOHW: each input feeds O*kh*kw outputs
            in_shape = static_shape(call.args[0])
            return int(np.prod(in_shape)) * int(np.prod(w_shape[1:])) if in_shape else 0
        return out_elems * int(np.prod(w_shape[1:]))  # (C_in / groups) * kernel
    if op_name == "relax.matmul":
        a_shape = static_shape(call.args[0])
        return out_elems * (a_shape[-1] if a_shape else 0)
    if op_name == "relax.linear":
        a_shape = static_shape(call.args[0])
        return out_elems * (a_shape[-1] if a_shape else 0)
    return 0


def graph_stats(mod, func_name: str = "main") -> GraphStats:
    """Compute `GraphStats` for one Relax function of `mod`.

    Constants used several times count once (by identity).
    """
    import tvm
    from tvm import relax

    ops: Counter = Counter()
    macs = 0
    seen_consts: dict[int, int] = {}

    def visit(expr):
        nonlocal macs
        if isinstance(expr, tvm.ir.Constant):
            if hasattr(expr.value, "numpy"):  # tensors; scalar constants carry no weights
                seen_consts.setdefault(expr.__hash__(), int(expr.value.numpy().nbytes))
            return
        if isinstance(expr, relax.Call):
            for arg in expr.args:
                visit(arg)
            if isinstance(expr.op, tvm.ir.Op):
                name = expr.op.name
                ops[name.removeprefix("relax.")] += 1
                macs += _call_macs(name, expr, static_shape(expr))
        elif isinstance(expr, relax.Tuple):
            for field_ in expr.fields:
                visit(field_)

    func = mod[func_name]
    body = func.body
    for block in getattr(body, "blocks", []):
        for binding in block.bindings:
            visit(binding.value)
    return GraphStats(
        weight_bytes=sum(seen_consts.values()),
        num_weights=len(seen_consts),
        macs=macs,
        op_counts=dict(sorted(ops.items())),
    )


def binding_costs(mod, func_name: str = "main") -> dict[int, tuple[int, int]]:
    """``{binding number: (weights, MACs)}`` for each call of `func_name`'s first block:
    weights are the elements of its constant tensor arguments."""
    import tvm
    from tvm import relax

    costs = {}
    blocks = list(getattr(mod[func_name].body, "blocks", []))
    for index, binding in enumerate(blocks[0].bindings if blocks else []):
        call = binding.value
        if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
            continue
        weights = sum(int(np.prod(a.value.numpy().shape)) for a in call.args
                      if isinstance(a, tvm.ir.Constant) and hasattr(a.value, "numpy"))
        costs[index] = (weights, _call_macs(call.op.name, call, static_shape(call)))
    return costs
