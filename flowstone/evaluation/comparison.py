"""Every pair of systems evaluated on one suite, compared on the same cases.

Why: "is system B better than A?" is the question an evaluation exists to answer, and two
means with overlapping intervals do not answer it: the systems share hard and easy cases, so
the paired difference is far more precise than the separate means suggest. Each pair gets the
difference of means, its paired-bootstrap interval and a p-value
(:func:`flowstone.evaluation.statistics.compare_paired`); the p-values of one metric are
corrected together (Holm by default), since with k systems a suite makes k(k-1)/2 comparisons
per metric and some would pass ``alpha`` by chance alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd

from flowstone.evaluation.statistics import (
    DEFAULT_ALPHA,
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    PairedComparison,
    compare_paired,
    correct,
)

NO_DIFFERENCE = "no significant difference"


@dataclass(frozen=True)
class ComparisonSettings:
    level: float = DEFAULT_LEVEL
    resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED
    alpha: float = DEFAULT_ALPHA
    correction: str = "holm"


@dataclass(frozen=True)
class MetricComparison:
    """One metric across the suite's systems: each system's mean, and every pair compared."""

    metric: str
    means: dict[str, float]  # system -> mean over its valid cases
    pairs: list[PairedComparison]  # b against a, for every a before b in suite order

    @property
    def ranking(self) -> list[str]:
        """Systems by mean, highest first."""
        return sorted(self.means, key=lambda s: (-self.means[s], s))

    @property
    def leaders(self) -> list[str]:
        """The systems no other system beats significantly: the top, with the ties it has."""
        beaten = {
            p.a if p.verdict == "better" else p.b for p in self.pairs if p.verdict != NO_DIFFERENCE
        }
        return [s for s in self.ranking if s not in beaten]

    def verdict(self, system: str, other: str) -> str:
        """How ``system`` compares with ``other``: better, worse or no significant difference."""
        for pair in self.pairs:
            if (pair.a, pair.b) == (other, system):
                return pair.verdict
            if (pair.a, pair.b) == (system, other):
                flipped = {"better": "worse", "worse": "better"}
                return flipped.get(pair.verdict, pair.verdict)
        raise KeyError(f"{system} and {other} were not compared on {self.metric}")

    def to_dict(self) -> dict:
        return {
            "metric": self.metric,
            "means": dict(self.means),
            "ranking": self.ranking,
            "leaders": self.leaders,
            "pairs": [
                {
                    **asdict(p),
                    "ci": [p.ci.low, p.ci.high],
                    "ci_level": p.ci.level,
                    "verdict": p.verdict,
                }  # fmt: skip
                for p in self.pairs
            ],
        }


@dataclass(frozen=True)
class SuiteComparisonResult:
    suite: str
    systems: list[str]
    metrics: dict[str, MetricComparison]
    settings: ComparisonSettings

    def to_dict(self) -> dict:
        return {
            "suite": self.suite,
            "systems": list(self.systems),
            "settings": asdict(self.settings),
            "metrics": {name: m.to_dict() for name, m in self.metrics.items()},
        }

    def markdown(self) -> str:
        """Every pair as a markdown table: the difference b - a, its interval, the corrected
        p-value and the verdict (what the asset's metadata shows in the Dagster UI)."""
        rows = [
            "| metric | b vs a | b - a | CI | p (adj.) | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for name, metric in self.metrics.items():
            rows += [
                f"| {name} | {p.b} vs {p.a} | {p.difference:+.3f} | {p.ci.bounds()} "
                f"| {p.p_adjusted:.3g} | {p.verdict} |"
                for p in metric.pairs
            ]
        return "\n".join(rows)

    def significant(self) -> list[PairedComparison]:
        return [p for m in self.metrics.values() for p in m.pairs if p.significant]


def _paired(
    frames: Mapping[str, pd.DataFrame], a: str, b: str, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of ``a`` and ``b`` on the cases both answered with a valid score, in one order
    (``a``'s). A case invalid for either (an unreadable judgement) is left out of this pair
    only."""
    fast = _aligned(frames[a], frames[b], metric)
    if fast is not None:
        return fast
    left = frames[a][["case_id", metric]].rename(columns={metric: "a"})
    right = frames[b][["case_id", metric]].rename(columns={metric: "b"})
    joined = left.merge(right, on="case_id", how="inner").dropna(subset=["a", "b"])
    return joined["a"].to_numpy(dtype=float), joined["b"].to_numpy(dtype=float)


def _aligned(
    left: pd.DataFrame, right: pd.DataFrame, metric: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """What the inner merge on ``case_id`` gives (the left frame's order, rows with a missing
    score on either side dropped), by index lookup: a pandas merge per pair was a third of a
    suite's comparison. None when a frame repeats a case (several answers per case), where
    only the merge pairs every answer with every other, or holds scores that are not plain
    numbers (a nullable dtype), which the merge drops before converting."""
    if left[metric].dtype.kind not in "fiub" or right[metric].dtype.kind not in "fiub":
        return None
    left_ids, right_ids = pd.Index(left["case_id"]), pd.Index(right["case_id"])
    if not (left_ids.is_unique and right_ids.is_unique):
        return None
    position = right_ids.get_indexer(left_ids)
    shared = position >= 0
    x = left[metric].to_numpy(dtype=float)[shared]
    y = right[metric].to_numpy(dtype=float)[position[shared]]
    valid = ~(np.isnan(x) | np.isnan(y))
    return x[valid], y[valid]


def compare_systems(
    suite: str,
    scores: Mapping[str, pd.DataFrame],
    metrics: Sequence[str],
    settings: ComparisonSettings | None = None,
) -> SuiteComparisonResult:
    """Compare every pair of ``scores`` (system -> its per-case scores frame) on ``metrics``.

    A metric no system has a valid score for is left out; a pair with no shared valid case is
    an error naming it, never a silent "no difference"."""
    settings = settings or ComparisonSettings()
    systems = sorted(scores)
    if len(systems) < 2:
        raise ValueError(f"suite {suite!r}: comparing needs two systems, got {systems or 'none'}")
    compared: dict[str, MetricComparison] = {}
    # Each test is seeded on its own, so a pair whose paired scores equal an earlier pair's
    # (several systems giving the same answers, as baselines often do) has the same figures:
    # computed once per suite. The permutation test and bootstrap are most of a comparison.
    seen: dict[tuple[bytes, bytes], PairedComparison] = {}
    for metric in metrics:
        present = [s for s in systems if metric in scores[s].columns]
        means = {
            s: float(scores[s][metric].mean()) for s in present if scores[s][metric].notna().any()
        }
        if len(means) < 2:
            continue
        pairs = []
        for a, b in itertools.combinations(list(means), 2):
            x, y = _paired(scores, a, b, metric)
            if x.size == 0:
                raise ValueError(
                    f"suite {suite!r}, {metric}: {a} and {b} share no case with a valid score"
                )
            key = (x.tobytes(), y.tobytes())
            if key in seen:  # the same figures (systems that answer alike): the same test
                pairs.append(replace(seen[key], metric=metric, a=a, b=b))
                continue
            seen[key] = compare_paired(
                x,
                y,
                metric=metric,
                a=a,
                b=b,
                level=settings.level,
                resamples=settings.resamples,
                seed=settings.seed,
                alpha=settings.alpha,
            )  # fmt: skip
            pairs.append(seen[key])
        compared[metric] = MetricComparison(metric, means, correct(pairs, settings.correction))
    return SuiteComparisonResult(suite, systems, compared, settings)
