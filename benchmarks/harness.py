"""Shared timing for the benchmark scripts: warm-up, round-robin repeats, median.

Implementations of one case run interleaved (a, b, c, a, b, c, ...), so a noisy,
shared machine slows them alike and their ratios stay meaningful. Each timed run
starts after a short pause: the worker threads of the previous library (OpenMP's,
Eigen's) spin for a while after their work, and on 2 cores they would steal one from
whichever implementation runs next.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable

SETTLE_SECONDS = 0.05


def median_times(runners: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Seconds per call of each runner: the median of `repeats` interleaved runs after one warm-up."""
    for run in runners.values():
        run()  # compiles, caches, page-faults its buffers
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            time.sleep(SETTLE_SECONDS)
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def machine() -> str:
    """The CPU model and core count, for result tables."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} CPUs"
