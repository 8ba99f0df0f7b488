"""float32 exp, tanh and erf as straight-line arithmetic, so loops that use them vectorise.

libm's expf/tanhf/erff are opaque scalar calls that stop LLVM's vectoriser; these use only
multiply-adds, selects and bit casts. Max errors, measured against numpy in float64 over
the whole float32 range by tests/unit/test_vector_math.py:
- exp: Cephes' minimax polynomial on [-ln2/2, ln2/2] with a two-step 2^n scale, so
  results in the subnormal range are right too: < 2 ulp (where ldexp is one instruction,
  AVX-512's vscalefps, the scale is that instruction);
- tanh: Eigen's [13/6] rational approximation on [-7.905, 7.905]: < 3e-7 absolute;
- erf: XLA's [13/10] rational approximation (erf ~ x P(x^2)/Q(x^2)) on [-4, 4]: < 4e-7
  absolute.
inf, -inf and nan map as libm maps them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

from llvmlite import ir

F32 = ir.FloatType()
I32 = ir.IntType(32)

_LOG2E = 1.44269504088896341
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
             1.6666665459e-1, 5.0000001201e-1)
_TANH_P = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
           5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
           4.89352455891786e-03)
_TANH_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
           4.89352518554385e-03)
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
          -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
          -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
          -7.37332916720468e-03, -1.42647390514189e-02)


def _c(x: ir.Value, value: float) -> ir.Constant:
    return ir.Constant(x.type, value)


def _fma(b: ir.IRBuilder, x: ir.Value, y: ir.Value, z: ir.Value) -> ir.Value:
    return b.fadd(b.fmul(x, y, flags=["contract"]), z, flags=["contract"])


def _horner(b: ir.IRBuilder, x: ir.Value, coeffs: Sequence[float]) -> ir.Value:
    acc: ir.Value = _c(x, coeffs[0])
    for k in coeffs[1:]:
        acc = _fma(b, acc, x, _c(x, k))
    return acc


def _clamp(b: ir.IRBuilder, x: ir.Value, lo: float, hi: float) -> ir.Value:
    # NaN-propagating: comparisons with NaN are false, so NaN passes through unchanged.
    x = b.select(b.fcmp_ordered("<", x, _c(x, lo)), _c(x, lo), x)
    return b.select(b.fcmp_ordered(">", x, _c(x, hi)), _c(x, hi), x)


def _pow2(b: ir.IRBuilder, n: ir.Value) -> ir.Value:
    """2**n for integer-valued float n in [-126, 127], built from the exponent bits."""
    bits = b.shl(b.add(b.fptosi(n, I32), ir.Constant(I32, 127)), ir.Constant(I32, 23))
    return b.bitcast(bits, F32)


def exp_f32(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    xc = _clamp(b, x, -104.0, 88.7228390)
    n = b.call(_intrinsic(b, "llvm.roundeven.f32", 1), [b.fmul(xc, _c(x, _LOG2E))])
    r = _fma(b, n, _c(x, -_LN2_HI), xc)
    r = _fma(b, n, _c(x, -_LN2_LO), r)
    p = _horner(b, r, _EXP_POLY)
    p = _fma(b, b.fmul(p, b.fmul(r, r)), _c(x, 1.0), b.fadd(r, _c(x, 1.0)))
    # 2**n in two halves keeps each factor a normal float down to n = -150.
    half = b.call(_intrinsic(b, "llvm.floor.f32", 1), [b.fmul(n, _c(x, 0.5))])
    scaled = b.fmul(b.fmul(p, _pow2(b, half)), _pow2(b, b.fsub(n, half)))
    big = b.fcmp_ordered(">", x, _c(x, 88.7228390))
    small = b.fcmp_ordered("<", x, _c(x, -104.0))
    out = b.select(big, _c(x, float("inf")), scaled)
    return b.select(small, _c(x, 0.0), out)


# Below this, exp(x) is under the smallest normal float (2^-126): zero when the kernel runs
# with denormals flushed.
_EXP_NORMAL_MIN = -87.3365448


def exp_f32_flushed(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """exp for kernels that flush denormals to zero (FTZ/DAZ): results below 2^-126 would be
    flushed anyway, so 2^n is one normal float (n >= -126) and the two-step scale of
    `exp_f32`, which keeps subnormal results, is not needed: 6 instructions fewer of ~30
    (a softmax's exponentials are most of its arithmetic). Same polynomial, < 2 ulp."""
    xc = _clamp(b, x, _EXP_NORMAL_MIN, 88.7228390)
    n = b.call(_intrinsic(b, "llvm.roundeven.f32", 1), [b.fmul(xc, _c(x, _LOG2E))])
    r = _fma(b, n, _c(x, -_LN2_HI), xc)
    r = _fma(b, n, _c(x, -_LN2_LO), r)
    p = _horner(b, r, _EXP_POLY)
    p = _fma(b, b.fmul(p, b.fmul(r, r)), _c(x, 1.0), b.fadd(r, _c(x, 1.0)))
    # n = 128 only at the clamp's top (88.72 rounds up): 2p * 2^127 keeps that result finite
    top = b.fcmp_ordered(">", n, _c(x, 127.0))
    p = b.select(top, b.fmul(p, _c(x, 2.0)), p)
    scaled = b.fmul(p, _pow2(b, b.select(top, _c(x, 127.0), n)))
    big = b.fcmp_ordered(">", x, _c(x, 88.7228390))
    small = b.fcmp_ordered("<", x, _c(x, _EXP_NORMAL_MIN))
    out = b.select(big, _c(x, float("inf")), scaled)
    return b.select(small, _c(x, 0.0), out)


# Round-to-nearest by addition: x + 1.5 * 2^23 has unit spacing, so its low mantissa bits
# hold round(x) as an integer (for |x| < 2^22) and subtracting it back gives round(x).
_ROUNDER = 12582912.0


def exp_f32_scaled(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """exp for targets whose ldexp is one instruction (AVX-512's vscalefps): p * 2^n with
    overflow to inf, gradual underflow (or flush, as the mode says) and rounding done by
    the scale itself, so no clamp-and-select tail and no two-step 2^n: ~19 instructions a
    vector instead of ~28. The clamp only keeps n small: below -110 the result rounds to 0,
    above 89.5 it overflows to inf either way. Same polynomial, < 2 ulp."""
    xc = _clamp(b, x, -110.0, 89.5)
    t = _fma(b, xc, _c(x, _LOG2E), _c(x, _ROUNDER))
    n = b.fsub(t, _c(x, _ROUNDER))
    # the integer n from t's bits (defined for nan too, unlike fptosi: nan's p is nan anyway)
    n_int = b.sub(b.bitcast(t, I32), ir.Constant(I32, _float_bits(_ROUNDER)))
    r = _fma(b, n, _c(x, -_LN2_HI), xc)
    r = _fma(b, n, _c(x, -_LN2_LO), r)
    # one Horner chain through 1 + r + r^2 P(r): 7 multiply-adds where the split form
    # takes 9 instructions (still < 2 ulp, tested)
    p = _horner(b, r, (*_EXP_POLY, 1.0, 1.0))
    ldexp = b.module.globals.get("llvm.ldexp.f32.i32") or ir.Function(
        b.module, ir.FunctionType(F32, [F32, I32]), name="llvm.ldexp.f32.i32")
    return b.call(ldexp, [p, n_int])


def _float_bits(value: float) -> int:
    return int.from_bytes(struct.pack("<f", value), "little", signed=True)


def _quotient(b: ir.IRBuilder, p: ir.Value, q: ir.Value) -> ir.Value:
    """p / q of a rational approximation, whose operands are finite (the argument is
    clamped; nan stays nan): `arcp ninf` lets LLVM use a reciprocal estimate and one Newton
    step where the target has one (AVX-512: vrcp14ps, a few cycles a vector, against
    vdivps's ~10), within the approximations' stated bounds (tested)."""
    return b.fdiv(p, q, flags=["arcp", "ninf"])


def tanh_f32(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    xc = _clamp(b, x, -7.90531110763549805, 7.90531110763549805)
    x2 = b.fmul(xc, xc)
    p = b.fmul(_horner(b, x2, _TANH_P), xc)
    q = _horner(b, x2, _TANH_Q)
    tiny = b.fcmp_ordered("<", b.call(_intrinsic(b, "llvm.fabs.f32", 1), [x]), _c(x, 0.0004))
    return b.select(tiny, x, _quotient(b, p, q))


def erf_f32(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    xc = _clamp(b, x, -4.0, 4.0)
    x2 = b.fmul(xc, xc)
    p = b.fmul(_horner(b, x2, _ERF_P), xc)
    q = _horner(b, x2, _ERF_Q)
    return _quotient(b, p, q)


def _intrinsic(b: ir.IRBuilder, name: str, arity: int) -> ir.Function:
    module = b.module
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(F32, [F32] * arity), name=name)
    return fn


MathFunction = Callable[[ir.IRBuilder, ir.Value], ir.Value]
VECTOR_MATH: dict[str, MathFunction] = {"exp": exp_f32, "tanh": tanh_f32, "erf": erf_f32}


def vector_math(flush_denormals: bool, scaled_exp: bool) -> dict[str, MathFunction]:
    """The math functions for a target: the exp with a one-instruction ldexp where the
    target has one (it serves both denormal modes), else the flushed one-step exp for
    kernels that flush denormals, else the IEEE one."""
    if scaled_exp:
        return {**VECTOR_MATH, "exp": exp_f32_scaled}
    return {**VECTOR_MATH, "exp": exp_f32_flushed} if flush_denormals else VECTOR_MATH
