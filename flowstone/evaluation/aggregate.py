"""From per-case scores to the numbers a report shows: summary statistics with the confidence
interval of each mean, pass rates, per-tag breakdowns and threshold verdicts."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from flowstone.evaluation.calibration import Calibration, calibrate
from flowstone.evaluation.config import StatisticsSettings, SuiteSettings, Threshold
from flowstone.evaluation.metrics import METRICS
from flowstone.evaluation.repeats import (
    JudgeAgreement,
    RepeatSummary,
    judge_agreement,
    repeat_summary,
)
from flowstone.evaluation.statistics import Interval, bootstrap_ci
from flowstone.evaluation.suite_metrics import SUITE_METRICS, compute_suite_metrics


def _stored(value: object) -> object:
    """NaN, a figure a failed metric does not have, stored as None (JSON null, SQL NULL)."""
    return None if isinstance(value, float) and math.isnan(value) else value


@dataclass(frozen=True)
class MetricSummary:
    """One metric's figures over the valid scores of a partition.

    ``cases`` counts valid scores, ``invalid`` unreadable judgements. ``ci_low``/``ci_high``
    bound the mean at ``ci_level``. A judge metric none of whose judgements could be read has
    no figures (NaN here, None once stored) and a ``failure`` saying so: that metric fails on
    its own while the rest of the report stands.
    """

    metric: str
    mean: float
    ci_low: float
    ci_high: float
    ci_level: float
    median: float
    p95: float
    min: float
    pass_rate: float
    pass_score: float
    cases: int
    invalid: int = 0
    failure: str | None = None

    @property
    def failed(self) -> bool:
        return self.failure is not None

    @property
    def interval(self) -> Interval | None:
        if self.failed:
            return None
        return Interval(self.ci_low, self.ci_high, self.ci_level)

    def to_dict(self) -> dict:
        return {k: _stored(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class ThresholdVerdict:
    metric: str
    min_mean: float
    mean: float
    passed: bool
    blocking: bool
    # why it failed without a figure to compare: a failed judge metric, an undefined suite metric
    reason: str | None = None

    def to_dict(self) -> dict:
        return {k: _stored(v) for k, v in asdict(self).items()}


def summarize_metric(
    name: str,
    scores: pd.Series,
    pass_score: float,
    may_be_invalid: bool = False,
    statistics: StatisticsSettings | None = None,
) -> MetricSummary:
    """Statistics over the valid scores. Only an LLM judge may leave invalid (NaN) scores;
    they are counted, never averaged in as 0.0, and the interval resamples the valid ones.
    A judge with no valid score at all gives a failed summary instead of an error, so one
    unreadable judge does not take the other metrics of the report down with it."""
    values = scores.to_numpy(dtype=float)
    missing = np.isnan(values)
    if values.size == 0 or (missing.any() and not may_be_invalid):
        raise ValueError(f"metric '{name}' has missing scores; refusing to summarise them as 0.0")
    statistics = statistics or StatisticsSettings()
    if missing.all():
        return failed_summary(name, values.size, pass_score, statistics.confidence_level)
    invalid = int(missing.sum())
    values = values[~missing]
    ci = bootstrap_ci(
        values,
        level=statistics.confidence_level,
        resamples=statistics.resamples,
        seed=statistics.seed,
        method=statistics.method,
        what=f"metric '{name}'",
    )
    return MetricSummary(
        metric=name,
        mean=float(values.mean()),
        ci_low=ci.low,
        ci_high=ci.high,
        ci_level=ci.level,
        median=float(np.median(values)),
        p95=float(np.percentile(values, 95)),
        min=float(values.min()),
        pass_rate=float((values >= pass_score).mean()),
        pass_score=pass_score,
        cases=int(values.size),
        invalid=invalid,
    )


def failed_summary(name: str, judgements: int, pass_score: float, level: float) -> MetricSummary:
    nan = math.nan
    return MetricSummary(
        metric=name,
        mean=nan,
        ci_low=nan,
        ci_high=nan,
        ci_level=level,
        median=nan,
        p95=nan,
        min=nan,
        pass_rate=nan,
        pass_score=pass_score,
        cases=0,
        invalid=judgements,
        failure=f"0 valid of {judgements} judgements: no reply could be read as a score; "
        f"the raw replies are in the '{name}_invalid_reply' column of the scores",
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
    suite_metrics: dict[str, float] = field(default_factory=dict)  # figures over the suite
    # judge metric -> its agreement with the gold labels (a labelled suite's judges only)
    calibration: dict[str, Calibration] = field(default_factory=dict)
    # metric -> spread and flipped cases over the system's repeats (a system with repeats only)
    repeats: dict[str, RepeatSummary] = field(default_factory=dict)
    # judge metric -> its agreement with itself over its repeats (a judge with repeats only)
    judge_agreement: dict[str, JudgeAgreement] = field(default_factory=dict)

    @property
    def repeat_count(self) -> int:
        """How many times the system answered each case (1 without repeats)."""
        return max((r.repeats for r in self.repeats.values()), default=1)

    @property
    def uncalibrated(self) -> dict[str, Calibration]:
        return {name: c for name, c in self.calibration.items() if not c.calibrated}

    @property
    def means(self) -> dict[str, float]:
        """The means there are: a failed metric has none (and no regression to compare)."""
        return {name: s.mean for name, s in self.metrics.items() if not s.failed}

    @property
    def failed(self) -> dict[str, MetricSummary]:
        return {name: s for name, s in self.metrics.items() if s.failed}

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.thresholds.values())

    def summary_frame(self) -> pd.DataFrame:
        """One row a metric: the figures a person compares first. A failed metric has no
        figures (NaN) and says "failed: 0 valid of N" where its interval would be."""
        rows = []
        for s in self.metrics.values():
            interval = s.interval
            rows.append(
                {
                    "metric": s.metric,
                    "mean": s.mean,
                    f"{s.ci_level:.0%} CI": interval.bounds()
                    if interval
                    else f"failed: 0 valid of {s.invalid}",
                    "median": s.median,
                    "p95": s.p95,
                    "min": s.min,
                    "pass_rate": s.pass_rate,
                    "invalid": s.invalid,
                }
            )
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        return {
            "suite": self.suite,
            "system": self.system,
            "cases": self.cases,
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "tags": self.tags.to_dict(orient="records"),
            "thresholds": {k: v.to_dict() for k, v in self.thresholds.items()},
            "suite_metrics": {k: _stored(v) for k, v in self.suite_metrics.items()},
            "calibration": {k: v.to_dict() for k, v in self.calibration.items()},
            "repeats": {k: v.to_dict() for k, v in self.repeats.items()},
            "judge_agreement": {k: v.to_dict() for k, v in self.judge_agreement.items()},
        }


def build_report(scores: pd.DataFrame, settings: SuiteSettings, system: str) -> Report:
    metrics = [m for m in settings.metrics if m in scores.columns]
    summaries = {
        m: summarize_metric(
            m, scores[m], settings.metrics[m].pass_score, METRICS[m].judge, settings.statistics
        )
        for m in metrics
    }
    suite_values = compute_suite_metrics(settings, scores)
    verdicts = {}
    for name, threshold in settings.thresholds.items():
        if name in summaries:
            summary = summaries[name]
            value, reason = summary.mean, summary.failure
        else:  # a suite metric: its value over the suite, on its own scale
            value = suite_values[name]
            reason = None
            if math.isnan(value):
                reason = SUITE_METRICS[settings.suite_metrics[name].name].undefined_reason()
        verdicts[name] = threshold_verdict(threshold, value, reason)
    return Report(
        suite=settings.suite,
        system=system,
        cases=len(scores),
        metrics=summaries,
        tags=by_tag(scores, metrics),
        thresholds=verdicts,
        suite_metrics=suite_values,
        calibration=judge_calibration(scores, settings, metrics),
        repeats={
            m: repeated
            for m in metrics
            if (repeated := repeat_summary(scores, m, settings.metrics[m].pass_score))
        },
        judge_agreement={
            m: agreement
            for m in metrics
            if METRICS[m].judge and (agreement := judge_agreement(scores, m))
        },
    )


def judge_calibration(
    scores: pd.DataFrame, settings: SuiteSettings, metrics: list[str]
) -> dict[str, Calibration]:
    """Each judge metric's agreement with the labels, when every case carries one."""
    if "label" not in scores.columns:  # scores stored before labels existed
        return {}
    labels = list(scores["label"])
    found = {}
    for name in metrics:
        if not METRICS[name].judge:
            continue
        setting = settings.metrics[name]
        values = scores[name].to_numpy(dtype=float).tolist()
        result = calibrate(name, values, labels, setting.pass_score, setting.calibration_setting)
        if result is not None:
            found[name] = result
    return found


def threshold_verdict(threshold: Threshold, value: float, reason: str | None) -> ThresholdVerdict:
    """A figure the report does not have (a failed judge, an undefined correlation) fails its
    threshold with the reason: a check that cannot compare must never read as passed."""
    if reason is not None or math.isnan(value):
        return ThresholdVerdict(
            metric=threshold.metric,
            min_mean=threshold.min_mean,
            mean=math.nan,
            passed=False,
            blocking=threshold.blocking,
            reason=reason or f"{threshold.metric} has no value to compare",
        )
    return ThresholdVerdict(
        metric=threshold.metric,
        min_mean=threshold.min_mean,
        mean=value,
        passed=bool(value >= threshold.min_mean or math.isclose(value, threshold.min_mean)),
        blocking=threshold.blocking,
    )
