"""Calibration activations: what each consumer layer sees, sampled as least-squares rows.

A *probe* is the graph with some intermediate values returned as extra outputs
(`channel_rewrite.rewrite(..., outputs=...)`), compiled for this machine by a *runner* and
run on calibration inputs one sample at a time. The runner is injected: ``mdl_tvm.compile``
passes its own host build (so probes run the same kernels as the compiled model);
standing alone, the passes use `default_runner` (TVM's plain build, slower).

For a consumer — a conv2d or matmul with a constant weight — the rows are its input
patches: for a conv, ``positions`` output pixels are drawn per sample (seeded by sample
number and binding, so the original and the pruned network are sampled at the same
pixels) and each gives one im2col row ``(C * kh * kw,)`` in the weight's ``OIHW`` order;
for a matmul each row of the input is a row. ``rows @ weight_matrix(W).T`` is then the
consumer's output at those places, before any bias.

Preconditions: NCHW convolutions with ``groups == 1``, static shapes, batch-first inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mdl_tvm.core.relax_utils import flatten_outputs, main_bindings
from relay_passes.channel_layout import unit_columns
from relay_passes.channel_rewrite import rewrite


@dataclass(frozen=True)
class ConsumerSpec:
    """How a consumer binding turns inputs into outputs."""

    binding: int
    kind: str  # "conv2d" or "matmul"
    weight_shape: tuple[int, ...]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1  # a grouped conv is seen as the dense conv of its block-diagonal weight


def consumer_spec(mod, binding: int, func_name: str = "main") -> ConsumerSpec:
    bindings, _ = main_bindings(mod, func_name)
    call = bindings[binding].value
    weight = tuple(call.args[1].value.numpy().shape)
    if call.op.name == "relax.nn.conv2d":
        a = call.attrs
        return ConsumerSpec(binding, "conv2d", weight, tuple(int(s) for s in a.strides),
                            tuple(int(p) for p in a.padding), tuple(int(d) for d in a.dilation),
                            int(a.groups))
    return ConsumerSpec(binding, "matmul", weight)


def bias_of(mod, binding: int, func_name: str = "main"):
    """``(binding, arg)`` of the constant added to `binding`'s output per channel, or None."""
    import tvm

    bindings, _ = main_bindings(mod, func_name)
    var = bindings[binding].var
    for index in range(binding + 1, len(bindings)):
        value = bindings[index].value
        args = list(getattr(value, "args", ()))
        if getattr(value, "op", None) == tvm.ir.Op.get("relax.add") and len(args) == 2:
            for i, arg in enumerate(args):
                other = args[1 - i]
                if other.same_as(var) and isinstance(arg, tvm.ir.Constant):
                    return index, i
        if any(a.same_as(var) for a in args):
            return None  # first used by something else
    return None


def _sole_user(mod, binding: int, func_name: str):
    """``(bindings, var, user)``: `binding`'s output after its per-channel bias (if any) and
    the one expression that uses it (None when several do or it is the model output)."""
    bindings, func = main_bindings(mod, func_name)
    loc = bias_of(mod, binding, func_name)
    var = bindings[loc[0] if loc else binding].var
    users = [b.value for b in bindings
             if any(a.same_as(var) for a in (getattr(b.value, "args", None)
                                               or getattr(b.value, "fields", ())))]
    alone = len(users) == 1 and not func.body.body.same_as(var)
    return bindings, var, users[0] if alone else None


def clamp_after(mod, binding: int, func_name: str = "main") -> tuple[float, float] | None:
    """``(low, high)`` of the ReLU (``(0, inf)``) or clip (ReLU6: ``(0, 6)``) that is the
    only user of `binding`'s output (after its per-channel bias, if any); None otherwise."""
    import tvm

    _, _, user = _sole_user(mod, binding, func_name)
    op = getattr(user, "op", None)
    if op == tvm.ir.Op.get("relax.nn.relu"):
        return 0.0, float("inf")
    if op == tvm.ir.Op.get("relax.clip"):
        low, high = (float(getattr(a, "value", np.nan)) for a in user.args[1:3])
        return None if np.isnan(low) or np.isnan(high) else (low, high)
    return None


def residual_after(mod, binding: int, func_name: str = "main") -> int | None:
    """Binding of the other operand of the residual ``add`` that is the only user of
    `binding`'s output (after its per-channel bias, if any); None otherwise (or when the
    other operand is a constant, the function's input or of another shape)."""
    import tvm

    bindings, var, user = _sole_user(mod, binding, func_name)
    if getattr(user, "op", None) != tvm.ir.Op.get("relax.add"):
        return None
    args = list(user.args)
    if len(args) != 2 or args[0].same_as(args[1]):
        return None
    other = args[1] if args[0].same_as(var) else args[0]
    same = [[int(d) for d in v.ty.shape] for v in (var, other)]
    position = {hash(b.var): i for i, b in enumerate(bindings)}
    return position.get(hash(other)) if same[0] == same[1] else None  # no broadcasts


def input_width(spec: ConsumerSpec) -> int:
    """Columns of `weight_matrix` (a conv's: every input channel times its taps)."""
    if spec.kind == "conv2d":
        return spec.weight_shape[1] * spec.groups * int(np.prod(spec.weight_shape[2:]))
    return spec.weight_shape[0]


def consumer_columns(ref, spec: ConsumerSpec) -> np.ndarray:
    """``(length, unit)``: the columns of `weight_matrix` holding each channel of consumer
    ref `ref` (a conv's taps, a dense's flattened positions)."""
    unit = int(np.prod(spec.weight_shape[2:])) if spec.kind == "conv2d" else ref.span
    return unit_columns(ref, unit)


def weight_matrix(spec: ConsumerSpec, weight: np.ndarray) -> np.ndarray:
    """The consumer's weight as ``(outputs, inputs)``, matching `sample_rows` columns (a
    grouped conv's: block diagonal, zero where a group does not read)."""
    if spec.kind == "conv2d" and spec.groups > 1:
        g, (o, c) = spec.groups, weight.shape[:2]
        dense = np.zeros((o, c * g) + weight.shape[2:], weight.dtype)
        for b in range(g):
            dense[b * o // g:(b + 1) * o // g, b * c:(b + 1) * c] = weight[b * o // g:
                                                                           (b + 1) * o // g]
        return dense.reshape(o, -1)
    if spec.kind == "conv2d":
        return weight.reshape(weight.shape[0], -1)
    return weight.T


def output_width(spec: ConsumerSpec, weight: np.ndarray) -> int:
    """Outputs of the consumer's weight (a conv's ``O``, a matmul's columns), without the
    copy `weight_matrix` makes of a grouped conv."""
    return int(weight.shape[0] if spec.kind == "conv2d" else weight.shape[1])


def from_matrix(spec: ConsumerSpec, matrix: np.ndarray, like: tuple[int, ...]) -> np.ndarray:
    """Inverse of `weight_matrix`: a ``(outputs, inputs)`` matrix back to the weight shape
    (a grouped conv's diagonal blocks)."""
    if spec.kind == "conv2d" and spec.groups > 1:
        g, o = spec.groups, matrix.shape[0]
        dense = matrix.reshape((o, g, -1) + tuple(like[2:]))
        return np.concatenate([dense[b * o // g:(b + 1) * o // g, b] for b in range(g)])
    if spec.kind == "conv2d":
        return matrix.reshape((matrix.shape[0], -1) + tuple(like[2:]))
    return matrix.T


def sample_rows(spec: ConsumerSpec, x: np.ndarray, sample: int, positions: int,
                seed: int) -> np.ndarray:
    """Least-squares rows of consumer `spec` for one input tensor `x` (see module doc)."""
    if spec.kind == "matmul":
        return x.reshape(-1, x.shape[-1]).astype(np.float64)
    _, _, kh, kw = spec.weight_shape
    (sh, sw), (dh, dw) = spec.strides, spec.dilation
    top, left, bottom, right = spec.padding
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    n, c, h, w = x.shape
    out_h, out_w = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    rng = np.random.default_rng((seed, sample, spec.binding))
    total = n * out_h * out_w
    picks = np.sort(rng.choice(total, size=min(positions, total), replace=False))
    b, rest = np.divmod(picks, out_h * out_w)
    oy, ox = np.divmod(rest, out_w)
    ky, kx = np.meshgrid(np.arange(kh) * dh, np.arange(kw) * dw, indexing="ij")
    ys = oy[:, None, None] * sh + ky[None]  # (P, kh, kw)
    xs = ox[:, None, None] * sw + kx[None]
    patches = x[b[:, None, None, None], np.arange(c)[None, :, None, None],
                ys[:, None], xs[:, None]]  # (P, C, kh, kw)
    return patches.reshape(len(picks), -1).astype(np.float64)


def all_rows(spec: ConsumerSpec, x: np.ndarray) -> np.ndarray:
    """Least-squares rows of consumer `spec` at *every* output position of input `x`:
    ``(positions, inputs)``, columns in the order of `weight_matrix` (im2col for a conv)."""
    if spec.kind == "matmul":
        return x.reshape(-1, x.shape[-1])
    _, _, kh, kw = spec.weight_shape
    (sh, sw), (dh, dw) = spec.strides, spec.dilation
    top, left, bottom, right = spec.padding
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    windows = np.lib.stride_tricks.sliding_window_view(
        x, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    n, c, oh, ow = windows.shape[:4]
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw)


def model_input_shape(mod, func_name: str = "main") -> tuple[int, ...]:
    params = mod[func_name].params
    if len(params) != 1:
        raise ValueError(f"calibration supports models with one input; this one has "
                         f"{len(params)}")
    return tuple(int(d) for d in params[0].ty.shape)


Runner = Callable[[object], Callable[[np.ndarray], list]]
"""``runner(mod)`` builds a Relax module for this machine and returns ``run(x) -> outputs``."""


def default_runner(mod) -> Callable[[np.ndarray], list]:
    """Build `mod` with TVM's own pipeline for this machine's CPU; ``run(x) -> outputs``."""
    import tvm
    from tvm import relax

    target = tvm.target.Target({"kind": "llvm"})
    with target:
        lowered = relax.get_pipeline("zero")(mod)
    vm = relax.VirtualMachine(relax.build(lowered, target), tvm.cpu())
    return lambda x: flatten_outputs(vm["main"](tvm.runtime.tensor(x)))


def probe(mod, bindings: list[int], samples: list[np.ndarray], runner: Runner | None = None,
          func_name: str = "main"):
    """Yield, per calibration sample, the values of `bindings`, built by `runner`."""
    run = (runner or default_runner)(
        rewrite(mod, [], func_name=func_name, outputs=tuple(bindings)))
    for x in samples:
        yield run(x)[-len(bindings):]
