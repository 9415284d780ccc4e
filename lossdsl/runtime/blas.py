"""out += a @ b in place, through the BLAS that NumPy itself calls (gemm with beta = 1).

NumPy's matmul always writes a fresh product, so adding one into an existing matrix needs a
temporary of the result's size. A linear head adds each chunk's weight gradient (C x D) into the
total: with a temporary that is either C x D of extra memory or many block-sized products, and
many small products lose badly on a busy machine (each one a fork-join of BLAS's threads). The
BLAS NumPy ships (OpenBLAS in the Linux and Windows wheels) has gemm, which adds in place; it is
found among NumPy's own libraries and called by ctypes, so it is the same library, with the same
threads, as NumPy's products. Where it is not found (another build of NumPy), `add_product` adds
through a caller's scratch buffer, a block of out's rows at a time.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import os

import numpy as np

# (sgemm, dgemm, integer type): the scipy-openblas builds NumPy's wheels ship, then plain OpenBLAS
_CANDIDATES = (("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_", ctypes.c_int64),
               ("scipy_cblas_sgemm", "scipy_cblas_dgemm", ctypes.c_int),
               ("cblas_sgemm64_", "cblas_dgemm64_", ctypes.c_int64),
               ("cblas_sgemm", "cblas_dgemm", ctypes.c_int))
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


@functools.cache
def _gemm() -> dict | None:
    """{dtype: the gemm function} from NumPy's bundled BLAS, or None where none is found."""
    package = os.path.dirname(np.__file__)
    folders = (os.path.join(os.path.dirname(package), "numpy.libs"), os.path.join(package, ".dylibs"))
    for path in sorted(p for folder in folders for p in glob.glob(os.path.join(folder, "*openblas*"))):
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for single, double, integer in _CANDIDATES:
            if hasattr(library, single) and hasattr(library, double):
                return {np.dtype(np.float32): _bind(getattr(library, single), ctypes.c_float, integer),
                        np.dtype(np.float64): _bind(getattr(library, double), ctypes.c_double, integer)}
    return None


def _bind(function, scalar, integer):
    function.restype = None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, integer, integer, integer, scalar,
                         ctypes.c_void_p, integer, ctypes.c_void_p, integer, scalar, ctypes.c_void_p, integer]
    return function


def accumulates() -> bool:
    """Whether `add_product` adds in place (no scratch needed)."""
    return _gemm() is not None


def _operand(matrix: np.ndarray):
    """(transpose flag, leading dimension) of a 2-D matrix whose rows or columns are contiguous, or None."""
    rows, cols = matrix.shape
    step0, step1 = (s // matrix.itemsize for s in matrix.strides)
    if step1 == 1 or cols == 1:
        lead = step0 if rows > 1 else cols
        return (_NO_TRANS, lead) if lead >= max(1, cols) else None
    if step0 == 1 or rows == 1:
        lead = step1 if cols > 1 else rows
        return (_TRANS, lead) if lead >= max(1, rows) else None
    return None


def add_product(out: np.ndarray, a: np.ndarray, b: np.ndarray, scratch: np.ndarray | None = None) -> None:
    """out += a @ b for 2-D float32 or float64 matrices of out's dtype, out with contiguous rows.
    Without an in-place gemm (or for operands it cannot take as they lie), through `scratch` (a 1-D
    buffer of out's dtype, a block of out's rows at a time) or, given none, one temporary product."""
    gemm = _gemm()
    if gemm is not None and a.dtype == b.dtype == out.dtype and out.dtype in gemm and out.size:
        layout_a, layout_b, layout_out = _operand(a), _operand(b), _operand(out)
        if layout_a and layout_b and layout_out and layout_out[0] == _NO_TRANS:
            (rows, inner), cols = a.shape, b.shape[1]
            gemm[out.dtype](_ROW_MAJOR, layout_a[0], layout_b[0], rows, cols, inner, 1.0, a.ctypes.data,
                            layout_a[1], b.ctypes.data, layout_b[1], 1.0, out.ctypes.data, layout_out[1])
            return
    if scratch is None:
        out += a @ b
        return
    block = max(1, scratch.size // max(1, out.shape[1]))
    for low in range(0, out.shape[0], block):
        high = min(out.shape[0], low + block)
        part = scratch[:(high - low) * out.shape[1]].reshape(high - low, out.shape[1])
        np.matmul(a[low:high], b, out=part)
        out[low:high] += part
