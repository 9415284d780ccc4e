"""Domain checks of a call's inputs (`p in [0, 1]`, `y in {0, 1}`): one pass per input, on every thread.
(Elementwise losses test their domains in the loss kernel's own pass, codegen/elementwise.py, and come here
only when its sum is NaN or before writing into a caller's `grad_out`; losses over an axis always do.)

A NumPy test (`(v >= low) & (v <= high)`, then `.all()`) makes three temporaries the size of the input
and took longer than the loss itself (bce at 1e7 elements: 19 ms of checks beside a 20 ms kernel). These
kernels count the elements outside the domain, a chunk per thread; only a call that fails looks for the
first of them. NaN lies outside every domain. Comparisons are exact; each block's count is a float32 sum of
0s and 1s (exact within a block), which fastmath's `reassoc` lets LLVM vectorise, 8 lanes wide (an int64
count of booleans ran 4 wide: y in {-1, 1} at 1e7 float32, one thread, 17 -> 7.4 ms; p in [0, 1], 14.5 ->
4.1 ms).
"""
from __future__ import annotations

import numba
import numpy as np

from . import threads


_BLOCK = 4096  # elements whose count of those outside is a float32 sum (exact: at most 4096)


@numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc"})
def _outside_interval(start, stop, values, low, high, low_open, high_open):
    total = 0.0
    for first in range(start, stop, _BLOCK):
        count = np.float32(0)
        for i in range(first, min(stop, first + _BLOCK)):
            v = values[i]
            above = (v > low) if low_open else (v >= low)
            below = (v < high) if high_open else (v <= high)
            count += np.float32(0) if (above & below) else np.float32(1)
        total += count
    return total


@numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc"})
def _outside_choices(start, stop, values, a, b, c, d):
    """Elements equal to none of a, b, c, d (a set of fewer values repeats one): four comparisons, which
    vectorise where a loop over the set would not."""
    total = 0.0
    for first in range(start, stop, _BLOCK):
        count = np.float32(0)
        for i in range(first, min(stop, first + _BLOCK)):
            v = values[i]
            count += np.float32(0) if ((v == a) | (v == b) | (v == c) | (v == d)) else np.float32(1)
        total += count
    return total


_MAX_CHOICES = 4


def any_outside(values: np.ndarray, domain) -> bool:
    """Whether any of `values` (1-D, contiguous) lies outside `domain` (bounds in the values' own precision)."""
    n = values.size
    if domain.choices is not None:
        choices = np.array(domain.choices, values.dtype)
        if choices.size > _MAX_CHOICES:
            return not np.isin(values, choices).all()
        padded = np.resize(choices, _MAX_CHOICES)  # {0, 1} as 0, 1, 0, 1
        return threads.run(_outside_choices, n, n, (values, *padded)) > 0
    as_dtype = values.dtype.type
    arguments = (values, as_dtype(domain.low), as_dtype(domain.high), bool(domain.low_open), bool(domain.high_open))
    return threads.run(_outside_interval, n, n, arguments) > 0
