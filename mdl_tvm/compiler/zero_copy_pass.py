"""Destination-passing ``main_zc``: outputs and intermediates in caller-owned buffers.

`add_zero_copy_main` is a step of the build pipeline (`mdl_tvm.compiler.build_pipeline`)
right after ``StaticPlanBlockMemory``. Next to the unchanged ``main(*inputs)`` it emits

* ``main_zc(*inputs, *outputs, workspace)``: the same computation, but each output is
  written by its kernel straight into the caller's ``outputs[i]`` (the output allocation
  became a parameter: destination-passing style), and every intermediate tensor is a view
  into the caller's ``workspace`` (a flat ``uint8`` tensor) at the offset of its
  statically planned storage (non-zero offsets go through ``ensure_zero_offset``, which
  moves the data pointer, no copy). A call allocates no tensor data: the only per-call
  objects are tensor headers. It returns its buffers, ``(*outputs, *inputs)``, so an RPC
  client can reach the device-side copies the VM makes of ``set_input`` arguments.
* ``mdl_zc_plan()``: a JSON text (its UTF-8 bytes as a uint8 tensor, `decode_plan`)
  describing the parameters (input and output shapes and dtypes, workspace bytes), so a
  library is self-describing on a device that has only TVM's runtime.

Storages are placed in the workspace at `ALIGN`-byte boundaries (TVM kernels and DLPack
import want 64-byte aligned data). A model whose graph does not fit the scheme (dynamic
shapes, an output that is an input or a constant, nested output tuples) keeps only
``main``; the reason goes to the ``report`` dict of `add_zero_copy_main`.
"""

from __future__ import annotations

import json

from mdl_tvm.core.relax_utils import alias_chain, op_name
from mdl_tvm.core.specs import ALIGN

ZC_FUNC = "main_zc"
PLAN_FUNC = "mdl_zc_plan"
PLAN_FORMAT = 1


class ZeroCopyUnsupported(ValueError):
    """The graph cannot be turned into a destination-passing function."""


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _static_shape(ty, what: str) -> tuple[int, ...]:
    shape = getattr(ty, "values", None)  # a ShapeExpr
    if shape is None:
        shape = getattr(ty, "shape", None)
    try:
        return tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise ZeroCopyUnsupported(f"{what} has no static shape ({ty})") from None


def _tensor_spec(ty, what: str) -> dict:
    from tvm import relax

    if not isinstance(ty, relax.TensorType):
        raise ZeroCopyUnsupported(f"{what} is not a tensor ({ty})")
    return {"shape": list(_static_shape(ty, what)), "dtype": str(ty.dtype)}


def _output_roots(bindings, body) -> list:
    """``(var, returned)`` per returned tensor: `var` is bound to the fresh buffer a kernel
    writes (followed back through var-to-var aliases and a ``reshape``, which only
    relabels that buffer: a network's final flatten), `returned` the tensor returned."""
    from tvm import relax

    bound = {b.var: b.value for b in bindings if isinstance(b, relax.VarBinding)}

    def root(expr):
        return alias_chain(expr, bound)[-1]

    ret = root(body)
    fields = bound.get(ret).fields if isinstance(bound.get(ret), relax.Tuple) else None
    if fields is None and isinstance(ret, relax.Tuple):
        fields = ret.fields
    returned = [root(f) for f in (fields if fields is not None else [ret])]
    roots = []
    for i, var in enumerate(returned):
        value = bound.get(var) if isinstance(var, relax.Var) else None
        if op_name(value) == "relax.reshape":
            inner = root(value.args[0])
            if op_name(bound.get(inner)) == "relax.builtin.alloc_tensor":
                var, value = inner, bound[inner]
        if op_name(value) != "relax.builtin.alloc_tensor":
            if isinstance(var, relax.Tuple) or isinstance(value, relax.Tuple):
                kind = "a nested tuple"
            elif value is None:
                kind = "a parameter or constant"
            else:
                kind = f"made by {getattr(value, 'op', type(value).__name__)}"
            raise ZeroCopyUnsupported(
                f"output {i} is {kind}, not a tensor written by a kernel into a fresh buffer")
        roots.append(var)
    if len(set(roots)) != len(roots):
        raise ZeroCopyUnsupported("the same tensor is returned twice")
    return list(zip(roots, returned, strict=True))


def make_zero_copy_main(func):
    """Turn a ``main`` after StaticPlanBlockMemory into ``(main_zc, plan)``.

    Parameters
    ----------
    func : tvm.relax.Function
        ``main`` after ``CallTIRRewrite`` and ``StaticPlanBlockMemory`` (non-dataflow).

    Returns
    -------
    (tvm.relax.Function, dict)
        The destination-passing function and its plan (see `mdl_tvm.compiler.zero_copy_pass`).

    Raises
    ------
    ZeroCopyUnsupported
        When the graph does not fit (dynamic shapes, odd outputs, nested tuples).
    """
    import tvm
    from tvm import relax

    body = func.body
    bindings = [b for block in body.blocks for b in block.bindings]
    pairs = _output_roots(bindings, body.body)
    outs = [relax.Var(f"out{i}", ret.ty) for i, (_, ret) in enumerate(pairs)]
    # the kernel's buffer is the caller's output, seen in the kernel's shape when a
    # reshape relabels it (the reshape binding stays: a view of that view)
    out_of = {}
    for (var, ret), out in zip(pairs, outs, strict=True):
        out_of[var] = out if var is ret else relax.op.memory.view(
            out, relax.ShapeExpr(var.ty.shape.values), var.ty.dtype,
            relax.prim_value(0, "int64"))
    inputs = [_tensor_spec(p.ty, f"input {p.name}") for p in func.params]
    outputs = [_tensor_spec(ret.ty, f"output {i}") for i, (_, ret) in enumerate(pairs)]

    offsets, size = {}, 0  # storage var -> byte offset in the workspace
    for b in bindings:
        if op_name(b.value) == "relax.memory.alloc_storage":
            nbytes = _static_shape(b.value.args[0], "an intermediate storage")
            offsets[b.var] = size
            size += _align(max(nbytes[0], 1))
    ws = relax.Var("workspace", relax.TensorType((max(size, ALIGN),), "uint8"))

    bb = relax.BlockBuilder()
    new_blocks = []
    for block in body.blocks:
        new = []
        for b in block.bindings:
            name = op_name(b.value)
            if b.var in offsets:
                continue  # the storage is the workspace
            if b.var in out_of:
                new.append(relax.VarBinding(b.var, bb.normalize(out_of[b.var])))
            elif name == "relax.memory.alloc_tensor" and b.value.args[0] in offsets:
                storage, offset, shape, dtype = b.value.args[:4]
                start = offsets[storage] + int(offset.value)
                view = relax.op.memory.view(ws, shape, dtype, relax.prim_value(start, "int64"))
                view = bb.normalize(view)
                if start:  # kernels want byte_offset 0: move the data pointer (no copy)
                    tmp = relax.Var(f"{b.var.name}_view", view.ty)
                    new.append(relax.VarBinding(tmp, view))
                    view = bb.normalize(relax.op.memory.ensure_zero_offset(tmp))
                new.append(relax.VarBinding(b.var, view))
            elif name in ("relax.memory.alloc_storage", "relax.builtin.alloc_tensor"):
                raise ZeroCopyUnsupported(f"allocation of {b.var.name} is not static")
            else:
                new.append(b)
        new_blocks.append(relax.BindingBlock(new))
    # return the caller's buffers, outputs then inputs: over RPC the VM keeps its own
    # device-side copies of set_input's arguments, and these handles reach them
    ret = bb.normalize(relax.Tuple([*outs, *func.params]))
    ret_var = relax.Var("buffers", ret.ty)
    new_blocks.append(relax.BindingBlock([relax.VarBinding(ret_var, ret)]))
    attrs = dict(func.attrs) if func.attrs is not None else {}
    attrs["global_symbol"] = ZC_FUNC
    new_func = relax.Function([*func.params, *outs, ws], relax.SeqExpr(new_blocks, ret_var),
                              ret.ty, func.is_pure, tvm.ir.DictAttrs(attrs))
    loose = relax.analysis.free_vars(new_func)
    if loose:  # a planned storage used by something other than alloc_tensor
        raise ZeroCopyUnsupported(f"{', '.join(v.name for v in loose)} escape the rewrite")
    plan = {"format": PLAN_FORMAT, "function": ZC_FUNC, "inputs": inputs, "outputs": outputs,
            "workspace_bytes": max(size, ALIGN), "align": ALIGN,
            "storages": len(offsets)}
    return new_func, plan


def _plan_function(plan: dict):
    import numpy as np
    import tvm
    from tvm import relax

    # the JSON's bytes as a uint8 tensor constant: a tensor crosses RPC (a string or shape
    # comes back as an opaque handle) and needs no decoder on the device
    text = np.frombuffer(json.dumps(plan, sort_keys=True).encode(), dtype="uint8")
    return relax.Function([], relax.const(text.copy(), "uint8"), None, True,
                          tvm.ir.DictAttrs({"global_symbol": PLAN_FUNC}))


def decode_plan(value) -> dict:
    """Decode what ``mdl_zc_plan()`` returns (a uint8 tensor of UTF-8 JSON) into a dict."""
    return json.loads(bytes(value.numpy()).decode())


def add_zero_copy_main(report: dict | None = None):
    """Module pass (after StaticPlanBlockMemory): add ``main_zc`` and ``mdl_zc_plan``.

    Parameters
    ----------
    report : dict, optional
        Filled with ``{"emitted": bool, "plan": dict}`` or ``{"emitted": False,
        "reason": str}`` when the graph does not fit (then only ``main`` is built).
    """
    import tvm

    report = {} if report is None else report

    @tvm.transform.module_pass(opt_level=0, name="AddZeroCopyMain")
    def _pass(mod, _ctx):
        if "main" not in [g.name_hint for g in mod.get_global_vars()]:
            report.update(emitted=False, reason="the module has no main function")
            return mod
        try:
            func, plan = make_zero_copy_main(mod["main"])
        except ZeroCopyUnsupported as err:
            report.update(emitted=False, reason=str(err))
            return mod
        mod = mod.clone()
        mod[ZC_FUNC] = func
        mod[PLAN_FUNC] = _plan_function(plan)
        report.update(emitted=True, plan=plan)
        return mod

    return _pass
