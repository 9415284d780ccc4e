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
Errors are against float64 references (tests/test_kernel_math.py); NaN, +-inf, zeros,
overflow and underflow through the subnormals match libm.

Generated float32 modules import these as `fast_exp`, `fast_log`, `fast_log1p`; float64
modules bind those names to libm's (vectorisable float64 versions are still to come).
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
def log_float32(x):
    """log(x) for float32 (Cephes logf polynomial on [sqrt(1/2), sqrt(2)))."""
    subnormal = x < _f32(1.17549435e-38)  # scaled up by 2^23 first, so their bits decompose like normals
    bits = bits_of_float32(x * _f32(8388608.0) if subnormal else x)
    k = (bits - _SQRT_HALF_BITS) >> _MANTISSA  # the power of two, so that m = x / 2^k lies in the range
    m = float32_from_bits(bits - (k << _MANTISSA))
    k = k - _i32(23) if subnormal else k
    f = m - _f32(1.0)
    z = f * f
    p = ((((((((_f32(7.0376836292e-2) * f - _f32(1.1514610310e-1)) * f + _f32(1.1676998740e-1)) * f
              - _f32(1.2420140846e-1)) * f + _f32(1.4249322787e-1)) * f - _f32(1.6668057665e-1)) * f
           + _f32(2.0000714765e-1)) * f - _f32(2.4999993993e-1)) * f + _f32(3.3333331174e-1))
    n = _f32(k)
    y = f * z * p + n * _f32(-2.12194440e-4) - _f32(0.5) * z + f + n * _f32(0.693359375)
    y = x if x == _f32(math.inf) else y
    y = _f32(-math.inf) if x == _f32(0.0) else y
    return _f32(math.nan) if x < _f32(0.0) or x != x else y


@numba.njit(fastmath=FASTMATH, error_model="numpy")
def log1p_float32(x):
    """log(1 + x) for float32: log of u = 1 + x, corrected by the rounding of u (Goldberg)."""
    u = _f32(1.0) + x
    correction = (x - (u - _f32(1.0))) / u
    y = log_float32(u) + correction
    y = x if u == _f32(1.0) else y  # tiny x: log1p(x) = x
    y = _f32(-math.inf) if u == _f32(0.0) else y
    return y if u != _f32(math.inf) else u
