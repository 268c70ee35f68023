"""Pool counters and latency percentiles, cheap enough to update on every call."""

from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Any

LATENCY_WINDOW = 4096


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[rank]


class PoolStats:
    """Counters by name plus the latencies of the last LATENCY_WINDOW calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def incr(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.counters[name] += amount

    def record_call(self, seconds: float, ok: bool) -> None:
        self.latencies.append(seconds)  # deque.append is atomic
        with self._lock:
            self.counters["requests"] += 1
            self.counters["succeeded" if ok else "failed"] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            counters = dict(self.counters)
        values = sorted(self.latencies)
        latency = {
            "p50_ms": round(percentile(values, 0.50) * 1000, 3),
            "p95_ms": round(percentile(values, 0.95) * 1000, 3),
            "p99_ms": round(percentile(values, 0.99) * 1000, 3),
            "mean_ms": round(sum(values) / len(values) * 1000, 3) if values else 0.0,
            "window": len(values),
        }
        for name in (
            "requests",
            "succeeded",
            "failed",
            "timeouts",
            "crashes",
            "retries",
            "saturated",
            "affinity_hits",
            "affinity_misses",
            "recycled",
            "started",
            "start_failures",
            "health_failures",
            "dead_idle",
            "redelivered",
            "overflow_started",
            "overflow_retired",
            "overflow_start_failures",
        ):
            counters.setdefault(name, 0)
        return {**counters, "latency": latency}
