"""Shared timing for the benchmark scripts: warm-up, round-robin repeats, median.

Implementations of one case run interleaved (a, b, c, a, b, c, ...), so a noisy,
shared machine slows them alike and their ratios stay meaningful. Long cases
can ask for a short busy pause before each timed run: the worker threads of the previous
library (OpenMP's, Eigen's) spin for a while after their work, and on 2 cores they would
steal one from whichever implementation runs next. Short cases run back to back: after
any pause of a few milliseconds, every call on this machine costs some 200 us more.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable


def median_times(runners: dict[str, Callable[[], object]], repeats: int, settle: float = 0.0) -> dict[str, float]:
    """Seconds per call of each runner: the median of `repeats` interleaved runs after one warm-up,
    each run after `settle` seconds of busy waiting."""
    for run in runners.values():
        run()  # compiles, caches, page-faults its buffers
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            _busy_wait(settle)
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def shape_arguments(doc: str, repeats: int = 3, only: tuple[str, ...] = ()):
    """The options of a benchmark over a few shapes: --repeats, --small (tiny shapes, a smoke test), and where
    it measures several cases (`only`: their names), --only NAME[,NAME]."""
    import argparse
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--small", action="store_true", help="tiny shapes: a smoke test, not a measurement")
    if only:
        parser.add_argument("--only", type=lambda names: tuple(names.split(",")), default=only,
                            metavar="NAME[,NAME]", help=f"some of {', '.join(only)} (default: all)")
    return parser.parse_args()


def autograd_call(loss, parameters: list, others: list) -> Callable[[], None]:
    """A call of loss(*parameters, *others).backward() on PyTorch tensors, the parameters' gradients cleared
    first (as a training step does)."""
    def call() -> None:
        for tensor in parameters:
            tensor.grad = None
        loss(*parameters, *others).backward()
    return call


def _busy_wait(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def machine() -> str:
    """The CPU model and core count, for result tables."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} CPUs"
