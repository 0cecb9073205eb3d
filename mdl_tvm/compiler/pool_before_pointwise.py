"""An average pool after a pointwise (1x1) convolution, moved in front of it.

What it rewrites
----------------
``avg_pool2d(conv2d(x, W) [+ b])`` with a 1x1, stride-1, unpadded convolution becomes
``conv2d(avg_pool2d(x), W) [+ b]``. A 1x1 convolution (grouped or not) and its bias are an
affine map applied to each pixel on its own, and an average pool without padding is a
convex combination of pixels (weights summing to one), so the two commute exactly; the
result differs by float32 rounding only. The convolution then runs on the pooled map:
a ``k x k`` pool of stride ``k`` divides its MACs by ``k * k``.

This is DenseNet's transition layer (BN → ReLU → 1x1 conv → 2x2 average pool: three
quarters of its MACs go), and any "project, then downsample by averaging" block.

Preconditions: NCHW / OIHW; the pool has no padding, no dilation and ``ceil_mode`` off;
the bias, if any, is a constant that varies per output channel at most; the convolution
and its bias feed only the pool. Anything else is left alone. Run it after the BN
folding of the prepare stage (a BN between conv and pool is then the bias).
"""

from __future__ import annotations

from mdl_tvm.compiler.fold_scale_shift import channel_vector, nchw_constant_conv
from mdl_tvm.core.relax_utils import constant_value, op_name, uses_of, with_blocks


def _ints(values) -> list[int]:
    return [int(v) for v in values]


def _pointwise(conv) -> bool:
    """A 1x1, stride-1, unpadded, undilated NCHW / OIHW convolution with a constant weight."""
    if not nchw_constant_conv(conv):
        return False
    a = conv.attrs
    return tuple(conv.args[1].value.shape[2:]) == (1, 1) and _ints(a.strides) == [1, 1] \
        and not any(_ints(a.padding)) and _ints(a.dilation) == [1, 1]


def _plain_average(pool) -> bool:
    if op_name(pool) != "relax.nn.avg_pool2d":
        return False
    a = pool.attrs
    return str(a.layout) == "NCHW" \
        and str(a.out_layout) in ("NCHW", "") and not any(_ints(a.padding)) \
        and _ints(a.dilation) == [1, 1] and not bool(a.ceil_mode)


def _swaps(bindings, result) -> dict:
    """``{pool binding var: (conv binding, bias binding or None)}`` for every match."""
    uses = {v: len(readers) for v, readers in uses_of(bindings, result).items()}
    bound = {b.var: b for b in bindings}
    found = {}
    for b in bindings:
        if not _plain_average(b.value) or uses.get(b.value.args[0]) != 1:
            continue
        fed, bias = bound.get(b.value.args[0]), None
        if fed is not None and op_name(fed.value) == "relax.add":
            left, right = fed.value.args
            if constant_value(left) is not None:  # the constant first
                left, right = right, left
            value = constant_value(right)
            conv = bound.get(left)
            if conv is None or value is None or uses.get(left) != 1 \
                    or not _pointwise(conv.value) or channel_vector(
                    value, int(conv.value.args[1].value.shape[0])) is None:
                continue
            fed, bias = conv, fed
        if fed is not None and _pointwise(fed.value):
            found[b.var] = (fed, bias)
    return found


def pool_before_pointwise(mod, func_name: str = "main"):
    """`mod` with every average pool that follows a 1x1 convolution moved in front of it
    (see module); unchanged when there is none."""
    from tvm import relax

    func = mod[func_name]
    blocks = list(func.body.blocks)
    swaps = _swaps([b for block in blocks for b in block.bindings], func.body.body)
    if not swaps:
        return mod
    dropped = {b.var for conv, bias in swaps.values() for b in (conv, bias) if b is not None}
    bb, out_blocks = relax.BlockBuilder(), []
    for block in blocks:
        kind = relax.DataflowVar if isinstance(block, relax.DataflowBlock) else relax.Var
        out = []
        for b in block.bindings:
            if b.var in dropped:
                continue
            if b.var not in swaps:
                out.append(b)
                continue
            conv, bias = swaps[b.var]
            pooled = bb.normalize(relax.Call(b.value.op, [conv.value.args[0]], b.value.attrs))
            pooled_var = kind(f"{b.var.name}_pooled", pooled.ty)
            out.append(relax.VarBinding(pooled_var, pooled))
            moved = bb.normalize(relax.Call(conv.value.op, [pooled_var, conv.value.args[1]],
                                            conv.value.attrs))
            if bias is not None:
                constant = next(a for a in bias.value.args if constant_value(a) is not None)
                conv_var = kind(f"{conv.var.name}_after_pool", moved.ty)
                out.append(relax.VarBinding(conv_var, moved))
                moved = bb.normalize(relax.op.add(conv_var, constant))
            out.append(relax.VarBinding(b.var, moved))
        out_blocks.append(out)
    return with_blocks(mod, func_name, out_blocks)
