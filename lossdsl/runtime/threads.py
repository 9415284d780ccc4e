"""Kernels run over contiguous chunks of their loop, one chunk per thread.

Generated kernels are serial `nogil` Numba functions over a range [start, stop) of
elements or rows that return their partial total. This module splits a call across
threads and adds the partials in chunk order, so a result never depends on thread
timing. Serial kernels compile about 3x faster than Numba's `parallel=True` ones, load
from the cache without Numba's threading layer, and small calls skip threads entirely.
"""
from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numba

#: Elements below which one more thread costs more (its wake-up) than it saves.
MIN_WORK_PER_THREAD = 1 << 16
_ALIGN = 16  # chunk starts on 16-element boundaries: threads never write the same cache line

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _default_threads() -> int:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(usable, numba.config.NUMBA_NUM_THREADS))


_threads = _default_threads()


def get_num_threads() -> int:
    """Threads a large call uses (default: the usable CPUs, at most NUMBA_NUM_THREADS)."""
    return _threads


def set_num_threads(count: int) -> None:
    """Use `count` threads for large calls from now on; calls in flight finish on the old pool."""
    global _threads, _pool
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"the number of threads must be a positive integer; got {count!r}")
    with _lock:  # no call is submitting now; what was submitted still runs after shutdown(wait=False)
        _threads = count
        if _pool is not None:
            _pool.shutdown(wait=False)
            _pool = None


def threads_for(work: int) -> int:
    """The threads a call that touches `work` elements runs on (given units enough)."""
    return min(_threads, max(1, work // MIN_WORK_PER_THREAD))


def run(kernel: Callable[..., float], units: int, work: int, arguments: tuple, align: int = _ALIGN) -> float:
    """kernel(start, stop, *arguments) over [0, units) in chunks; the sum of their totals.

    `work` is the number of elements the call touches (rows x axis length for row kernels); chunks
    start at multiples of `align` units (1 where a unit is a whole sequence, not an element).
    """
    chunks = min(threads_for(work), units)
    if chunks <= 1:
        return kernel(0, units, *arguments)
    bounds = [0] + [units * k // chunks // align * align for k in range(1, chunks)] + [units]
    with _lock:  # submitted under the lock, so set_num_threads never shuts the pool down in between
        pool = _executor()
        others = [pool.submit(kernel, bounds[k], bounds[k + 1], *arguments) for k in range(1, chunks)]
    total = kernel(bounds[0], bounds[1], *arguments)  # the calling thread takes the first chunk
    for future in others:
        total += future.result()
    return total


def pull(task: Callable[[int], None], pieces: int) -> None:
    """task(piece) for each piece in [0, pieces), on up to every thread, each taking the next piece
    when it is free: where another process slows one thread, the others take more of the pieces.
    For work whose pieces write apart (then a result still never depends on thread timing). A piece's
    error is raised once no thread is working on a piece; the pieces not yet taken may not run."""
    workers = min(_threads, pieces)
    if workers <= 1:
        for piece in range(pieces):
            task(piece)
        return
    counter = itertools.count()  # next() on it is one step under the GIL: each piece is taken once

    def take() -> None:
        while (piece := next(counter)) < pieces:
            task(piece)

    with _lock:
        pool = _executor()
        others = [pool.submit(take) for _ in range(workers - 1)]
    try:
        take()
    finally:  # every piece finished (or failed) before the caller's buffers are touched again
        for future in others:
            future.exception()
    for future in others:
        future.result()


def _executor() -> ThreadPoolExecutor:
    """The pool of the current thread count (made on first use); called holding `_lock`."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=max(1, _threads - 1), thread_name_prefix="lossdsl")
    return _pool


def _forget_pool() -> None:
    global _pool, _lock
    _pool = None  # a forked child has none of its parent's threads,
    _lock = threading.Lock()  # and its lock may have been held by one of them


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)
