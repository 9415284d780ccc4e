"""Products into existing matrices through the BLAS NumPy itself calls (gemm), and that BLAS on one thread.

NumPy's matmul writes a fresh product; adding one into an existing matrix (a linear head's weight
gradient, summed over chunks of rows) needs a temporary of the result's size. gemm adds in place
(beta = 1). The BLAS NumPy ships (OpenBLAS in the Linux and Windows wheels) is found among NumPy's
own libraries and called by ctypes, so it is the same library, with the same threads, as NumPy's
products; ctypes releases the GIL, so several Python threads can each run a product.

A head's products are many and chunk-sized, and each multi-threaded BLAS call is a fork-join of
threads that spin: with one core busy with another process, the call waits for the thread that
is not running. `single_threaded()` runs BLAS on the calling thread alone, so the head can spread
pieces of a product over lossdsl's own threads, a free thread taking the next piece.
Where the library is not found (another build of NumPy), products go through NumPy.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import os
import threading
from typing import Iterator

import numpy as np

# (sgemm, dgemm, integer type): the scipy-openblas builds NumPy's wheels ship, then plain OpenBLAS
_CANDIDATES = (("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_", ctypes.c_int64),
               ("scipy_cblas_sgemm", "scipy_cblas_dgemm", ctypes.c_int),
               ("cblas_sgemm64_", "cblas_dgemm64_", ctypes.c_int64),
               ("cblas_sgemm", "cblas_dgemm", ctypes.c_int))
# (set, get) the number of BLAS threads, by the same builds' names
_THREAD_CONTROLS = (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
                    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
                    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
                    ("openblas_set_num_threads", "openblas_get_num_threads"))
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


@functools.cache
def _library():
    """NumPy's bundled OpenBLAS and the names of its gemm functions, or None where none is found."""
    package = os.path.dirname(np.__file__)
    folders = (os.path.join(os.path.dirname(package), "numpy.libs"), os.path.join(package, ".dylibs"))
    for path in sorted(p for folder in folders for p in glob.glob(os.path.join(folder, "*openblas*"))):
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for names in _CANDIDATES:
            if hasattr(library, names[0]) and hasattr(library, names[1]):
                return library, names
    return None


@functools.cache
def _gemm() -> dict | None:
    """{dtype: the gemm function} from NumPy's bundled BLAS, or None where none is found."""
    found = _library()
    if found is None:
        return None
    library, (single, double, integer) = found
    return {np.dtype(np.float32): _bind(getattr(library, single), ctypes.c_float, integer),
            np.dtype(np.float64): _bind(getattr(library, double), ctypes.c_double, integer)}


@functools.cache
def _thread_control():
    """(set, get) of the BLAS's thread count, or None where it has neither."""
    found = _gemm() and _library()
    if not found:
        return None
    for set_name, get_name in _THREAD_CONTROLS:
        if hasattr(found[0], set_name) and hasattr(found[0], get_name):
            set_threads, get_threads = getattr(found[0], set_name), getattr(found[0], get_name)
            set_threads.argtypes, set_threads.restype, get_threads.restype = [ctypes.c_int], None, ctypes.c_int
            return set_threads, get_threads
    return None


_held = threading.Lock()
_holders = [0, 0]  # the blocks inside single_threaded() now, and the thread count to restore after the last


@contextlib.contextmanager
def single_threaded() -> Iterator[bool]:
    """BLAS on each calling thread alone inside the block (the process-wide setting, restored when the
    last such block ends); yields whether it could, that is whether `multiply` then takes the pieces
    of a product on several threads at once without BLAS's own threads."""
    control = _thread_control()
    if control is None:
        yield False
        return
    set_threads, get_threads = control
    with _held:
        if _holders[0] == 0:
            _holders[1] = get_threads()
            set_threads(1)
        _holders[0] += 1
    try:
        yield True
    finally:
        with _held:
            _holders[0] -= 1
            if _holders[0] == 0:
                set_threads(_holders[1])


def _bind(function, scalar, integer):
    function.restype = None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, integer, integer, integer, scalar,
                         ctypes.c_void_p, integer, ctypes.c_void_p, integer, scalar, ctypes.c_void_p, integer]
    return function


def in_place() -> bool:
    """Whether `multiply(..., accumulate=True)` adds with no temporary."""
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


def multiply(out: np.ndarray, a: np.ndarray, b: np.ndarray, accumulate: bool = False) -> None:
    """out = a @ b, or out += a @ b with `accumulate`, for 2-D float32 or float64 matrices of out's dtype,
    out with contiguous rows (a column slice of a matrix too). Without an in-place gemm, or for operands
    it cannot take as they lie, through NumPy (adding then needs a temporary of out's size)."""
    gemm = _gemm()
    if gemm is not None and a.dtype == b.dtype == out.dtype and out.dtype in gemm and out.size:
        layout_a, layout_b, layout_out = _operand(a), _operand(b), _operand(out)
        if layout_a and layout_b and layout_out and layout_out[0] == _NO_TRANS:
            (rows, inner), cols = a.shape, b.shape[1]
            gemm[out.dtype](_ROW_MAJOR, layout_a[0], layout_b[0], rows, cols, inner, 1.0, a.ctypes.data,
                            layout_a[1], b.ctypes.data, layout_b[1], float(accumulate), out.ctypes.data,
                            layout_out[1])
            return
    if accumulate:
        out += a @ b
    else:
        np.matmul(a, b, out=out)
