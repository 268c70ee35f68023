"""Regression math: did a metric fall since the previous materialization of the partition,
by more than the margin, and (when asked) by more than chance?

Why a paired test: a suite is re-run on the same cases, so the previous and the current scores
pair up case by case. A mean that moved by 6% on 30 cases is often noise; the paired test on
the same cases says whether it is, which is what ``require_significance`` asks for before a
blocking regression stops a promotion.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flowstone.evaluation.config import RegressionSettings
from flowstone.evaluation.statistics import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    PairedComparison,
    compare_paired,
)

CaseScores = Mapping[str, Mapping[str, float | None]]  # metric -> case id -> score (None: invalid)


@dataclass(frozen=True)
class Regression:
    """One metric's fall: means before and after, and the paired test when one was run."""

    metric: str
    previous: float
    current: float
    paired: PairedComparison | None = None

    @property
    def relative_drop(self) -> float:
        return (self.previous - self.current) / self.previous if self.previous else 0.0

    def metadata(self) -> dict[str, object]:
        """The figures a regression check shows: the drop, and with a paired test the
        difference on the same cases, its interval and p-value."""
        figures: dict[str, object] = {
            "previous_mean": round(self.previous, 3),
            "current_mean": round(self.current, 3),
            "relative_drop": round(self.relative_drop, 4),
        }
        if self.paired is not None:
            figures.update(
                difference=round(self.paired.difference, 4),
                ci=self.paired.ci.describe(),
                p_value=round(self.paired.p_value, 4),
                test=self.paired.test,
                paired_cases=self.paired.cases,
            )
        return figures


def _paired_scores(
    metric: str, previous: CaseScores, current: CaseScores
) -> tuple[list[float], list[float]]:
    before, after = previous.get(metric, {}), current.get(metric, {})
    shared = [c for c in after if c in before and before[c] is not None and after[c] is not None]
    return [float(before[c]) for c in shared], [float(after[c]) for c in shared]  # type: ignore[arg-type]


def assess(
    current: Mapping[str, float],
    previous: Mapping[str, float],
    settings: RegressionSettings,
    current_cases: CaseScores | None = None,
    previous_cases: CaseScores | None = None,
    *,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> tuple[list[Regression], dict[str, Regression]]:
    """(regressions, every compared metric): a metric regressed when its mean fell by more
    than the margin and, with ``require_significance``, the paired test on the cases both runs
    scored validly has p < alpha.

    A metric with a previous mean of 0 cannot drop, and one new in this run has nothing to
    regress against. With ``require_significance`` and no per-case scores from the previous
    run (a report stored before they were kept), the paired test cannot run: the margin
    alone decides, and the comparison says so by having no ``paired`` figures.
    """
    compared: dict[str, Regression] = {}
    found = []
    for metric, now in current.items():
        before = previous.get(metric)
        if before is None or before <= 0:
            continue
        candidate = Regression(metric, float(before), float(now))
        paired = None
        if settings.require_significance and current_cases and previous_cases:
            x, y = _paired_scores(metric, previous_cases, current_cases)
            if x:
                paired = compare_paired(
                    x, y, metric=metric, a="previous", b="current", level=level,
                    resamples=resamples, seed=seed, alpha=settings.alpha,
                )  # fmt: skip
                candidate = Regression(metric, float(before), float(now), paired)
        compared[metric] = candidate
        dropped = candidate.relative_drop > settings.margin
        real = paired is None or (paired.p_value < settings.alpha and paired.difference < 0)
        if dropped and real:
            found.append(candidate)
    return found, compared
