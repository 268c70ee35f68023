"""A real evaluation system for tests whose answers a test can make worse between runs.

The evaluation-asset tests (tests/assets) and the warehouse/dbt tests (tests/dbt) both need a
system that answers every case correctly, then, with ``quality`` turned down, wrongly, so that
a regression shows up; each had its own copy of this class.
"""

from __future__ import annotations

from flowstone.systems.base import Prediction, System


class TunableSystem(System):
    """A real system whose quality the test turns down between runs; counts its calls.

    ``quality >= 1``: every prediction is the case's expected answer; below that, unrelated
    words. ``quality`` is its only parameter (so changing it changes the system's fingerprint).
    """

    name = "tunable"

    def __init__(self):
        self.quality = 1.0
        self.calls = 0

    def params(self) -> dict:
        return {"quality": self.quality}

    def predict(self, cases, progress=None, *, suite=None):
        self.calls += 1
        good = self.quality >= 1
        return [Prediction(c.id, c.expected if good else "unrelated words", 0.0) for c in cases]
