"""Evaluation results reshaped into the warehouse's two tables.

Why long format: every suite scores with its own metrics, so one column per metric would give
each suite a different table schema. One row per (case, metric) and per (report, metric)
keeps a single schema that dbt models read across suites. A suite metric (spearman, chrF) is a
report row too, ``kind = 'suite'``, so the leaderboard ranks it like a mean.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import pandas as pd

SCORE_COLUMNS = [
    "suite", "system", "case_id", "tags", "label", "metadata", "metric", "score", "valid",
    "materialized_at", "run_id",
]  # fmt: skip
REPORT_COLUMNS = [
    "suite", "system", "metric", "kind", "mean", "ci_low", "ci_high", "ci_level", "median", "p95", "min",
    "pass_rate", "pass_score", "invalid", "cases", "passed_cases", "threshold",
    "threshold_passed", "regression", "previous_mean", "materialized_at", "run_id",
]  # fmt: skip
# Figures a report may not have: a failed metric (no valid score) has none of them, a report
# stored before intervals existed has no interval. They stay NULL, never 0.0.
_OPTIONAL = ("mean", "ci_low", "ci_high", "ci_level", "median", "p95", "min", "pass_rate")
# A report row's kind: the mean of a per-case metric (in [0, 1], with its interval), or a suite
# metric's one value over the partition (on its own scale: a correlation in [-1, 1], chrF
# 0-100), which dbt's [0, 1] range tests must leave alone.
MEAN, SUITE = "mean", "suite"


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def long_scores(
    scores: pd.DataFrame,
    suite: str,
    system: str,
    metrics: Iterable[str],
    materialized_at: datetime,
    run_id: str,
) -> pd.DataFrame:
    """One row per case and metric. An invalid judgement (NaN) stays a NULL score with
    ``valid = false``: it is counted, never stored as 0.0 (and never as NaN, which DuckDB
    would sort above 1.0)."""
    metrics = list(metrics)
    missing = [m for m in metrics if m not in scores.columns]
    if missing:
        raise ValueError(
            f"scores of {suite}|{system} have no column for metric(s) {missing}; "
            "re-materialize evaluation/scores for this partition"
        )
    if scores["case_id"].duplicated().any():
        dupes = sorted(scores.loc[scores["case_id"].duplicated(), "case_id"].astype(str).unique())
        raise ValueError(f"scores of {suite}|{system} repeat case ids {dupes[:5]}")
    tags = scores["tags"].fillna("") if "tags" in scores.columns else ""
    base = pd.DataFrame(
        {
            "case_id": scores["case_id"].astype(str),
            "tags": tags,
            # the gold label as text (a number or a class), the case's metadata as JSON text
            "label": _texts(scores, "label"),
            "metadata": _texts(scores, "metadata"),
        }
    )
    frames = []
    for metric in metrics:
        values = pd.to_numeric(scores[metric], errors="raise").astype(float)
        frames.append(base.assign(metric=metric, score=values.where(values.notna(), None)))
    long = pd.concat(frames, ignore_index=True) if frames else base.iloc[0:0]
    long["score"] = long["score"].astype("float64")
    long["valid"] = long["score"].notna()
    long.insert(0, "system", system)
    long.insert(0, "suite", suite)
    long["materialized_at"] = pd.Timestamp(materialized_at).tz_localize(None)
    long["run_id"] = run_id
    long = long[SCORE_COLUMNS].astype(
        {"tags": "object", "metric": "object", "label": "object", "metadata": "object"}
    )
    for column in ("label", "metadata"):  # NULL in the warehouse, never the text "nan"
        long[column] = long[column].astype(object).where(long[column].notna(), None)
    return long


def _texts(scores: pd.DataFrame, column: str) -> list[str | None]:
    """A column as text, None where a case has no value (or scores stored before it existed)."""
    if column not in scores.columns:
        return [None] * len(scores)
    return [None if v is None or v != v else str(v) for v in scores[column].tolist()]


def report_rows(
    report: Mapping,
    previous_means: Mapping[str, float],
    regressed: Iterable[str],
    materialized_at: datetime,
    run_id: str,
) -> pd.DataFrame:
    """One row per metric of a stored report (``ReportResult.to_value()``), with its threshold verdict
    and whether it regressed against the previous materialization. A metric that failed (0
    valid of N judgements) is a row with NULL figures, ``cases`` 0 and its threshold failed.
    Each suite metric is a row of kind ``suite``: its value in ``mean`` (NULL when undefined),
    no interval, pass rate or pass score, never a regression (the comparison is on means)."""
    regressed = set(regressed)
    thresholds = report.get("thresholds", {})
    rows = []
    for name, m in report["metrics"].items():
        verdict = thresholds.get(name)
        previous = previous_means.get(name)
        figures = {key: _number(m.get(key)) for key in _OPTIONAL}
        passed_cases = 0 if math.isnan(figures["pass_rate"]) else figures["pass_rate"] * m["cases"]
        rows.append(
            {
                "suite": report["suite"],
                "system": report["system"],
                "metric": name,
                "kind": MEAN,
                **figures,
                "pass_score": float(m["pass_score"]),
                "invalid": int(m["invalid"]),
                "cases": int(m["cases"]),
                "passed_cases": int(round(passed_cases)),
                **_verdict(verdict),
                "regression": name in regressed,
                "previous_mean": float(previous) if previous is not None else math.nan,
            }
        )
    for name, value in (report.get("suite_metrics") or {}).items():
        rows.append(
            {
                "suite": report["suite"],
                "system": report["system"],
                "metric": name,
                "kind": SUITE,
                **{key: math.nan for key in _OPTIONAL},
                "mean": _number(value),  # None (undefined) stays NULL, never 0.0
                "pass_score": math.nan,
                "invalid": 0,
                "cases": int(report.get("cases") or 0),
                "passed_cases": None,
                **_verdict(thresholds.get(name)),
                "regression": False,
                "previous_mean": math.nan,
            }
        )
    frame = pd.DataFrame(rows, columns=REPORT_COLUMNS[:-2])
    frame["materialized_at"] = pd.Timestamp(materialized_at).tz_localize(None)
    frame["run_id"] = run_id
    return frame.astype(
        {
            **{c: "float64" for c in ("threshold", "previous_mean", "pass_score", *_OPTIONAL)},
            "kind": "object",
            "invalid": "int64",
            "cases": "int64",
            "passed_cases": "Int64",  # NULL for a suite metric: it has no per-case pass
        }
    )


def _verdict(verdict: Mapping | None) -> dict[str, Any]:
    return {
        "threshold": float(verdict["min_mean"]) if verdict else math.nan,
        "threshold_passed": bool(verdict["passed"]) if verdict else True,
    }
