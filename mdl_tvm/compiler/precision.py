"""The precision stage: fp32, fp16 compute, or fp16 weight storage.

==================  ======================================================================
mode                what runs
==================  ======================================================================
``fp32``            everything in fp32 (no change)
``fp16``            weights and activations in fp16; convolutions and matmuls accumulate in
                    `accumulate` (``"fp16"``, the fast default, or ``"fp32"``); softmax and
                    the last layer (the conv / matmul that makes the output, when that is
                    logits-sized: `precision_ops.LAST_LAYER_MAX_OUTPUTS`) stay fp32,
                    and so do means and pools over more than 2048 elements (`REDUCE_OPS`)
                    and recurrent state (an LSTM's ``c``: outputs typed like an input)
``fp16-full``       as ``fp16`` with nothing kept in fp32 but operators of unknown
                    numerics (``keep_fp32=()``)
``fp16-storage``    conv / matmul weights stored in fp16 (half the bytes), all arithmetic in
                    fp32; the kernels widen the weights as they load them
==================  ======================================================================

Inputs and outputs keep their dtypes (fp32): the graph casts at its edges.

Target rule: fp16 *compute* needs fp16 arithmetic (ARMv8.2-A ``+fullfp16``: profiles
``arm64-fp16``, ``cortex-a55``, ``cortex-a76``). On any other profile -- ARMv8.0 cores
(``arm64``, ``sd835``, ``rpi4``) and this x86 host, whose F16C only converts -- LLVM would
emulate every fp16 operation with conversions, slower than fp32, so `compile` raises
`PrecisionError` naming ``fp16-storage`` and the fp16 profiles. ``PrecisionConfig(emulate=
True)`` builds such code anyway, for checking fp16 numerics on the host only.
``fp16-storage`` works on every profile.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from mdl_tvm.compiler.precision_ops import (
    COMPUTE_OPS,
    FOLLOW_OPS,
    FP16_EXACT_COUNT,
    REDUCE_OPS,
    SOFTMAX_OPS,
    dtype_of,
    is_const,
    is_float_tensor,
    last_layers,
    reduced_count,
)
from mdl_tvm.core.errors import PrecisionError
from mdl_tvm.core.relax_utils import op_name

MODES = ("fp32", "fp16", "fp16-full", "fp16-storage")
ACCUMULATE = ("fp16", "fp32")
KEEP_FP32 = ("softmax", "last_layer")
FP16_PROFILES = ("arm64-fp16", "cortex-a55", "cortex-a76")
_DTYPES = {"fp16": "float16", "fp32": "float32"}
_FP16_MAX = 65504.0

@dataclass(frozen=True)
class PrecisionConfig:
    """How a model computes.

    Attributes
    ----------
    mode : str
        One of `MODES`: ``"fp32"``, ``"fp16"``, ``"fp16-full"``, ``"fp16-storage"``.
    accumulate : str
        ``"fp16"`` or ``"fp32"``: accumulator dtype of convolutions and matmuls in the fp16
        compute modes (``"fp32"`` is the accuracy option: its arithmetic is fp32, so it is
        not faster than fp32 on NEON).
    keep_fp32 : tuple of str
        Parts kept in fp32 in the fp16 compute modes: ``"softmax"`` and ``"last_layer"``.
    emulate : bool
        Allow fp16 compute on a target without fp16 arithmetic (numerics checks only).
    """

    mode: str = "fp32"
    accumulate: str = "fp16"
    keep_fp32: tuple = KEEP_FP32
    emulate: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown precision {self.mode!r}; choose one of {MODES}")
        if self.accumulate not in ACCUMULATE:
            raise ValueError(f"unknown accumulate {self.accumulate!r}; choose one of "
                             f"{ACCUMULATE}")
        bad = [k for k in self.keep_fp32 if k not in KEEP_FP32]
        if bad:
            raise ValueError(f"unknown keep_fp32 entries {bad}; allowed: {KEEP_FP32}")
        if self.mode == "fp16-full" and self.keep_fp32:
            object.__setattr__(self, "keep_fp32", ())

    @property
    def fp16_compute(self) -> bool:
        """True for the modes that compute in fp16 (``fp16``, ``fp16-full``)."""
        return self.mode in ("fp16", "fp16-full")

    def to_json(self) -> dict:
        out = {"mode": self.mode}
        if self.fp16_compute:
            out.update(accumulate=self.accumulate, keep_fp32=list(self.keep_fp32))
        if self.emulate:
            out["emulate"] = True
        return out


def parse_precision(precision="fp32", accumulate=None) -> PrecisionConfig:
    """Turn `compile`'s ``precision=`` / ``accumulate=`` into a `PrecisionConfig`.

    Parameters
    ----------
    precision : str or PrecisionConfig
        A mode name (`MODES`) or a ready configuration.
    accumulate : str, optional
        ``"fp16"`` or ``"fp32"``; only with an fp16 compute mode.
    """
    if isinstance(precision, PrecisionConfig):
        if accumulate is not None and accumulate != precision.accumulate:
            raise ValueError("give accumulate= inside the PrecisionConfig, not beside it")
        return precision
    if not isinstance(precision, str):
        raise TypeError(f"precision must be one of {MODES} or a PrecisionConfig, got "
                        f"{type(precision).__name__}")
    if accumulate is not None and precision not in ("fp16", "fp16-full"):
        raise ValueError(f"accumulate= applies to precision='fp16' or 'fp16-full', not "
                         f"{precision!r}")
    return PrecisionConfig(mode=precision, accumulate=accumulate or "fp16")


def has_fp16_arith(profile) -> bool:
    """True when `profile` computes in fp16 natively (``feature.has_fp16_simd`` on ARM)."""
    if not profile.fp16_arith:
        return False
    if profile.is_arm64:
        return bool(profile.tvm_target().features.has_fp16_simd)
    return True


def check_target(config: PrecisionConfig, profile) -> None:
    """Raise `PrecisionError` when `profile` cannot run `config` at full speed."""
    if not config.fp16_compute or config.emulate or has_fp16_arith(profile):
        return
    if profile.is_arm64:
        why = (f"target {profile.name!r} is ARMv8.0-A without fp16 arithmetic: LLVM would "
               "emulate every fp16 operation with conversions, slower than fp32")
    else:
        why = (f"target {profile.name!r} ({profile.mtriple}) has no fp16 arithmetic (x86 "
               "F16C only converts): fp16 compute would be emulated, slower than fp32")
    raise PrecisionError(
        f"precision={config.mode!r} needs fp16 arithmetic, but {why}. Use "
        f"precision='fp16-storage' (fp16 weights, fp32 compute) on this target, or a "
        f"profile with +fullfp16: {', '.join(FP16_PROFILES)}"
    )


def _with_out_dtype(call, args, out_dtype: str):
    """`call` (conv1d / conv2d / matmul) on `args` with accumulator dtype `out_dtype`."""
    from tvm import relax

    name, a = op_name(call), call.attrs
    if name == "relax.matmul":
        return relax.op.matmul(args[0], args[1], out_dtype=out_dtype)
    conv = relax.op.nn.conv2d if name == "relax.nn.conv2d" else relax.op.nn.conv1d
    return conv(args[0], args[1], strides=a.strides, padding=a.padding, dilation=a.dilation,
                groups=a.groups, data_layout=a.data_layout, kernel_layout=a.kernel_layout,
                out_layout=a.out_layout, out_dtype=out_dtype)


class _Rewriter:
    """Rebuilds ``main`` binding by binding with the new dtypes (see `convert`)."""

    def __init__(self, config: PrecisionConfig):
        from tvm import relax

        self.config = config
        # ops that take their inputs' dtype; a large reduction is caught before this set
        self.follow = FOLLOW_OPS | REDUCE_OPS | (
            SOFTMAX_OPS if "softmax" not in config.keep_fp32 else frozenset())
        self.bb = relax.BlockBuilder()
        self.var_map: dict[int, object] = {}
        self.consts: dict[tuple[int, str], object] = {}
        self.clipped = 0

    def remap(self, expr):
        from tvm import relax

        if isinstance(expr, relax.Var):
            return self.var_map.get(hash(expr), expr)
        if isinstance(expr, relax.Tuple):
            return relax.Tuple([self.remap(f) for f in expr.fields])
        return expr

    def cast(self, expr, dtype: str):
        """`expr` in `dtype`: constants converted now, tensors through ``astype``."""
        import tvm
        from tvm import relax

        if not is_float_tensor(expr) or dtype_of(expr) == dtype:
            return expr
        if isinstance(expr, tvm.ir.Constant):
            key = (hash(expr), dtype)
            if key not in self.consts:
                array = expr.value.numpy()
                if dtype == "float16" and np.abs(array).max(initial=0) > _FP16_MAX:
                    self.clipped += 1
                    array = np.clip(array, -_FP16_MAX, _FP16_MAX)
                self.consts[key] = relax.const(array.astype(dtype))
            return self.consts[key]
        return self.bb.emit(relax.op.astype(expr, dtype))

    def call(self, index: int, call, keep: set):
        from tvm import relax

        name, mode = op_name(call), self.config.mode
        args = [self.remap(a) for a in call.args]
        if mode == "fp16-storage":
            if (name in COMPUTE_OPS and is_const(call.args[1])
                    and dtype_of(args[0]) == dtype_of(args[1]) == "float32"):
                return _with_out_dtype(call, [args[0], self.cast(args[1], "float16")],
                                       "float32")
            return relax.Call(call.op, args, call.attrs, call.ty_args)
        floats = all(is_float_tensor(a) for a in call.args[:2])
        if name in COMPUTE_OPS and floats and index not in keep:
            acc = _DTYPES[self.config.accumulate]
            out = _with_out_dtype(call, [self.cast(a, "float16") for a in args], acc)
            if acc == "float32":  # activations stay fp16; the cast fuses into the epilogue
                out = relax.op.astype(self.bb.emit(out), "float16")
            return out
        if (name in REDUCE_OPS and dtype_of(args[0]) == "float16"
                and reduced_count(call) > FP16_EXACT_COUNT):
            wide = relax.Call(call.op, [self.cast(args[0], "float32")], call.attrs,
                              call.ty_args)
            return relax.op.astype(self.bb.emit(wide), "float16")
        if name in self.follow:
            inputs = [a for a in args if is_float_tensor(a) and not is_const(a)]
            dtype = "float16" if inputs and all(dtype_of(a) == "float16" for a in inputs) \
                else "float32"
            return relax.Call(call.op, [self.cast(a, dtype) for a in args], call.attrs,
                              call.ty_args)
        originals = [dtype_of(a) for a in call.args]  # unknown op or kept: original dtypes
        args = [self.cast(a, d) if d else a for a, d in zip(args, originals, strict=True)]
        return relax.Call(call.op, args, call.attrs, call.ty_args)

    def restore(self, expr, like):
        """`expr` (a remapped tuple / tensor) cast back to the dtypes of `like`."""
        from tvm import relax

        if isinstance(expr, relax.Tuple) and isinstance(like, relax.Tuple):
            return relax.Tuple([self.restore(e, o)
                                for e, o in zip(expr.fields, like.fields, strict=True)])
        dtype = dtype_of(like)
        return self.cast(expr, dtype) if dtype else expr


def convert(mod, config: PrecisionConfig, func_name: str = "main"):
    """Return `mod` with `func_name` rewritten to `config`'s precision.

    Parameters
    ----------
    mod : tvm.IRModule
        A prepared Relax module (constant weights, one dataflow block in `func_name`).
    config : PrecisionConfig

    Returns
    -------
    tvm.IRModule
        Unchanged for ``fp32``; inputs and outputs keep their dtypes.
    """
    import tvm
    from tvm import relax

    if config.mode == "fp32":
        return mod
    func = mod[func_name]
    blocks = list(getattr(func.body, "blocks", []))
    if len(blocks) != 1:
        raise ValueError(f"the precision stage needs one binding block in {func_name!r}, "
                         f"found {len(blocks)}; run it before lowering")
    bindings = list(blocks[0].bindings)
    keep = last_layers(bindings, func) if "last_layer" in config.keep_fp32 else set()
    rw = _Rewriter(config)
    params = [relax.Var(p.name, p.ty) for p in func.params]
    rw.var_map.update({hash(o): n for o, n in zip(func.params, params, strict=True)})
    bb = rw.bb
    with bb.function(func_name, params, attrs=dict(func.attrs) if func.attrs else None):
        with bb.dataflow():
            for index, binding in enumerate(bindings):
                value = binding.value
                if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
                    expr = rw.call(index, value, keep)
                elif isinstance(value, relax.TupleGetItem):
                    expr = relax.TupleGetItem(rw.remap(value.tuple_value), value.index)
                else:  # tuples, aliases (outputs among them): original dtypes
                    expr = rw.restore(rw.remap(value), value)
                if not isinstance(binding.var, relax.DataflowVar):
                    expr = rw.restore(bb.normalize(expr), binding.var)
                    new = bb.emit_output(expr, name_hint=binding.var.name)
                else:
                    new = bb.emit(expr, name_hint=binding.var.name)
                rw.var_map[hash(binding.var)] = new
        bb.emit_func_output(rw.remap(func.body.body))
    if rw.clipped:
        warnings.warn(f"{rw.clipped} weight tensor(s) exceed the fp16 range (±65504) and "
                      "were clipped; consider precision='fp32' for this model", stacklevel=2)
    out = mod.clone() if hasattr(mod, "clone") else tvm.IRModule(dict(mod.functions))
    out[func_name] = bb.get()[func_name]
    return out


def precision_stage(state):
    """Pipeline stage: apply ``state.options.precision`` (a `PrecisionConfig`).

    Checks the target first (`check_target`); the converted graph becomes the
    ``high_level_mod`` the graph statistics are read from.
    """
    config = state.options.precision
    check_target(config, state.profile)
    state.mod = convert(state.mod, config)
    state.high_level_mod = state.mod
    return state
