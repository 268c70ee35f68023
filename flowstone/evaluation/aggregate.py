"""From per-case scores to the numbers a report shows: summary statistics, pass rates,
per-tag breakdowns and threshold verdicts."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from flowstone.evaluation.config import SuiteSettings
from flowstone.evaluation.metrics import METRICS


@dataclass(frozen=True)
class MetricSummary:
    metric: str
    mean: float
    median: float
    p95: float
    min: float
    pass_rate: float
    pass_score: float
    cases: int
    invalid: int = 0


@dataclass(frozen=True)
class ThresholdVerdict:
    metric: str
    min_mean: float
    mean: float
    passed: bool
    blocking: bool


def summarize_metric(
    name: str, scores: pd.Series, pass_score: float, may_be_invalid: bool = False
) -> MetricSummary:
    """Statistics over the valid scores. Only an LLM judge may leave invalid (NaN) scores;
    they are counted, never averaged in as 0.0."""
    values = scores.to_numpy(dtype=float)
    missing = np.isnan(values)
    if values.size == 0 or (missing.any() and not may_be_invalid):
        raise ValueError(f"metric '{name}' has missing scores; refusing to summarise them as 0.0")
    if missing.all():
        raise ValueError(
            f"all {values.size} judgements of '{name}' are invalid; see the "
            f"'{name}_invalid_reply' column of the scores"
        )
    invalid = int(missing.sum())
    values = values[~missing]
    return MetricSummary(
        metric=name,
        mean=float(values.mean()),
        median=float(np.median(values)),
        p95=float(np.percentile(values, 95)),
        min=float(values.min()),
        pass_rate=float((values >= pass_score).mean()),
        pass_score=pass_score,
        cases=int(values.size),
        invalid=invalid,
    )


def by_tag(scores: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Mean of each metric per tag (a case with several tags counts under each)."""
    exploded = scores.assign(tag=scores["tags"].str.split(",")).explode("tag")
    exploded = exploded[exploded["tag"].fillna("") != ""]
    if exploded.empty:
        return pd.DataFrame(columns=["tag", "cases", *metrics])
    grouped = exploded.groupby("tag")
    table = grouped[metrics].mean()
    table.insert(0, "cases", grouped.size())
    return table.reset_index()


@dataclass(frozen=True)
class Report:
    suite: str
    system: str
    cases: int
    metrics: dict[str, MetricSummary]
    tags: pd.DataFrame
    thresholds: dict[str, ThresholdVerdict]

    @property
    def means(self) -> dict[str, float]:
        return {name: s.mean for name, s in self.metrics.items()}

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.thresholds.values())

    def summary_frame(self) -> pd.DataFrame:
        """One row a metric: the figures a person compares first."""
        return pd.DataFrame(
            [
                {
                    "metric": s.metric,
                    "mean": s.mean,
                    "median": s.median,
                    "p95": s.p95,
                    "min": s.min,
                    "pass_rate": s.pass_rate,
                    "invalid": s.invalid,
                }
                for s in self.metrics.values()
            ]
        )

    def to_dict(self) -> dict:
        return {
            "suite": self.suite,
            "system": self.system,
            "cases": self.cases,
            "metrics": {k: asdict(v) for k, v in self.metrics.items()},
            "tags": self.tags.to_dict(orient="records"),
            "thresholds": {k: asdict(v) for k, v in self.thresholds.items()},
        }


def build_report(scores: pd.DataFrame, settings: SuiteSettings, system: str) -> Report:
    metrics = [m for m in settings.metrics if m in scores.columns]
    summaries = {
        m: summarize_metric(m, scores[m], settings.metrics[m].pass_score, METRICS[m].judge)
        for m in metrics
    }
    verdicts = {}
    for name, threshold in settings.thresholds.items():
        mean = summaries[name].mean
        verdicts[name] = ThresholdVerdict(
            metric=name,
            min_mean=threshold.min_mean,
            mean=mean,
            passed=bool(mean >= threshold.min_mean or math.isclose(mean, threshold.min_mean)),
            blocking=threshold.blocking,
        )
    return Report(
        suite=settings.suite,
        system=system,
        cases=len(scores),
        metrics=summaries,
        tags=by_tag(scores, metrics),
        thresholds=verdicts,
    )
