"""Per-channel scale and shift after a convolution, folded into its weights and one bias.

What it rewrites
----------------
``conv2d(x, W)`` followed by a chain of ``add`` / ``subtract`` / ``multiply`` / ``divide``
by constants that vary per output channel at most (``(1, C, 1, 1)``, ``(C, 1, 1)`` or
scalars), each step the only use of the one before::

    y = ((conv2d(x, W) + b − mean) / sqrt(var + eps)) * gamma + beta

becomes ``conv2d(x, W * s[:, None, None, None]) + t`` with the chain's affine map
``y = s * conv + t`` composed in float64 (`compose`). This is batch-norm folding for the
cases TVM's ``FoldBatchnormToConv2D`` does not match: a conv with its own bias before the
BN (VGG-style), or a BN that was decomposed before it was folded. A chain that is already
one ``add`` (the canonical bias) is left alone; a chain that adds nothing leaves no ``add``.

The result differs from the unfused arithmetic by float32 rounding only (a few ulp).

Preconditions: NCHW / OIHW convolutions with a constant float32 weight; the module after
constant folding (constants inlined into their uses).
"""

from __future__ import annotations

import numpy as np

from mdl_tvm.core.relax_utils import constant_value, op_name, uses_of, with_blocks

_AFFINE = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide")


def channel_vector(value: np.ndarray, channels: int) -> np.ndarray | None:
    """`value` as a ``(channels,)`` float64 vector if it broadcasts per NCHW channel at most
    (a scalar, ``(1, C, 1, 1)``, ``(C, 1, 1)``, any of them with C = 1); else None."""
    value = np.asarray(value)
    shape = (1,) * (4 - value.ndim) + value.shape if value.ndim <= 4 else None
    if shape is None or shape[0] != 1 or shape[2:] != (1, 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1).astype(np.float64), (channels,)).copy()


def compose(steps, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """``(s, t)`` with ``chain(v) = s * v + t`` for `steps` of ``(op, c, c_first)``: ``op``
    one of add / subtract / multiply / divide, ``c`` a ``(channels,)`` vector and
    ``c_first`` whether it is the left operand. Raises ValueError for ``c / v``."""
    s, t = np.ones(channels), np.zeros(channels)
    for op, c, c_first in steps:
        if op == "relax.add":
            t = t + c
        elif op == "relax.subtract":
            s, t = (-s, c - t) if c_first else (s, t - c)
        elif op == "relax.multiply":
            s, t = s * c, t * c
        elif op == "relax.divide" and not c_first:
            s, t = s / c, t / c
        else:
            raise ValueError(f"{op} with the constant first is not affine in the conv output")
    return s, t


def nchw_constant_conv(value) -> bool:
    """`value` is an NCHW / OIHW (NCHW out) ``conv2d`` whose weight is a constant."""
    import tvm

    if op_name(value) != "relax.nn.conv2d" or not isinstance(value.args[1], tvm.ir.Constant):
        return False
    attrs = value.attrs
    return (str(attrs.data_layout), str(attrs.kernel_layout)) == ("NCHW", "OIHW") and \
        str(attrs.out_layout) in ("NCHW", "")


def _foldable_conv(value) -> bool:
    return nchw_constant_conv(value) and str(value.args[1].value.dtype) == "float32"


def _chains(func) -> dict:
    """``{conv var: (chain bindings, steps)}`` for every conv this pass can fold."""
    from tvm import relax

    bindings = [b for block in func.body.blocks for b in block.bindings]
    uses = uses_of(bindings, func.body.body)
    found = {}
    for b in bindings:
        if not (isinstance(b, relax.VarBinding) and _foldable_conv(b.value)):
            continue
        channels = int(b.value.args[1].value.shape[0])
        chain, steps, var = [], [], b.var
        while len(uses.get(var, ())) == 1 and uses[var][0] is not None:
            nxt = uses[var][0]
            if op_name(nxt.value) not in _AFFINE or len(nxt.value.args) != 2:
                break
            first = nxt.value.args[1].same_as(var)  # the constant is the left operand
            vector = constant_value(nxt.value.args[0 if first else 1])
            vector = None if vector is None else channel_vector(vector, channels)
            if vector is None or (first and op_name(nxt.value) == "relax.divide"):
                break
            chain.append(nxt)
            steps.append((op_name(nxt.value), vector, first))
            var = nxt.var
        if len(steps) > 1 or (steps and steps[0][0] != "relax.add"):
            found[b.var] = (chain, steps)
    return found


def fold_scale_shift(mod, func_name: str = "main"):
    """`mod` with every conv's per-channel affine chain folded (see module); unchanged
    when there is none."""
    from tvm import relax

    chains = _chains(mod[func_name])
    if not chains:
        return mod
    dropped = {b.var for chain, _ in chains.values() for b in chain}
    bb, blocks = relax.BlockBuilder(), []
    for block in mod[func_name].body.blocks:
        out = []
        for b in block.bindings:
            if b.var in dropped:
                continue
            if b.var not in chains:
                out.append(b)
                continue
            chain, steps = chains[b.var]
            weight = b.value.args[1].value.numpy()
            s, t = compose(steps, weight.shape[0])
            scaled = (weight * s.reshape(-1, 1, 1, 1)).astype(np.float32)
            conv = bb.normalize(relax.Call(b.value.op, [b.value.args[0], relax.const(scaled)],
                                           b.value.attrs, b.value.ty_args))
            last = chain[-1].var
            if not t.any():
                out.append(relax.VarBinding(last, conv))
                continue
            out.append(relax.VarBinding(b.var, conv))
            shift = relax.const(t.astype(np.float32).reshape(1, -1, 1, 1))
            out.append(relax.VarBinding(last, bb.normalize(relax.op.add(b.var, shift))))
        blocks.append(out)
    return with_blocks(mod, func_name, blocks)
