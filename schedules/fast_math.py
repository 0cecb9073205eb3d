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
the result is 0, as ``expf`` underflows). float16 is widened to float32 for the
polynomial (fp16's 5-bit exponent cannot hold the range) and narrowed back.
``sigmoid(x) = 1 / (1 + e^-x)``, ``silu(x) = x sigmoid(x)``; they stay element-wise, so
FuseOps still folds them into the producing convolution's epilogue.

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


def _legalize(name: str, bb, call):
    data = call.args[0]
    dtype = str(data.ty.dtype)
    if dtype not in _FAST:  # TVM's own legalization
        return tvm.ir.Op.get(call.op.name).get_attr("FLegalize")(bb, call)

    def compute(x):
        fn = _in_f32(_MATH[name], dtype)
        return te.compute(x.shape, lambda *i: fn(x(*i)), name=name)

    return bb.call_te(compute, data, primfunc_name_hint=name)


# relax op -> the `_MATH` entry its legalization computes
LEGALIZE = {op: partial(_legalize, name)
            for op, name in (("relax.exp", "exp"), ("relax.sigmoid", "sigmoid"),
                             ("relax.nn.silu", "silu"))}
