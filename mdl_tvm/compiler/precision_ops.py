"""Which operators run in which dtype in the fp16 compute modes (`mdl_tvm.compiler.precision`).

Operator classes (`COMPUTE_OPS`, `FOLLOW_OPS`, `SOFTMAX_OPS`, `REDUCE_OPS`) and the graph
questions the precision rewrite asks: which conv / matmul makes an output (`last_layers`,
kept fp32), which outputs are recurrent state (not an output layer: an LSTM's ``h`` and
``c``), and how many elements a reduction averages (`reduced_count`).
"""

from __future__ import annotations

import numpy as np

from mdl_tvm.core.relax_utils import op_name, static_shape, vars_in

# Operators that multiply-accumulate: fp16 inputs, `accumulate` output.
COMPUTE_OPS = frozenset({"relax.nn.conv1d", "relax.nn.conv2d", "relax.matmul"})
# Operators that are safe in fp16 and follow their inputs' dtype.
FOLLOW_OPS = frozenset({
    "relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum",
    "relax.minimum", "relax.negative", "relax.nn.relu", "relax.clip", "relax.nn.gelu",
    "relax.nn.silu", "relax.sigmoid", "relax.tanh", "relax.sqrt", "relax.rsqrt",
    "relax.nn.max_pool2d", "relax.reshape", "relax.flatten", "relax.permute_dims", "relax.squeeze",
    "relax.expand_dims", "relax.concat", "relax.split", "relax.strided_slice", "relax.take",
})
SOFTMAX_OPS = frozenset({"relax.nn.softmax", "relax.nn.log_softmax"})
# Averaging reductions. fp16 counts exactly only up to 2048 and overflows past 65504, so one
# over more elements (instance norm over H*W, a global pool of a large map) sums and divides
# in fp32 and casts its result back; a smaller one follows its input like `FOLLOW_OPS`.
REDUCE_OPS = frozenset({"relax.mean", "relax.sum", "relax.variance",
                        "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d"})
FP16_EXACT_COUNT = 2048


def dtype_of(expr) -> str:
    return str(getattr(getattr(expr, "ty", None), "dtype", ""))


def is_float_tensor(expr) -> bool:
    return dtype_of(expr) in ("float16", "float32")


# The last layer stays fp32 only when it makes at most this many values: logits, a
# vocabulary, a list of boxes -- outputs an argmax or a threshold reads, where fp16 rounding
# can flip a decision, and whose layer costs little. A dense output (an image: style
# transfer's 3 x 256 x 256 RGB conv, a tenth of its MACs) runs in fp16 like every other
# layer, as NCNN's and MNN's fp16 modes run it.
LAST_LAYER_MAX_OUTPUTS = 65536


def last_layers(bindings, func) -> set:
    """Indices of the conv / matmul bindings that make the output, found by walking back
    from the returned value through everything that is not itself a conv / matmul; those
    making more than `LAST_LAYER_MAX_OUTPUTS` values (static shapes) are left out."""
    from tvm import relax

    index = {hash(b.var): i for i, b in enumerate(bindings)}
    found, seen = set(), set()
    stack = [v for field in _non_state_outputs(bindings, func, index)
             for v in vars_in(field)]
    while stack:
        var = stack.pop()
        i = index.get(hash(var))
        if i is None or i in seen:
            continue
        seen.add(i)
        value = bindings[i].value
        if isinstance(value, relax.Call) and op_name(value) in COMPUTE_OPS:
            shape = static_shape(bindings[i].var)
            if shape is None or int(np.prod(shape)) <= LAST_LAYER_MAX_OUTPUTS:
                found.add(i)
            continue
        stack.extend(vars_in(value))
    return found


def _non_state_outputs(bindings, func, index) -> list:
    """The returned values but recurrent state: fields of a returned tuple typed like a
    parameter (an LSTM step's ``h`` and ``c``). Their gates compute in fp16; the state
    itself stays fp32, since an op with an fp32 input (the state parameter) runs in fp32."""
    from tvm import relax

    out = func.body.body
    if isinstance(out, relax.Var) and hash(out) in index:
        value = bindings[index[hash(out)]].value
        out = value if isinstance(value, relax.Tuple) else out
    if not isinstance(out, relax.Tuple):
        return [out]
    fields = list(out.fields)
    params = {_type_key(p) for p in func.params}
    state = [f for f in fields if _type_key(f) in params]
    return [f for f in fields if not any(f.same_as(s) for s in state)] or fields


def _type_key(expr) -> tuple:
    shape = getattr(getattr(expr, "ty", None), "shape", None)
    return dtype_of(expr), str(shape)


def reduced_count(call) -> int:
    """How many input elements one output of the `REDUCE_OPS` `call` averages (or sums)."""
    try:
        shape = [int(d) for d in call.args[0].ty.shape]
    except (TypeError, ValueError, AttributeError):  # symbolic shape: assume it is large
        return 1 << 30
    a, name = call.attrs, op_name(call)
    if name == "relax.nn.avg_pool2d":
        return int(np.prod([int(k) for k in a.pool_size]))
    if name == "relax.nn.adaptive_avg_pool2d":
        spatial = [shape[str(a.layout).index(c)] for c in "HW"]
        sizes = [int(o) for o in a.output_size] if a.output_size is not None else spatial
        sizes = sizes * 2 if len(sizes) == 1 else sizes
        return int(np.prod([-(-n // o) for n, o in zip(spatial, sizes, strict=True)]))
    axes = range(len(shape)) if a.axis is None else [int(x) % len(shape) for x in a.axis]
    return int(np.prod([shape[i] for i in axes]))


def is_const(expr) -> bool:
    import tvm

    return isinstance(expr, tvm.ir.Constant)
