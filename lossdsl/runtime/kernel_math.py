"""Math functions that generated kernels call instead of libm, written so LLVM vectorises them.

Numba compiles `math.exp` to a scalar libm call (the PyPI llvmlite has no vector math
library), so a loop with one exp per element runs at scalar speed. These versions are
plain arithmetic with no calls and no branches (selects), so loops over them vectorise:
- exp: Cody-Waite range reduction x = n*ln2 + r, the Cephes expf polynomial for e^r, and
  2^n written into the exponent bits through a bitcast; <= 1.01 ulp; 3.5x libm's expf
  per core on this machine's AMD EPYC.
- log: the exponent and mantissa taken apart through the bits (subnormals scaled first),
  the Cephes logf polynomial on [sqrt(1/2), sqrt(2)); <= 2 ulp.
- log1p: log(1 + x) corrected by the rounding of 1 + x (Goldberg); <= 2.1 ulp; 10x libm's.
  `log1p_unit` is the same for x in [0, 1] (softplus, log_sigmoid and log_cosh lowered), with no
  special cases and 1/(1 + x) from the caller; about twice as fast.
Errors are against float64 references (tests/test_kernel_math.py); NaN, +-inf, zeros,
overflow and underflow through the subnormals match libm.

- tanh (float32): the Cephes tanhf polynomial below |x| = 0.625, 1 - 2z/(1 + z) with
  z = e^(-2|x|) above, <= 1.5 ulp; `tanh_exp` takes z from the caller, who may share it (log_cosh).
- pow (float32): e^(y log|x|) through the float64 exp and log below, so the error of y log|x|
  does not reach the float32 result; C's special cases (negative bases, zeros, ones, infinities).
- whole powers: x^e for a runtime e that a call finds whole and small (a focal loss's gamma = 2), by
  squarings, in a copy of the element loop the kernel takes for such calls.
- float64 exp (degree-12 Taylor after the same reduction) and log (fdlibm's polynomial in
  s = (m-1)/(m+1)), <= 1.5 ulp, and log1p from them; 2-3x libm's per core.
- expm1: after exp's reduction, r times a degree-12 Taylor polynomial, scaled back as
  2^n expm1(r) + (2^n - 1); float64 <= 2 ulp, float32 through it (<= 0.5 ulp and a float64
  rounding). A softmax focal loss's 1 - p_y per row then vectorises with the rest of its row code.

Generated modules import these as `fast_exp`, `fast_log`, ... (codegen/targets.py chooses by float
type; float64 tanh and pow stay libm's: a float64 pow through exp and log would lose accuracy).
This module imports only Numba and llvmlite, so a cached loss still loads without SymPy.
All functions use NumPy's error model: a division by zero gives inf or NaN, not an exception.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

FASTMATH = {"contract", "reassoc"}


def _bitcast(source, target, llvm_type):
    """An intrinsic reinterpreting the bits of `source` as `target` (no conversion)."""

    @intrinsic
    def cast(typingctx, value):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], llvm_type)
        return target(source), codegen

    return cast


float32_from_bits = _bitcast(types.int32, types.float32, ir.FloatType())
bits_of_float32 = _bitcast(types.float32, types.int32, ir.IntType(32))

_f32, _i32 = np.float32, np.int32

# float32: adding 1.5 * 2^23 rounds to an integer that then sits in the low mantissa bits
_SHIFT32 = _f32(12582912.0)
_SHIFT32_BITS = _i32(0x4B400000)
_MAX32, _MIN32 = _f32(88.7228394), _f32(-103.972084)  # e^x overflows above, is 0 below


@numba.njit(fastmath=FASTMATH, error_model="numpy")
def exp_float32(x):
    """e^x for float32 (Cephes expf polynomial on |r| <= ln2/2)."""
    xc = min(max(x, _MIN32), _MAX32)
    t = xc * _f32(1.44269504) + _SHIFT32
    n = t - _SHIFT32
    k = bits_of_float32(t) - _SHIFT32_BITS
    r = xc - n * _f32(0.693359375) - n * _f32(-2.12194440e-4)
    p = ((((((_f32(1.9875691500e-4) * r + _f32(1.3981999507e-3)) * r + _f32(8.3334519073e-3)) * r
            + _f32(4.1665795894e-2)) * r + _f32(1.6666665459e-1)) * r + _f32(5.0000001201e-1)) * r * r + r + _f32(1.0))
    half = k >> _i32(1)  # 2^k as two factors, so that results down to the subnormals are exact
    y = (p * float32_from_bits((half + _i32(127)) << _i32(23))
         * float32_from_bits((k - half + _i32(127)) << _i32(23)))
    y = _f32(math.inf) if x > _MAX32 else y
    return x if x != x else y


_SQRT_HALF_BITS = _i32(0x3F3504F3)  # the bits of sqrt(1/2): mantissas are reduced to [sqrt(1/2), sqrt(2))
_MANTISSA = _i32(23)


@numba.njit(fastmath=FASTMATH, error_model="numpy")
def _log_reduced_float32(f, n):
    """log(2^n (1 + f)) for f = m - 1, m in [sqrt(1/2), sqrt(2)): the Cephes logf polynomial."""
    z = f * f
    p = ((((((((_f32(7.0376836292e-2) * f - _f32(1.1514610310e-1)) * f + _f32(1.1676998740e-1)) * f
              - _f32(1.2420140846e-1)) * f + _f32(1.4249322787e-1)) * f - _f32(1.6668057665e-1)) * f
           + _f32(2.0000714765e-1)) * f - _f32(2.4999993993e-1)) * f + _f32(3.3333331174e-1))
    return f * z * p + n * _f32(-2.12194440e-4) - _f32(0.5) * z + f + n * _f32(0.693359375)


@numba.njit(fastmath=FASTMATH, error_model="numpy")
def log_float32(x):
    """log(x) for float32 (Cephes logf polynomial on [sqrt(1/2), sqrt(2)))."""
    subnormal = x < _f32(1.17549435e-38)  # scaled up by 2^23 first, so their bits decompose like normals
    bits = bits_of_float32(x * _f32(8388608.0) if subnormal else x)
    k = (bits - _SQRT_HALF_BITS) >> _MANTISSA  # the power of two, so that m = x / 2^k lies in the range
    m = float32_from_bits(bits - (k << _MANTISSA))
    k = k - _i32(23) if subnormal else k
    y = _log_reduced_float32(m - _f32(1.0), _f32(k))
    y = x if x == _f32(math.inf) else y
    y = _f32(-math.inf) if x == _f32(0.0) else y
    return _f32(math.nan) if x < _f32(0.0) or x != x else y


def _log1p_through(log, F):
    """log(1 + x) from `log` in float type F: log of u = 1 + x, corrected by the rounding of u (Goldberg)."""

    @numba.njit(fastmath=FASTMATH, error_model="numpy")
    def log1p(x):
        u = F(1.0) + x
        correction = (x - (u - F(1.0))) / u
        y = log(u) + correction
        y = x if u == F(1.0) else y  # tiny x: log1p(x) = x
        y = F(-math.inf) if u == F(0.0) else y
        return y if u != F(math.inf) else u

    return log1p


log1p_float32 = _log1p_through(log_float32, _f32)


@numba.njit(fastmath=FASTMATH, error_model="numpy")
def log1p_unit_float32(z, r):
    """log(1 + z) for z in [0, 1] or NaN (an exp(-|x|): softplus and its kin), given r = 1/(1 + z), which the
    caller shares with a sigmoid. u = 1 + z lies in [1, 2]: no subnormal, zero, negative or infinite case
    to select, and the rounding correction of u is a product with r, not a division."""
    u = _f32(1.0) + z
    bits = bits_of_float32(u)
    k = (bits - _SQRT_HALF_BITS) >> _MANTISSA  # 0 or 1
    y = _log_reduced_float32(float32_from_bits(bits - (k << _MANTISSA)) - _f32(1.0), _f32(k))
    return y + (z - (u - _f32(1.0))) * r


@numba.njit(fastmath=FASTMATH, error_model="numpy")
def tanh_exp_float32(x, z):
    """tanh(x) for float32 given z = e^(-2|x|) (shared with log_cosh): sign(x) (1 - 2z/(1 + z))
    above |x| = 0.625, the Cephes tanhf odd polynomial below (where 1 - z would cancel)."""
    big = _f32(1.0) - _f32(2.0) * z / (_f32(1.0) + z)  # not (1 - z)/(1 + z): 1 - z rounds to 1 too soon
    big = big if x >= _f32(0.0) else -big
    s = x * x
    small = ((((_f32(-5.70498872745e-3) * s + _f32(2.06390887954e-2)) * s - _f32(5.37397155531e-2)) * s
              + _f32(1.33314422036e-1)) * s - _f32(3.33332819422e-1)) * s * x + x
    return big if abs(x) > _f32(0.625) else small


@numba.njit(fastmath=FASTMATH, error_model="numpy")
def tanh_float32(x):
    """tanh(x) for float32."""
    return tanh_exp_float32(x, exp_float32(_f32(-2.0) * abs(x)))


@numba.njit(fastmath=FASTMATH, error_model="numpy")
def tanh_exp_float64(x, z):
    """float64 tanh stays libm's; z is unused (and its exp, if nothing else needs it, dead code)."""
    return math.tanh(x)


float64_from_bits = _bitcast(types.int64, types.float64, ir.DoubleType())
bits_of_float64 = _bitcast(types.float64, types.int64, ir.IntType(64))

_f64, _i64 = np.float64, np.int64
_SHIFT64 = _f64(6755399441055744.0)  # 1.5 * 2^52
_SHIFT64_BITS = _i64(0x4338000000000000)
_MAX64, _MIN64 = _f64(709.782712893384), _f64(-745.1332191019412)
_LN2_HI, _LN2_LO = _f64(6.93147180369123816490e-01), _f64(1.90821492927058770002e-10)


@numba.njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _reduced_float64(xc):
    """(r, k, low, high) with xc = k*ln2 + r, |r| <= ln2/2 (Cody-Waite), and 2^k = low * high as two factors, so
    that k = 1024 and results down to the subnormals stay exact: exp's and expm1's reduction."""
    t = xc * _f64(1.4426950408889634) + _SHIFT64
    n = t - _SHIFT64
    k = bits_of_float64(t) - _SHIFT64_BITS
    r = xc - n * _LN2_HI - n * _LN2_LO
    half = k >> _i64(1)
    return (r, k, float64_from_bits((half + _i64(1023)) << _i64(52)),
            float64_from_bits((k - half + _i64(1023)) << _i64(52)))


@numba.njit(fastmath=FASTMATH, error_model="numpy")
def exp_float64(x):
    """e^x for float64: x = n*ln2 + r, |r| <= ln2/2, a degree-12 Taylor polynomial for e^r."""
    r, _, low, high = _reduced_float64(min(max(x, _MIN64), _MAX64))
    p = _f64(1.0 / 479001600.0)
    for c in (39916800.0, 3628800.0, 362880.0, 40320.0, 5040.0, 720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0):
        p = p * r + _f64(1.0 / c)
    y = p * low * high
    y = _f64(math.inf) if x > _MAX64 else y
    return x if x != x else y


# below _EXPM1_LOW e^x - 1 rounds to -1; above _EXPM1_HIGH the 1 is below e^x's last digit and 2^n may overflow
_EXPM1_LOW, _EXPM1_HIGH = _f64(-40.0), _f64(700.0)


@numba.njit(fastmath=FASTMATH, error_model="numpy")
def expm1_float64(x):
    """e^x - 1 for float64: expm1(r) = r (1 + r/2 + ... + r^12/13!) after the reduction exp takes,
    then 2^n expm1(r) + (2^n - 1), whose second term is exact; no cancellation for small x. No calls
    and no branches, so that the loops of a row's code (once per row) vectorise around it."""
    r, k, low, high = _reduced_float64(min(max(x, _EXPM1_LOW), _MAX64))
    p = _f64(1.0 / 6227020800.0)
    for c in (479001600.0, 39916800.0, 3628800.0, 362880.0, 40320.0, 5040.0, 720.0, 120.0, 24.0, 6.0, 2.0, 1.0):
        p = p * r + _f64(1.0 / c)
    e = r * p
    y = (low * e) * high + (low * high - _f64(1.0))
    y = ((e + _f64(1.0)) * low) * high if x > _EXPM1_HIGH else y  # where 2^n alone may overflow
    y = e if k == _i64(0) else y  # |x| <= ln2/2, zeros of both signs and tiny x exactly
    y = _f64(math.inf) if x > _MAX64 else y
    return x if x != x else y


@numba.njit(fastmath=FASTMATH, error_model="numpy")
def expm1_float32(x):
    """e^x - 1 for float32 through the float64 one: within a rounding of the exact value."""
    return _f32(expm1_float64(_f64(x)))


_SQRT_HALF_BITS64 = _i64(0x3FE6A09E667F3BCD)


@numba.njit(fastmath=FASTMATH, error_model="numpy")
def log_float64(x):
    """log(x) for float64: m = x / 2^k in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m-1)/(m+1)."""
    subnormal = x < _f64(2.2250738585072014e-308)
    bits = bits_of_float64(x * _f64(4503599627370496.0) if subnormal else x)
    k = (bits - _SQRT_HALF_BITS64) >> _i64(52)
    m = float64_from_bits(bits - (k << _i64(52)))
    k = k - _i64(52) if subnormal else k
    f = m - _f64(1.0)
    s = f / (_f64(2.0) + f)
    z = s * s
    w = z * z
    r = (z * (_f64(6.666666666666735130e-01) + w * (_f64(2.857142874366239149e-01) + w * (
        _f64(1.818357216161805012e-01) + w * _f64(1.479819860511658591e-01))))
         + w * (_f64(3.999999999940941908e-01) + w * (_f64(2.222219843214978396e-01) + w * _f64(1.531383769920937332e-01))))
    half_f2 = _f64(0.5) * f * f
    n = _f64(k)
    y = n * _LN2_HI - ((half_f2 - (s * (half_f2 + r) + n * _LN2_LO)) - f)
    y = x if x == _f64(math.inf) else y
    y = _f64(-math.inf) if x == _f64(0.0) else y
    return _f64(math.nan) if x < _f64(0.0) or x != x else y


log1p_float64 = _log1p_through(log_float64, _f64)


@numba.njit(fastmath=FASTMATH, error_model="numpy")
def log1p_unit_float64(z, r):
    """log(1 + z) for float64 z in [0, 1] (r unused: float64 keeps log1p's own correction)."""
    return log1p_float64(z)


@numba.njit(fastmath=FASTMATH, error_model="numpy")
def pow_log_float32(x):
    """log|x| in float64, for pow_from_log_float32 (shared by x^a and x^b)."""
    return log_float64(_f64(abs(x)))


@numba.njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def pow_from_log_float32(x, y, log_base):
    """x^y for float32 as e^(y log|x|) in float64 (exact to float32 rounding), with C's powf special cases.

    Inlined by Numba: left to LLVM, a kernel with two powers kept them as calls and ran
    scalar (4x slower). Conditions are combined with & and | rather than `and`/`or`, whose
    branches also kept LLVM from vectorising the caller's loop.
    """
    # x^0 = 1^y = 1, even for NaN and infinite partners (0 * inf would make NaN)
    t = _f64(0.0) if (log_base == _f64(0.0)) | (y == _f32(0.0)) else _f64(y) * log_base
    magnitude = _f32(exp_float64(t))
    half = y * _f32(0.5)
    fraction = half - np.floor(half)  # 0 for even integers, 1/2 for odd ones (math.floor would return an int)
    odd = fraction == _f32(0.5)
    integer = (fraction == _f32(0.0)) | odd | (abs(y) == _f32(math.inf))
    result = -magnitude if odd & (bits_of_float32(x) < _i32(0)) else magnitude  # the sign bit: -0 too
    return result if integer | (x >= _f32(0.0)) | (x == _f32(-math.inf)) else _f32(math.nan)


@numba.njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def pow_float32(x, y):
    """x^y for float32 (<= 1 ulp); inlined by Numba like pow_from_log_float32."""
    return pow_from_log_float32(x, y, pow_log_float32(x))


# Whole exponents up to these take fast_ipow's products (float32: in float64, so <= 0.5 ulp plus a rounding
# of float64; float64: <= 1.5 ulp at x^4); larger ones and the rest, the general powers above and below
MAX_WHOLE_POWER_FLOAT32, MAX_WHOLE_POWER_FLOAT64 = 8, 4


def _whole_exponent(largest):
    @numba.njit(fastmath=FASTMATH, error_model="numpy")
    def whole_exponent(e):
        """Whether x^e may be taken as products of squarings (checked once per call, outside the loop)."""
        return (e >= 0) & (e <= largest) & (e == np.floor(e))
    return whole_exponent


whole_exponent_float32 = _whole_exponent(MAX_WHOLE_POWER_FLOAT32)
whole_exponent_float64 = _whole_exponent(MAX_WHOLE_POWER_FLOAT64)


def _ipow(F, through):
    @numba.njit(inline="always", fastmath=FASTMATH, error_model="numpy")
    def ipow(x, e):
        """x^e for a whole e in [0, 15] by squarings; selects on the bits of e, which the loop does not change.
        x^0 = 1 for every x, NaN^e = NaN, and signs, zeros and infinities follow from the products."""
        n = np.int32(e)
        b, r = through(x), through(1.0)
        r = r * b if n & 1 else r
        b = b * b
        r = r * b if n & 2 else r
        b = b * b
        r = r * b if n & 4 else r
        b = b * b
        r = r * b if n & 8 else r
        return F(r)
    return ipow


ipow_float32 = _ipow(_f32, _f64)
ipow_float64 = _ipow(_f64, _f64)


@numba.njit(fastmath=FASTMATH, error_model="numpy")
def pow_log_float64(x):
    """Unused by pow_from_log_float64 (float64 powers stay libm's): a dead value LLVM drops."""
    return _f64(0.0)


@numba.njit(fastmath=FASTMATH, error_model="numpy")
def pow_from_log_float64(x, y, log_base):
    """float64 x^y: libm's; through exp and log, the error of y log|x| would reach the result."""
    return math.pow(x, y)
