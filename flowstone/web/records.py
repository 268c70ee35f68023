"""What the viewer shows, as typed records read from what the assets stored.

Why records and not the stored dicts: the stored report is JSON written by one version of the
pipeline and read by the viewer of another, so every field is read once, here, with what a
missing field means (no confidence interval yet, no threshold for this metric) decided in one
place instead of in every template.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


def number_or_none(value: Any) -> float | None:
    """A finite float, or None for a missing, null or NaN figure (never a silent 0.0)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _interval(figures: Mapping[str, Any]) -> tuple[float, float] | None:
    """A stored interval: ``ci_low``/``ci_high`` in a report's metric figures, ``ci`` as a
    pair in a comparison's pairs; None for a report stored before intervals existed."""
    ci = figures.get("ci")
    low, high = (ci if isinstance(ci, list | tuple) and len(ci) == 2 else
                 (figures.get("ci_low"), figures.get("ci_high")))  # fmt: skip
    low, high = number_or_none(low), number_or_none(high)
    return (low, high) if low is not None and high is not None else None


@dataclass(frozen=True)
class MetricFigures:
    """One metric of one partition's report."""

    metric: str
    mean: float | None  # None: the metric failed (no valid score), see ``failure``
    median: float | None
    p95: float | None
    min: float | None
    pass_rate: float | None
    pass_score: float | None
    cases: int
    invalid: int
    ci: tuple[float, float] | None = None
    failure: str | None = None

    @classmethod
    def from_stored(cls, name: str, figures: Mapping[str, Any]) -> MetricFigures:
        mean = number_or_none(figures.get("mean"))
        failure = figures.get("failure")
        if mean is None and not failure:
            raise ValueError(f"metric {name!r} of the stored report has no mean and no failure")
        return cls(
            metric=name,
            mean=mean,
            median=number_or_none(figures.get("median")),
            p95=number_or_none(figures.get("p95")),
            min=number_or_none(figures.get("min")),
            pass_rate=number_or_none(figures.get("pass_rate")),
            pass_score=number_or_none(figures.get("pass_score")),
            cases=int(figures.get("cases") or 0),
            invalid=int(figures.get("invalid") or 0),
            ci=_interval(figures),
            failure=str(failure) if mean is None else None,
        )


@dataclass(frozen=True)
class JudgeCalibration:
    """A judge metric's agreement with the suite's gold labels, as the report stored it."""

    metric: str
    method: str  # "spearman" or "cohen_kappa"
    agreement: float | None  # None: undefined, see ``reason``
    cases: int
    min_agreement: float | None
    calibrated: bool
    reason: str | None = None

    @property
    def method_name(self) -> str:
        return {"cohen_kappa": "Cohen's kappa", "spearman": "Spearman"}.get(
            self.method, self.method
        )

    @classmethod
    def from_stored(cls, name: str, value: Mapping[str, Any]) -> JudgeCalibration:
        agreement = number_or_none(value.get("agreement"))
        return cls(
            metric=name,
            method=str(value.get("method", "")),
            agreement=agreement,
            cases=int(value.get("cases") or 0),
            min_agreement=number_or_none(value.get("min_agreement")),
            # an undefined agreement is never calibrated, whatever was stored
            calibrated=bool(value.get("calibrated")) and agreement is not None,
            reason=str(value["reason"]) if value.get("reason") else None,
        )


@dataclass(frozen=True)
class RepeatFigures:
    """One metric over a system's repeats: the mean per-case spread and the flipped cases."""

    metric: str
    repeats: int
    spread: float | None
    flipped: tuple[str, ...]

    @classmethod
    def from_stored(cls, name: str, value: Mapping[str, Any]) -> RepeatFigures:
        return cls(
            metric=name,
            repeats=int(value.get("repeats") or 1),
            spread=number_or_none(value.get("spread")),
            flipped=tuple(str(c) for c in value.get("flipped") or ()),
        )


@dataclass(frozen=True)
class JudgeSelfAgreement:
    """A judge metric over its own repeats: the share of answers judged alike every time."""

    metric: str
    agreement: float | None
    spread: float | None
    cases: int

    @classmethod
    def from_stored(cls, name: str, value: Mapping[str, Any]) -> JudgeSelfAgreement:
        return cls(
            metric=name,
            agreement=number_or_none(value.get("agreement")),
            spread=number_or_none(value.get("spread")),
            cases=int(value.get("cases") or 0),
        )


@dataclass(frozen=True)
class ThresholdResult:
    """A threshold check as the report computed it (a metric without threshold has none)."""

    metric: str
    min_mean: float
    mean: float | None  # None: the metric failed (or a suite metric is undefined): failed
    passed: bool
    blocking: bool
    reason: str | None = None  # why there was no figure to compare


@dataclass(frozen=True)
class PartitionReport:
    """The stored ``evaluation/report`` value of one suite x system partition."""

    suite: str
    system: str
    cases: int
    metrics: dict[str, MetricFigures]
    thresholds: dict[str, ThresholdResult]
    previous_means: dict[str, float]
    regressions: list[str]
    tags: list[dict[str, Any]] = field(default_factory=list)
    suite_metrics: dict[str, float | None] = field(default_factory=dict)  # None: undefined
    # judge metric -> agreement with the gold labels (reports before calibration have none)
    calibration: dict[str, JudgeCalibration] = field(default_factory=dict)
    # with repeats (reports before repeats, or without them, have none)
    repeats: dict[str, RepeatFigures] = field(default_factory=dict)
    judge_agreement: dict[str, JudgeSelfAgreement] = field(default_factory=dict)

    @property
    def repeat_count(self) -> int:
        return max((r.repeats for r in self.repeats.values()), default=1)

    @property
    def uncalibrated(self) -> list[str]:
        return [name for name, c in self.calibration.items() if not c.calibrated]

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.thresholds.values())

    @property
    def failed_checks(self) -> list[str]:
        return [name for name, t in self.thresholds.items() if not t.passed]

    @classmethod
    def from_stored(cls, value: Mapping[str, Any]) -> PartitionReport:
        metrics = {
            name: MetricFigures.from_stored(name, figures)
            for name, figures in (value.get("metrics") or {}).items()
        }
        thresholds = {}
        for name, verdict in (value.get("thresholds") or {}).items():
            min_mean, mean = (
                number_or_none(verdict.get("min_mean")),
                number_or_none(verdict.get("mean")),
            )
            if min_mean is None:
                continue  # an unset threshold is no check, never a "passed" one
            thresholds[name] = ThresholdResult(
                metric=name,
                min_mean=min_mean,
                mean=mean,
                passed=bool(verdict.get("passed")) and mean is not None,
                blocking=bool(verdict.get("blocking")),
                reason=str(verdict["reason"]) if verdict.get("reason") else None,
            )
        previous = {
            name: number
            for name, raw in (value.get("previous_means") or {}).items()
            if (number := number_or_none(raw)) is not None
        }
        return cls(
            suite=str(value["suite"]),
            system=str(value["system"]),
            cases=int(value.get("cases") or 0),
            metrics=metrics,
            thresholds=thresholds,
            previous_means=previous,
            regressions=[str(r) for r in value.get("regressions") or []],
            tags=list(value.get("tags") or []),
            suite_metrics={
                str(name): number_or_none(raw)
                for name, raw in (value.get("suite_metrics") or {}).items()
            },
            calibration={
                str(name): JudgeCalibration.from_stored(str(name), raw)
                for name, raw in (value.get("calibration") or {}).items()
                if isinstance(raw, Mapping)
            },
            repeats={
                str(name): RepeatFigures.from_stored(str(name), raw)
                for name, raw in (value.get("repeats") or {}).items()
                if isinstance(raw, Mapping)
            },
            judge_agreement={
                str(name): JudgeSelfAgreement.from_stored(str(name), raw)
                for name, raw in (value.get("judge_agreement") or {}).items()
                if isinstance(raw, Mapping)
            },
        )


@dataclass(frozen=True)
class CaseInput:
    """One case of a suite as the ``evaluation/suite`` asset stored it."""

    case_id: str
    input: str
    expected: str
    context: str | None
    tags: tuple[str, ...]
    # every acceptable answer, ``expected`` first (a suite stored before references: just it)
    references: tuple[str, ...] = ()

    @property
    def other_references(self) -> tuple[str, ...]:
        return self.references[1:]


@dataclass(frozen=True)
class SystemAnswer:
    """One system's output on one case with its per-metric scores (None: invalid judgement)."""

    system: str
    output: str
    scores: dict[str, float | None]
    # every repeat's answer when the system answered the case several times (else empty)
    outputs: tuple[str, ...] = ()

    def passes(self, metric: str, pass_score: float | None) -> bool | None:
        score = self.scores.get(metric)
        if score is None or pass_score is None:
            return None
        return score >= pass_score or math.isclose(score, pass_score)


@dataclass(frozen=True)
class TrendPoint:
    """A metric mean of one materialization, from the warehouse's report rows."""

    materialized_at: datetime
    run_id: str
    mean: float
    pass_rate: float | None


@dataclass(frozen=True)
class BakeQualityRow:
    """A row of ``baking.warehouse_bake_quality``."""

    version: str
    variant: str
    task: str
    metric: str
    value: float | None
    threshold: float | None
    passed: bool
    fidelity: float | None
    materialized_at: datetime | None
    run_id: str


@dataclass(frozen=True)
class BakeProfileRow:
    """A row of ``baking.warehouse_bake_profile``."""

    version: str
    variant: str
    batch_size: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    throughput_per_s: float | None
    size_bytes: int
    peak_memory_bytes: int
    materialized_at: datetime | None
    run_id: str


@dataclass(frozen=True)
class PairRow:
    """System ``b`` against ``a`` on one metric, as ``evaluation/comparison`` stored it."""

    a: str
    b: str
    difference: float
    ci: tuple[float, float] | None
    p_adjusted: float | None
    test: str
    cases: int
    verdict: str


@dataclass(frozen=True)
class MetricPairs:
    metric: str
    leaders: tuple[str, ...]
    pairs: tuple[PairRow, ...]

    @classmethod
    def from_stored(cls, value: Mapping[str, Any]) -> MetricPairs:
        pairs = []
        for p in value.get("pairs", []):
            difference = number_or_none(p.get("difference"))
            if difference is None:
                continue  # a pair stored without a difference has nothing to show
            pairs.append(
                PairRow(
                    a=str(p.get("a", "")),
                    b=str(p.get("b", "")),
                    difference=difference,
                    ci=_interval(p),
                    p_adjusted=number_or_none(p.get("p_adjusted")),
                    test=str(p.get("test", "")),
                    cases=int(p.get("cases") or 0),
                    verdict=str(p.get("verdict", "")),
                )
            )
        leaders = tuple(str(s) for s in value.get("leaders", []))
        return cls(str(value.get("metric", "")), leaders, tuple(pairs))


def comparison_from_stored(value: Mapping[str, Any]) -> dict[str, MetricPairs]:
    """Metric -> its pairs, from a stored ``evaluation/comparison`` partition."""
    metrics = value.get("metrics", {})
    return {str(name): MetricPairs.from_stored(m) for name, m in metrics.items()}
