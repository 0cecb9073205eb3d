"""Concatenation in place: the kernels feeding a ``concatenate`` write into its output.

Rewrites (``main`` after ``CallTIRRewrite``, before ``StaticPlanBlockMemory``)::

    a = builtin.alloc_tensor((1, 64, H, W)); conv_a(x, wa, a)
    b = builtin.alloc_tensor((1, 64, H, W)); conv_b(y, wb, b)
    out = builtin.alloc_tensor((1, 128, H, W)); concatenate(a, b, out)

into::

    out = builtin.alloc_tensor((1, 128, H, W))
    a = memory.view(out, (1, 64, H, W), offset 0); conv_a(x, wa, a)
    b = ensure_zero_offset(memory.view(out, (1, 64, H, W), offset 64*H*W*4)); conv_b(y, wb, b)

so the copy disappears (TensorRT's concatenation elimination; SqueezeNet's fire modules,
Inception's branches, the per-group convs of a grouped conv). A concatenation along an axis
whose leading dimensions are all 1 is a sequence of contiguous slices, so each input is a
plain view; ``StaticPlanBlockMemory`` treats ``memory.view`` and ``ensure_zero_offset`` as
aliases of their source (one storage token), so ``out`` lives from the first producer to its
last reader. ``ensure_zero_offset`` moves the data pointer, as kernels want byte_offset 0.

Preconditions, each checked (a concatenation that fails one is left as it is): the callee
is a plain concatenate kernel (`is_concat_kernel`: legalized, not fused); static shapes; the
axis's leading dimensions are 1; every slice starts `ALIGN` bytes apart (kernels assume
64-byte aligned data); every input is a fresh buffer (``builtin.alloc_tensor``) written by
exactly one kernel call and read by nothing but this concatenation (through var aliases);
all in one binding block.
"""

from __future__ import annotations

import math
import re

import numpy as np

from mdl_tvm.core.relax_utils import alias_chain, op_name, static_shape, uses_of, with_blocks
from mdl_tvm.core.specs import ALIGN

ALLOC = "relax.builtin.alloc_tensor"
INJECTIVE = 2  # relax OpPatternKind kInjective, the ``op_pattern`` of a legalized concat


def slice_offsets(in_shapes, out_shape, itemsize: int, align: int = ALIGN) -> list | None:
    """Byte offsets of the inputs of a concatenation inside its output, or None when the
    inputs are not contiguous, aligned slices of it (pure; shapes as int tuples)."""
    rank = len(out_shape)
    if not in_shapes or any(len(s) != rank for s in in_shapes):
        return None
    axes = [ax for ax in range(rank)
            if sum(s[ax] for s in in_shapes) == out_shape[ax]
            and all(s[d] == out_shape[d] for s in in_shapes for d in range(rank) if d != ax)]
    if len(axes) != 1 or any(d != 1 for d in out_shape[:axes[0]]):
        return None
    inner = math.prod(out_shape[axes[0] + 1:]) * itemsize
    offsets, start = [], 0
    for shape in in_shapes:
        if (start * inner) % align:
            return None
        offsets.append(start * inner)
        start += shape[axes[0]]
    return offsets


def is_concat_kernel(name: str, prim_func) -> bool:
    """True for a plain concatenate kernel: legalized from ``relax.concat`` (named
    ``concatenate``, ``concatenate1``, ...; ``mdl_group_concat`` for a grouped conv's
    parts) and not fused with anything (a fused one is ``fused_...``), injective."""
    attrs = prim_func.attrs or {}
    return (re.fullmatch(r"(concatenate|mdl_group_concat)\d*", name) is not None
            and int(attrs.get("op_pattern", -1)) == INJECTIVE)


def _is_kernel_call(mod, value) -> bool:
    from tvm import relax, tirx

    return (isinstance(value, relax.Call) and isinstance(value.op, relax.GlobalVar)
            and isinstance(mod[value.op], tirx.PrimFunc))


def _fresh_root(mod, var, bound, uses, concat):
    """The ``builtin.alloc_tensor`` var behind concat input `var` when that buffer is
    written by one kernel call and read by nothing but `concat` (through var aliases);
    else None."""
    from tvm import relax

    if not isinstance(var, relax.Var):
        return None
    chain = alias_chain(var, bound)
    root = chain[-1]
    if op_name(bound.get(root)) != ALLOC:
        return None
    aliases = set(chain)
    readers = [u for v in chain for u in uses.get(v, []) if u is None or u.var not in aliases]
    others = [u for u in readers if u is not concat]
    if readers.count(concat) != 1 or len(others) != 1 or others[0] is None:
        return None
    write = others[0].value
    if not _is_kernel_call(mod, write) or [a for a in write.args if a in aliases] != [root]:
        return None
    return root


def plan_concats(mod, bindings, result) -> dict:
    """``{concat binding: (out var, [(input buffer var, byte offset), ...])}`` for every
    concatenation of `bindings` (one block) that can be done in place."""
    bound = {b.var: b.value for b in bindings}
    uses = uses_of(bindings, result)
    plans = {}
    for b in bindings:
        if not (_is_kernel_call(mod, b.value)
                and is_concat_kernel(b.value.op.name_hint, mod[b.value.op])):
            continue
        *inputs, out = b.value.args
        if op_name(bound.get(out)) != ALLOC:
            continue
        roots = [_fresh_root(mod, v, bound, uses, b) for v in inputs]
        if any(r is None for r in roots) or len(set(roots)) != len(roots):
            continue
        shapes, out_shape = [static_shape(r) for r in roots], static_shape(out)
        if out_shape is None or any(s is None for s in shapes):
            continue
        offsets = slice_offsets(shapes, out_shape, np.dtype(str(out.ty.dtype)).itemsize)
        if offsets is not None:
            plans[b] = (out, list(zip(roots, offsets, strict=True)))
    return plans


def concat_in_place_block(mod, bindings, result) -> tuple[list, int]:
    """`bindings` with every plannable concatenation done in place, and how many were."""
    from tvm import relax

    plans = plan_concats(mod, bindings, result)
    bound = {b.var: b for b in bindings}
    first = {}  # the earliest input buffer's binding -> the concat output to allocate there
    views = {}  # input buffer var -> (concat output var, byte offset)
    for out, parts in plans.values():
        position = min(bindings.index(bound[r]) for r, _ in parts)
        first[bindings[position].var] = out
        views.update({r: (out, offset) for r, offset in parts})
    moved = {out for out, _ in plans.values()}
    bb = relax.BlockBuilder()
    new = []
    for b in bindings:
        if b in plans or b.var in moved:
            continue
        if b.var in first:
            new.append(bound[first[b.var]])
        if b.var not in views:
            new.append(b)
            continue
        out, offset = views[b.var]
        view = bb.normalize(relax.op.memory.view(
            out, relax.ShapeExpr(static_shape(b.var)), b.var.ty.dtype,
            relax.prim_value(offset, "int64")))
        if offset:  # kernels want byte_offset 0: move the data pointer (no copy)
            tmp = relax.Var(f"{b.var.name}_slice", view.ty)
            new.append(relax.VarBinding(tmp, view))
            view = bb.normalize(relax.op.memory.ensure_zero_offset(tmp))
        new.append(relax.VarBinding(b.var, view))
    return new, len(plans)


def concat_in_place(report: dict | None = None):
    """Module pass (after ``CallTIRRewrite``): every plannable concatenation of every Relax
    function done in place. `report` (optional) gets ``{"concats_in_place": n}``."""
    import tvm
    from tvm import relax

    report = {} if report is None else report

    @tvm.transform.module_pass(opt_level=0, name="MdlConcatInPlace")
    def _pass(mod, _ctx):
        total = 0
        for gvar, func in list(mod.functions.items()):
            if not isinstance(func, relax.Function):
                continue
            done = [concat_in_place_block(mod, list(block.bindings), func.body.body)
                    for block in func.body.blocks]
            count = sum(n for _, n in done)
            if count:  # a function without one stays the same object
                mod = with_blocks(mod, gvar.name_hint, [bindings for bindings, _ in done])
                total += count
        report["concats_in_place"] = total
        return mod

    return _pass
