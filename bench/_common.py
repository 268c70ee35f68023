"""Helpers shared by the benchmarks: timing and a place for throwaway state."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def best_of(fn: Callable[[], object], repeat: int = 3) -> tuple[float, list[float]]:
    """Run ``fn`` ``repeat`` times; return the median seconds and every timing."""
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings), timings
