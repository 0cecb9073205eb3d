"""Apply channel edits to a Relax function: the structural half of every channel pruner.

An edit says: on constant argument `arg` of binding `binding`, replace the rows of the
ref's channels on `axis` (``[offset, offset + length)``, or `WeightRef.rows`; each channel
spanning `span` rows) by ``matrix @ rows``, where `matrix` is ``(k, length)``: new channel
``j`` takes the place of the ref's channel ``j``, the rows of its channels ``k..`` go.
Selection matrices prune, averaging matrices replace a cluster by its centroid, 0/1
membership matrices sum a consumer's inputs over a cluster. Edits on different axes of
one weight compose (they are linear, so their order does not matter); the edits of one
axis are applied together, each reading the original rows.

The function is then rebuilt binding by binding with a `BlockBuilder`, which re-infers
every shape; depthwise convs get ``groups`` equal to their new channel count, flatten
reshapes get their new size, and splits and gathers of channels their new indices
(`channel_classes.moved_attrs`). The pure numpy part is `apply_edits`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdl_tvm.core.relax_utils import int_values, main_bindings
from relay_passes.channel_layout import WeightRef, unit_columns


@dataclass(frozen=True)
class Edit:
    ref: WeightRef
    matrix: np.ndarray  # (k, ref.length)


def apply_edit(array: np.ndarray, edit: Edit) -> np.ndarray:
    """Return `array` with `edit` applied (pure numpy)."""
    return apply_edits(array, [edit])


def _apply_axis(array: np.ndarray, edits: list[Edit], axis: int) -> np.ndarray:
    """The edits of one axis, each reading the original rows (their refs are disjoint)."""
    moved = np.moveaxis(array, axis, 0)
    result, alive = moved.copy(), np.ones(len(moved), bool)
    for edit in edits:
        ref, matrix = edit.ref, edit.matrix
        k = len(matrix)
        if matrix.shape[1] != ref.length or k > ref.length:
            raise ValueError(f"a {matrix.shape[0]}x{matrix.shape[1]} edit does not fit "
                             f"{ref.length} channels")
        cols = unit_columns(ref, ref.span)
        block = moved[cols.ravel()].reshape((ref.length, ref.span) + moved.shape[1:])
        new = np.tensordot(matrix.astype(np.float64), block.astype(np.float64), axes=(1, 0))
        result[cols[:k].ravel()] = new.reshape((-1,) + moved.shape[1:])
        alive[cols[k:].ravel()] = False
    return np.moveaxis(result[alive], 0, axis)


def _apply_grouped(array: np.ndarray, edit: Edit) -> np.ndarray:
    """A grouped conv's input edit: row block g of the weight (axis 0) holds channel block
    g's columns on `ref.axis`, so the matrix must be block diagonal."""
    ref, matrix, g = edit.ref, edit.matrix, edit.ref.groups
    k, c = matrix.shape
    if k % g or c % g or array.shape[0] % g or ref.offset or ref.span != 1:
        raise ValueError(f"a {k}x{c} edit does not split into the {g} groups of a grouped conv")
    parts = []
    for b, rows in enumerate(np.split(array, g, axis=0)):
        band = matrix[b * k // g:(b + 1) * k // g]  # the new channels of group b
        sub = band[:, b * c // g:(b + 1) * c // g]
        if np.any(np.delete(band, np.s_[b * c // g:(b + 1) * c // g], axis=1)):
            raise ValueError(f"the edit mixes channels of different groups of a {g}-group conv")
        parts.append(apply_edit(rows, Edit(WeightRef(ref.binding, ref.arg, ref.axis, 0,
                                                     c // g), sub)))
    return np.concatenate(parts, axis=0)


def apply_edits(array: np.ndarray, edits: list[Edit]) -> np.ndarray:
    """Apply all `edits` of one weight: axis by axis (a grouped conv's input edit alone
    on its axis)."""
    for axis in sorted({e.ref.axis for e in edits}):
        on_axis = [e for e in edits if e.ref.axis == axis]
        grouped = [e for e in on_axis if e.ref.groups > 1]
        if grouped and len(on_axis) > 1:
            raise ValueError("a grouped conv's input edit must be the only one on its axis")
        array = _apply_grouped(array, grouped[0]) if grouped else _apply_axis(array, on_axis,
                                                                              axis)
    return array


def rewrite(mod, edits: list[Edit], depthwise: set[int] = frozenset(),
            flattens: set[int] = frozenset(), func_name: str = "main", *,
            replace: dict | None = None, outputs: tuple[int, ...] = (),
            moves: dict | None = None):
    """Return a copy of `mod` with `edits` applied to `func_name`'s constants.

    `replace` maps ``(binding, arg)`` to a new array for that constant (applied before the
    edits; used by least-squares recovery). `outputs` lists binding numbers whose values
    are returned too: ``main`` then returns ``(original output, *those values)`` — a
    *probe* of intermediate activations. `moves` maps a split's or gather's binding to
    its new split points or indices (`channel_classes.moved_attrs`).
    """
    replace, moves = replace or {}, moves or {}
    import tvm
    from tvm import relax

    by_arg: dict[tuple[int, int], list[Edit]] = {}
    for edit in edits:
        by_arg.setdefault((edit.ref.binding, edit.ref.arg), []).append(edit)
    bindings, func = main_bindings(mod, func_name)

    bb = relax.BlockBuilder()
    var_map: dict[int, relax.Expr] = {}  # hash(old var) -> new var
    params = [relax.Var(p.name, p.ty) for p in func.params]
    for old, new in zip(func.params, params, strict=True):
        var_map[hash(old)] = new

    def remap(expr):
        if isinstance(expr, relax.Var):
            return var_map[hash(expr)]
        if isinstance(expr, relax.Tuple):
            return relax.Tuple([remap(f) for f in expr.fields])
        return expr

    def new_call(name, call):
        args = []
        for i, arg in enumerate(call.args):
            arg_edits = by_arg.get((name, i))
            if (name, i) in replace:
                value = np.asarray(replace[(name, i)], dtype=arg.value.numpy().dtype)
                args.append(relax.const(apply_edits(value, arg_edits or [])))
            elif arg_edits:
                args.append(relax.const(apply_edits(arg.value.numpy(), arg_edits)))
            else:
                args.append(remap(arg))
        op = call.op.name if isinstance(call.op, tvm.ir.Op) else ""
        if op == "relax.nn.conv2d" and name in depthwise:
            a = call.attrs
            return relax.op.nn.conv2d(
                args[0], args[1], strides=a.strides, padding=a.padding, dilation=a.dilation,
                groups=_shape_of(args[1])[0], data_layout=a.data_layout,
                kernel_layout=a.kernel_layout, out_layout=a.out_layout, out_dtype=a.out_dtype)
        if op == "relax.take" and name in moves:
            indices = np.asarray(moves[name], dtype=call.args[1].value.numpy().dtype)
            return relax.op.take(args[0], relax.const(indices), axis=call.attrs.axis,
                                 mode=call.attrs.mode)
        if op == "relax.split" and name in moves:
            return relax.op.split(args[0], list(moves[name]), axis=call.attrs.axis)
        if op == "relax.strided_slice" and name in moves:
            return _channel_slice(call, args[0], *moves[name])
        if op == "relax.reshape" and name in flattens:
            in_shape = _shape_of(args[0])
            return relax.op.reshape(args[0], (in_shape[0], int(np.prod(in_shape[1:]))))
        return relax.Call(call.op, args, call.attrs, call.ty_args)

    with bb.function(func_name, params, attrs=dict(func.attrs) if func.attrs else None):
        with bb.dataflow():
            for index, binding in enumerate(bindings):
                name, value = binding.var.name, binding.value
                if isinstance(value, relax.Call):
                    expr = new_call(index, value)
                elif isinstance(value, relax.TupleGetItem):
                    expr = relax.TupleGetItem(remap(value.tuple_value), value.index)
                else:
                    expr = remap(value)
                dataflow = isinstance(binding.var, relax.DataflowVar) and index not in outputs
                emit = bb.emit if dataflow else bb.emit_output
                var_map[hash(binding.var)] = emit(expr, name_hint=name)
        result = remap(func.body.body)
        if outputs:
            result = relax.Tuple([result, *(var_map[hash(bindings[i].var)] for i in outputs)])
        bb.emit_func_output(result)
    new_mod = bb.get()
    out = mod.clone() if hasattr(mod, "clone") else tvm.IRModule(dict(mod.functions))
    out[func_name] = new_mod[func_name]
    return out


def _channel_slice(call, data, begin: int, end: int, axis: int):
    """`call` (a ``strided_slice``) on `data` with channel `axis` cut to ``[begin, end)``."""
    from tvm import relax

    rank = len(_shape_of(data))
    parts = [int_values(a) for a in call.args[1:]]
    axes = [a % rank for a in parts[0]]
    if axis not in axes:
        return relax.Call(call.op, [data, *call.args[1:]], call.attrs, call.ty_args)
    i = axes.index(axis)
    parts[1][i], parts[2][i] = begin, end
    return relax.op.strided_slice(data, *parts, assume_inbound=call.attrs.assume_inbound)


def _shape_of(expr) -> tuple[int, ...]:
    ty = getattr(expr, "ty", None)
    if ty is None or getattr(ty, "shape", None) is None:
        from tvm import relax

        ty = relax.BlockBuilder().normalize(expr).ty
    return tuple(int(d) for d in ty.shape)
