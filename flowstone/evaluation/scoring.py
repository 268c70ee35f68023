"""Scoring stored predictions against a suite.

Scoring is separate from predicting so that a new metric or threshold re-scores what a system
already said without calling the system again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd

from flowstone.errors import FlowStoneError
from flowstone.evaluation.config import SuiteSettings
from flowstone.evaluation.metrics import Reference, compute, get_metric
from flowstone.evaluation.suites import Suite, metadata_json


class ScoringError(FlowStoneError):
    """Predictions that do not line up with the suite, or a metric that failed."""


def align_outputs(suite: Suite, predictions: pd.DataFrame) -> list[str]:
    """The prediction text for each case of the suite, in suite order."""
    missing_cols = {"case_id", "output"} - set(predictions.columns)
    if missing_cols:
        raise ScoringError(
            f"predictions for suite '{suite.name}' lack columns {sorted(missing_cols)}"
        )
    by_id = dict(zip(predictions["case_id"], predictions["output"], strict=True))
    missing = [case.id for case in suite.cases if case.id not in by_id]
    if missing:
        raise ScoringError(
            f"predictions for suite '{suite.name}' have no output for {len(missing)} case(s), "
            f"first: '{missing[0]}'; re-materialize the predictions"
        )
    outputs = [by_id[case.id] for case in suite.cases]
    bad = [
        case.id for case, out in zip(suite.cases, outputs, strict=True) if not isinstance(out, str)
    ]
    if bad:
        raise ScoringError(f"prediction for case '{bad[0]}' of suite '{suite.name}' is not text")
    return outputs


def score_suite(
    suite: Suite,
    predictions: pd.DataFrame,
    settings: SuiteSettings,
    metrics: Sequence[str] | None = None,
    compute_metric: Callable[..., list[float]] = compute,
) -> pd.DataFrame:
    """One row per case: id, tags, expected, output, every reference, the gold label and the
    metadata (JSON text) of the case, then one column per metric.

    The label and metadata ride along so that suite-level metrics, the warehouse and the
    viewer read them from the scores without going back to the suite file. ``compute_metric``
    has the signature of `flowstone.evaluation.metrics.compute`; the worker pool passes its
    own so that a shared server with a warm encoder does the scoring.
    """
    outputs = align_outputs(suite, predictions)
    # one string where a case has one reference (what every metric and worker has always
    # taken), the list where it has several
    references: list[Reference] = [
        case.references[0] if len(case.references) == 1 else list(case.references)
        for case in suite.cases
    ]
    table = pd.DataFrame(
        {
            "case_id": [case.id for case in suite.cases],
            "tags": [",".join(case.tags) for case in suite.cases],
            "expected": [case.expected for case in suite.cases],
            "output": outputs,
            "references": [list(case.references) for case in suite.cases],
            "label": [case.label for case in suite.cases],
            "metadata": [metadata_json(case.metadata) for case in suite.cases],
        }
    )
    judge_cost = 0.0
    for name in metrics or list(settings.metrics):
        setting = settings.metrics[name]
        metric = get_metric(name)
        try:
            if metric.judge:  # network-bound, needs contexts: always in this process
                contexts = [case.context for case in suite.cases]
                scores = metric.fn(outputs, references, contexts=contexts, **setting.options)
            else:
                scores = compute_metric(name, outputs, references, **setting.options)
        except (ValueError, TypeError) as exc:
            raise ScoringError(f"metric '{name}' failed on suite '{suite.name}': {exc}") from exc
        table[name] = scores
        if metric.judge:
            from flowstone.evaluation.judge_metric import JudgedScores  # loaded only to judge

            if not isinstance(scores, JudgedScores):
                raise ScoringError(
                    f"judge metric '{name}' returned {type(scores).__name__}, not JudgedScores "
                    "(the judge's replies and cost are missing)"
                )
            table[f"{name}_invalid_reply"] = scores.replies
            judge_cost += scores.cost_usd
    table.attrs["judge_cost_usd"] = judge_cost
    return table
