"""A channel shuffle written as one gather of channels, so channel pruners can follow it.

What it rewrites
----------------
ShuffleNet's channel shuffle (Zhang et al., CVPR 2018; ShuffleNetV2, Ma et al., ECCV 2018)
as PyTorch and ONNX export it::

    y = reshape(x, (N, g, C / g, H, W))
    y = permute_dims(y, (0, 2, 1, 3, 4))
    y = reshape(y, (N, C, H, W))

is a fixed permutation of the channels: output channel ``o`` is input channel
``(o % g) * (C / g) + o // g``. It becomes ``take(x, perm, axis=1)``, exactly the same
values. A gather names where each channel goes, so `channel_graph` can follow the
channels through it (a 5-D reshape hides them), and after pruning `channel_rewrite` only
has to recompute the indices: the pruned network's "shuffle" is a gather of whatever
channels are left, which a reshape-transpose could no longer express.

Preconditions: NCHW, static shapes; the first reshape and the transpose feed only the
next step. Anything else is left alone. Compression runs it before its analysis; an
uncompressed build keeps the reshape-transpose.
"""

from __future__ import annotations

import numpy as np

from mdl_tvm.core.relax_utils import op_name, static_shape, uses_of, with_blocks


def shuffle_permutation(channels: int, groups: int) -> np.ndarray:
    """Input channel of each output channel of a `groups`-way channel shuffle."""
    out = np.arange(channels)
    return (out % groups) * (channels // groups) + out // groups


def _shuffle_source(b, bound: dict, uses: dict):
    """``(x, groups)`` when binding `b` ends a channel shuffle of `x`, else None."""
    if op_name(b.value) != "relax.reshape":
        return None
    perm = bound.get(b.value.args[0])
    if perm is None or op_name(perm.value) != "relax.permute_dims" \
            or len(uses.get(perm.var, ())) != 1:
        return None
    split = bound.get(perm.value.args[0])
    if split is None or op_name(split.value) != "relax.reshape" \
            or len(uses.get(split.var, ())) != 1:
        return None
    x = split.value.args[0]
    shape4, shape5, out = static_shape(x), static_shape(split.var), static_shape(b.var)
    axes = [int(a) for a in perm.value.attrs.axes or ()]
    if shape4 is None or shape5 is None or out != shape4 or len(shape4) != 4 \
            or axes != [0, 2, 1, 3, 4]:
        return None
    n, c, h, w = shape4
    groups = shape5[1]
    if groups < 1 or c % groups or shape5 != (n, groups, c // groups, h, w):
        return None
    return x, groups


def shuffle_as_take(mod, func_name: str = "main"):
    """`mod` with every channel shuffle of `func_name` a ``take`` along the channels (see
    module); the same module when there is none."""
    from tvm import relax

    func = mod[func_name]
    blocks = list(func.body.blocks)
    bindings = [b for block in blocks for b in block.bindings]
    bound, uses = {b.var: b for b in bindings}, uses_of(bindings, func.body.body)
    found = {b.var: hit for b in bindings if (hit := _shuffle_source(b, bound, uses))}
    if not found:
        return mod
    bb = relax.BlockBuilder()
    out_blocks = []
    for block in blocks:
        out = []
        for b in block.bindings:
            if b.var in found:
                x, groups = found[b.var]
                perm = shuffle_permutation(static_shape(x)[1], groups).astype("int64")
                out.append(relax.VarBinding(b.var, bb.normalize(
                    relax.op.take(x, relax.const(perm), axis=1))))
            else:
                out.append(b)
        out_blocks.append(out)
    new = with_blocks(mod, func_name, out_blocks)
    return relax.transform.DeadCodeElimination([func_name])(new)
