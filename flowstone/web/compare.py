"""Systems side by side: the per-suite comparison, the filtered case list and the diff.

Plain functions over the typed records, so what a page shows (which cases fail, where
systems disagree, what changed) is testable without a server and decided once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from flowstone.web.records import CaseInput, PartitionReport, SystemAnswer, TrendPoint

SORTS = {
    "id": "suite order",
    "worst": "lowest score first",
    "spread": "largest spread across systems first",
}


@dataclass(frozen=True)
class SuiteComparison:
    """Every system's report on one suite, with the metrics in the suite's order."""

    suite: str
    reports: dict[str, PartitionReport]  # system -> report, systems sorted

    @property
    def systems(self) -> list[str]:
        return list(self.reports)

    @property
    def metrics(self) -> list[str]:
        seen: dict[str, None] = {}
        for report in self.reports.values():
            seen.update(dict.fromkeys(report.metrics))
        return list(seen)

    @property
    def suite_metrics(self) -> list[str]:
        """The suite-level metrics any system's stored report has, in the suite's order."""
        seen: dict[str, None] = {}
        for report in self.reports.values():
            seen.update(dict.fromkeys(report.suite_metrics))
        return list(seen)

    def best_suite_value(self, metric: str) -> float | None:
        """The highest defined value of a suite metric (every one reads higher-is-better), or
        None when the defined values are all equal (nobody is best)."""
        values = [
            value
            for r in self.reports.values()
            if (value := r.suite_metrics.get(metric)) is not None
        ]
        return max(values) if len(set(values)) > 1 else None

    @property
    def thresholded(self) -> list[str]:
        seen: dict[str, None] = {}
        for report in self.reports.values():
            seen.update(dict.fromkeys(report.thresholds))
        return [m for m in self.metrics if m in seen] + [m for m in seen if m not in self.metrics]

    @property
    def cases(self) -> int:
        return max((r.cases for r in self.reports.values()), default=0)

    def has_ci(self, metric: str) -> bool:
        """True once any system's stored figures carry a confidence interval for ``metric``."""
        return any(
            metric in r.metrics and r.metrics[metric].ci is not None for r in self.reports.values()
        )

    def best_mean(self, metric: str) -> float | None:
        """The highest mean, or None when every system has the same (nobody is best)."""
        means = [
            mean
            for r in self.reports.values()
            if metric in r.metrics and (mean := r.metrics[metric].mean) is not None
        ]
        return max(means) if len(set(means)) > 1 else None

    def pass_score(self, metric: str) -> float | None:
        for report in self.reports.values():
            if metric in report.metrics and report.metrics[metric].pass_score is not None:
                return report.metrics[metric].pass_score
        return None

    def checks_passed(self) -> tuple[int, int]:
        """(systems whose every threshold check passed, systems with at least one check)."""
        checked = [r for r in self.reports.values() if r.thresholds]
        return sum(r.passed for r in checked), len(checked)


@dataclass(frozen=True)
class Cell:
    """One system on one case for the metric on show."""

    system: str
    output: str
    score: float | None
    passed: bool | None


@dataclass(frozen=True)
class CaseRow:
    case: CaseInput
    cells: list[Cell]

    @property
    def scores(self) -> list[float]:
        return [c.score for c in self.cells if c.score is not None]

    @property
    def worst(self) -> float:
        return min(self.scores, default=math.inf)

    @property
    def spread(self) -> float:
        scores = self.scores
        return max(scores) - min(scores) if len(scores) > 1 else 0.0

    @property
    def failing(self) -> list[str]:
        return [c.system for c in self.cells if c.passed is False]

    @property
    def disagree(self) -> bool:
        """Some systems pass the metric on this case and others fail it."""
        verdicts = {c.passed for c in self.cells if c.passed is not None}
        return len(verdicts) > 1


@dataclass(frozen=True)
class CaseFilter:
    """The case list's query parameters, so a filtered list is a link."""

    metric: str
    tag: str = ""
    failing: bool = False
    disagree: bool = False
    system: str = ""
    sort: str = "id"

    def query(self, **changes: str) -> dict[str, str]:
        values = {
            "metric": self.metric,
            "tag": self.tag,
            "failing": "1" if self.failing else "",
            "disagree": "1" if self.disagree else "",
            "system": self.system,
            "sort": "" if self.sort == "id" else self.sort,
        }
        values.update(changes)
        return {k: v for k, v in values.items() if v}

    def describe(self) -> str:
        parts = []
        if self.tag:
            parts.append(f"tagged {self.tag!r}")
        if self.failing:
            who = self.system or "any system"
            parts.append(f"failing {self.metric} for {who}")
        if self.disagree:
            parts.append(f"systems disagree on {self.metric}")
        return ", ".join(parts) or "all cases"


@dataclass
class CaseTable:
    """The suite's cases with every system's answer, for the case list and the case page."""

    suite: str
    cases: list[CaseInput]
    answers: dict[str, dict[str, SystemAnswer]]  # system -> case id -> answer
    pass_scores: dict[str, float | None]
    metrics: list[str]
    _by_id: dict[str, CaseInput] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {c.case_id: c for c in self.cases}

    @property
    def systems(self) -> list[str]:
        return list(self.answers)

    @property
    def tags(self) -> list[str]:
        return sorted({t for c in self.cases for t in c.tags})

    def case(self, case_id: str) -> CaseInput | None:
        return self._by_id.get(case_id)

    def neighbours(self, case_id: str) -> tuple[str | None, str | None]:
        ids = [c.case_id for c in self.cases]
        at = ids.index(case_id)
        return (ids[at - 1] if at > 0 else None, ids[at + 1] if at + 1 < len(ids) else None)

    def answer(self, system: str, case_id: str) -> SystemAnswer | None:
        return self.answers.get(system, {}).get(case_id)

    def passes(self, system: str, case_id: str, metric: str) -> bool | None:
        answer = self.answer(system, case_id)
        return answer.passes(metric, self.pass_scores.get(metric)) if answer else None

    def row(self, case: CaseInput, metric: str) -> CaseRow:
        cells = []
        for system in self.systems:
            answer = self.answer(system, case.case_id)
            cells.append(
                Cell(
                    system=system,
                    output=answer.output if answer else "",
                    score=answer.scores.get(metric) if answer else None,
                    passed=self.passes(system, case.case_id, metric),
                )
            )
        return CaseRow(case, cells)

    def failing_systems(self, case_id: str) -> list[str]:
        """Systems below the pass score of at least one metric on this case."""
        return [
            s
            for s in self.systems
            if any(self.passes(s, case_id, m) is False for m in self.metrics)
        ]

    def filtered(self, spec: CaseFilter) -> list[CaseRow]:
        rows = [self.row(c, spec.metric) for c in self.cases]
        if spec.tag:
            rows = [r for r in rows if spec.tag in r.case.tags]
        if spec.failing:
            rows = [r for r in rows if (spec.system in r.failing if spec.system else r.failing)]
        if spec.disagree:
            rows = [r for r in rows if r.disagree]
        if spec.sort == "worst":
            rows.sort(key=lambda r: r.worst)
        elif spec.sort == "spread":
            rows.sort(key=lambda r: -r.spread)
        return rows


def case_table(
    suite: str,
    cases_by_system: Mapping[str, Sequence[CaseInput]],
    answers: Mapping[str, dict[str, SystemAnswer]],
    comparison: SuiteComparison,
) -> CaseTable:
    """The union of the systems' stored cases (a suite edited since some partitions ran has
    cases only some systems answered), in the order of the first system's suite."""
    seen: dict[str, CaseInput] = {}
    for system in sorted(cases_by_system):
        for case in cases_by_system[system]:
            seen.setdefault(case.case_id, case)
    metrics = comparison.metrics
    return CaseTable(
        suite=suite,
        cases=list(seen.values()),
        answers={s: dict(answers[s]) for s in sorted(answers)},
        pass_scores={m: comparison.pass_score(m) for m in metrics},
        metrics=metrics,
    )


@dataclass(frozen=True)
class MetricChange:
    """One metric of a partition against its previous materialization."""

    metric: str
    current: float | None  # None: the metric failed in the latest run
    previous: float | None
    regression: bool
    previous_at: str | None = None  # when the previous run was materialized, if known

    @property
    def delta(self) -> float | None:
        if self.previous is None or self.current is None:
            return None
        return self.current - self.previous


def metric_changes(
    report: PartitionReport, trend: Mapping[tuple[str, str], list[TrendPoint]]
) -> list[MetricChange]:
    """The report's own comparison (``previous_means``, computed by the report asset from the
    previous materialization), dated from the warehouse history where it has that run."""
    changes = []
    for name, figures in report.metrics.items():
        previous = report.previous_means.get(name)
        points = trend.get((report.system, name), [])
        previous_at = None
        if len(points) >= 2:
            earlier = points[-2]
            previous_at = (
                f"{earlier.materialized_at:%Y-%m-%d %H:%M:%S} UTC (run {earlier.run_id[:8]})"
            )
            if previous is None:
                previous = earlier.mean
        changes.append(
            MetricChange(
                metric=name,
                current=figures.mean,
                previous=previous,
                regression=name in report.regressions,
                previous_at=previous_at,
            )
        )
    return changes
