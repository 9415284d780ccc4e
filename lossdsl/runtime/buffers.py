"""Large output arrays recycled between calls, as PyTorch's caching allocator does for tensors.

A fresh array of 1e7 floats costs page faults when the kernel first writes it; on the
benchmark machine that took as long as the kernel, and several times longer when two
threads faulted at once. So a large gradient (or per-element value) array is handed out
as a view of a pooled array; once the caller has dropped every view of it, which CPython's
reference count tells exactly, a later call of the same size and dtype writes into it again.
The pool keeps at most `MAX_POOLED_BYTES`, least recently used first out; `clear()` empties it.
"""
from __future__ import annotations

import sys
import threading
from collections import OrderedDict

import numpy as np

MIN_POOLED_BYTES = 1 << 20  # smaller arrays come from malloc's own free lists: nothing to save
MAX_POOLED_BYTES = 1 << 30

_lock = threading.Lock()
_pool: OrderedDict[int, np.ndarray] = OrderedDict()  # by id, oldest use first


def empty(size: int, dtype: np.dtype) -> np.ndarray:
    """A 1-D array of `size` elements of `dtype`, contents undefined; large ones are recycled."""
    dtype = np.dtype(dtype)
    if size * dtype.itemsize < MIN_POOLED_BYTES:
        return np.empty(size, dtype)
    with _lock:
        for key in _pool:  # no variable may hold a pooled array here: it would count as a use
            if _pool[key].size == size and _pool[key].dtype == dtype and _references(_pool, key) == _IDLE:
                _pool.move_to_end(key)
                return _pool[key][:]
        pooled = np.empty(size, dtype)
        _pool[id(pooled)] = pooled
        _evict()
        return pooled[:]


def zeros(size: int, dtype: np.dtype) -> np.ndarray:
    """`empty`, zeroed here on the calling thread: where a kernel or product on several threads then adds into
    it, no page of a fresh array is first touched there (for a linear head's 128256 x 512 weight gradient, 0.3 s of
    faults inside the products against 30 ms here, 11 ms to zero a recycled array)."""
    array = empty(size, dtype)
    array.fill(0)
    return array


def clear() -> None:
    """Forget every pooled array (arrays still in use stay valid: they are the caller's)."""
    with _lock:
        _pool.clear()


def _references(pool: dict, key: int) -> int:
    return sys.getrefcount(pool[key])


_IDLE = _references({0: np.empty(0)}, 0)  # the pool's own reference and this call's: no view is alive


def _evict() -> None:
    total = sum(a.nbytes for a in _pool.values())
    for key in list(_pool):
        if total <= MAX_POOLED_BYTES:
            break
        total -= _pool.pop(key).nbytes
