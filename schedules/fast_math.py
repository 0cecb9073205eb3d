"""Vectorisable exp, sigmoid and SiLU: legalizations that never call libm.

What it rewrites: ``relax.exp``, ``relax.sigmoid`` and ``relax.nn.silu`` on float32 and
float16 tensors legalize (`schedules.legalize.legalize_map`) to element-wise TE computes
built from `fast_exp`, instead of TVM's ``tir.exp`` / ``tir.sigmoid``. LLVM has no vector
exp instruction on NEON or AVX, so it turns ``llvm.exp`` on a vector into one ``expf``
call per lane; an EfficientNet-style net (SiLU after every expand and depthwise conv) spent
more instructions in libm than in its convolutions.

The idea: Cephes' ``expf`` as NCNN's ``exp_ps`` (``neon_mathfun.h``) and TVM's
``topi.fast_exp`` compute it -- ``e^x = 2^n e^f`` with ``n = floor(x log2(e) + 1/2)``,
``f = x - n ln 2`` in ``[-ln2/2, ln2/2]``, ``e^f`` a degree-7 polynomial, and ``2^n``
built by shifting ``n + 127`` into a float's exponent bits: about 15 vector instructions
per register, a relative error of ~2e-7 on the clamped range ``[-88.38, 88.38]`` (below it
the result is 0, as ``expf`` underflows). ``exp`` on float16 is widened to float32 for the
polynomial (fp16's 5-bit exponent cannot hold e^x's range) and narrowed back.
``sigmoid(x) = 1 / (1 + e^-x)``, ``silu(x) = x sigmoid(x)``; they stay element-wise, so
FuseOps still folds them into the producing convolution's epilogue. On float16 they stay
float16 (8 lanes, NCNN's ``sigmoid_ps_f16`` idea, half the instructions of the widened
form): ``e = e^-|x|`` needs only ``[-17.3, 0]``, whose ``2^n`` is built as ``2^(n+10)``
from exponent bits times ``2^-10`` (an fp16 multiply that rounds into the subnormals), a
degree-5 polynomial; ``t = 1 / (1 + e)`` and ``sigmoid(x)`` is ``t`` for ``x >= 0``, ``e t``
below -- no ``1 - t`` cancellation, tiny values kept (``sigmoid(-11) = 1.7e-5``).

Preconditions: none beyond a float dtype; other dtypes keep TVM's legalization.
``tanh`` needs nothing: TVM's float32 ``topi.tanh`` is already a rational polynomial.
"""

from __future__ import annotations

from functools import partial

import tvm
from tvm import te, tirx

_FAST = ("float32", "float16")

# Cephes expf: clamp, log2(e), ln 2 and the polynomial for e^f on [-ln2/2, ln2/2].
_HI, _LO = 88.3762626647950, -88.3762626647949
_LOG2E, _LN2 = 1.44269504088896341, 0.6931471805599453
_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
         1.6666665459e-1, 5.0000001201e-1)


def _f32(value: float):
    return tirx.const(value, "float32")


def fast_exp(x):
    """``e^x`` of a float32 `PrimExpr` from arithmetic and bit operations only."""
    clamped = tirx.max(tirx.min(x, _f32(_HI)), _f32(_LO))
    n = tirx.floor(clamped * _f32(_LOG2E) + _f32(0.5))
    f = clamped - n * _f32(_LN2)
    poly = _f32(_POLY[0])
    for c in _POLY[1:]:
        poly = poly * f + _f32(c)
    e_f = poly * f * f + f + _f32(1.0)
    # (n + 127) << 23, written as a product: epilogues rebuild arithmetic, not shifts
    bits = tirx.Cast("int32", n + _f32(127.0)) * tirx.const(1 << 23, "int32")
    return tirx.max(tirx.reinterpret("float32", bits) * e_f, x)


def fast_sigmoid(x):
    """``1 / (1 + e^-x)`` of a float32 `PrimExpr` (`fast_exp`)."""
    return _f32(1.0) / (_f32(1.0) + fast_exp(-x))


# float16 e^y on [-17.33, 0] (2^-25); ln 2 split so that n * ln2_hi (4 bits) and
# c - n * ln2_hi are exact in fp16's 11-bit mantissa
_LO16 = -17.328
_LN2_HI, _LN2_LO = 0.6875, 0.6931471805599453 - 0.6875


def _f16(value: float):
    return tirx.const(value, "float16")


def _exp_nonpositive_f16(y):
    """``e^y`` of a float16 `PrimExpr` ``y <= 0`` in float16 arithmetic (0 below 2^-25)."""
    c = tirx.max(y, _f16(_LO16))
    n = tirx.floor(c * _f16(_LOG2E) + _f16(0.5))
    f = c - n * _f16(_LN2_HI) - n * _f16(_LN2_LO)
    poly = _f16(_POLY[2])
    for k in _POLY[3:]:
        poly = poly * f + _f16(k)
    e_f = poly * f * f + f + _f16(1.0)
    # 2^(n + 10) from the exponent bits ((n + 10 + 15) << 10, as a product), then 2^-10
    bits = tirx.Cast("int16", n + _f16(25.0)) * tirx.const(1 << 10, "int16")
    return tirx.reinterpret("float16", bits) * e_f * _f16(2.0 ** -10)


def fast_sigmoid_f16(x):
    """``sigmoid(x)`` of a float16 `PrimExpr` in float16 arithmetic (see module docstring)."""
    e = _exp_nonpositive_f16(tirx.min(x, -x))
    t = _f16(1.0) / (_f16(1.0) + e)
    return tirx.Select(x >= _f16(0.0), t, e * t)


def _in_f32(fn, dtype):
    """`fn` on float32, for an expression of `dtype` (float16 widened and narrowed)."""
    if dtype == "float32":
        return fn
    return lambda v: tirx.Cast(dtype, fn(tirx.Cast("float32", v)))


_MATH = {
    "exp": fast_exp,
    "sigmoid": fast_sigmoid,
    "silu": lambda v: v * fast_sigmoid(v),
}


# float16 activations computed in float16 (exp keeps float32: its range needs the exponent)
_F16 = {
    "sigmoid": fast_sigmoid_f16,
    "silu": lambda v: v * fast_sigmoid_f16(v),
}


def _legalize(name: str, bb, call):
    data = call.args[0]
    dtype = str(data.ty.dtype)
    if dtype not in _FAST:  # TVM's own legalization
        return tvm.ir.Op.get(call.op.name).get_attr("FLegalize")(bb, call)

    def compute(x):
        fn = _F16.get(name) if dtype == "float16" else None
        fn = fn or _in_f32(_MATH[name], dtype)
        return te.compute(x.shape, lambda *i: fn(x(*i)), name=name)

    return bb.call_te(compute, data, primfunc_name_hint=name)


# relax op -> the `_MATH` entry its legalization computes
LEGALIZE = {op: partial(_legalize, name)
            for op, name in (("relax.exp", "exp"), ("relax.sigmoid", "sigmoid"),
                             ("relax.nn.silu", "silu"))}
