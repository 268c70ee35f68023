"""Regression math: did a metric's mean fall by more than the margin since the last run?"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Regression:
    metric: str
    previous: float
    current: float

    @property
    def relative_drop(self) -> float:
        return (self.previous - self.current) / self.previous if self.previous else 0.0


def find_regressions(
    current: Mapping[str, float], previous: Mapping[str, float], margin: float
) -> list[Regression]:
    """Metrics present in both runs whose mean dropped by more than ``margin`` (relative).

    A metric with a previous mean of 0 cannot drop, and a metric new in this run has nothing
    to regress against.
    """
    if not 0.0 <= margin <= 1.0:
        raise ValueError(f"regression margin must be in [0, 1], got {margin}")
    found = []
    for metric, now in current.items():
        before = previous.get(metric)
        if before is None or before <= 0:
            continue
        candidate = Regression(metric, float(before), float(now))
        if candidate.relative_drop > margin:
            found.append(candidate)
    return found
