"""Scoring stored predictions against a suite.

Scoring is separate from predicting so that a new metric or threshold re-scores what a system
already said without calling the system again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from flowstone.errors import FlowStoneError
from flowstone.evaluation.config import SuiteSettings
from flowstone.evaluation.metrics import Reference, compute, get_metric
from flowstone.evaluation.repeats import (
    agreement_column,
    judge_spread_column,
    repeats_column,
    spread_of,
    verdicts_agree,
)
from flowstone.evaluation.suites import Suite, metadata_json

if TYPE_CHECKING:
    from flowstone.llm.batch_flow import Waiting
    from flowstone.llm.batch_store import BatchJob, BatchStore


class ScoringError(FlowStoneError):
    """Predictions that do not line up with the suite, or a metric that failed."""


def align_outputs(suite: Suite, predictions: pd.DataFrame) -> list[list[str]]:
    """The prediction text for each case of the suite, in suite order, once per repeat of the
    system (repeat 0 first; predictions stored before repeats existed are one repeat)."""
    missing_cols = {"case_id", "output"} - set(predictions.columns)
    if missing_cols:
        raise ScoringError(
            f"predictions for suite '{suite.name}' lack columns {sorted(missing_cols)}"
        )
    if "repeat" in predictions.columns:
        repeat_of = predictions["repeat"].astype(int)
    else:
        repeat_of = pd.Series(0, index=predictions.index)
    found = sorted(set(repeat_of.tolist()))
    if found != list(range(len(found))):
        raise ScoringError(
            f"predictions for suite '{suite.name}' have repeats {found}; expected 0 to "
            f"{len(found) - 1} with none missing: re-materialize the predictions"
        )
    runs = []
    for repeat in found:
        rows = predictions[repeat_of == repeat]
        where = f" in repeat {repeat + 1}" if len(found) > 1 else ""
        doubled = rows["case_id"][rows["case_id"].duplicated()].tolist()
        if doubled:
            raise ScoringError(
                f"predictions for suite '{suite.name}' answer case '{doubled[0]}' twice{where}; "
                "re-materialize the predictions"
            )
        by_id = dict(zip(rows["case_id"], rows["output"], strict=True))
        missing = [case.id for case in suite.cases if case.id not in by_id]
        if missing:
            raise ScoringError(
                f"predictions for suite '{suite.name}' have no output for {len(missing)} "
                f"case(s){where}, first: '{missing[0]}'; re-materialize the predictions"
            )
        outputs = [by_id[case.id] for case in suite.cases]
        bad = [
            case.id
            for case, out in zip(suite.cases, outputs, strict=True)
            if not isinstance(out, str)
        ]
        if bad:
            raise ScoringError(
                f"prediction for case '{bad[0]}'{where} of suite '{suite.name}' is not text"
            )
        runs.append(outputs)
    return runs


def _per_case(values: Sequence[float], repeats: int, cases: int) -> np.ndarray:
    """Scores laid out repeat by repeat (repeat 0's cases first) as a (repeats, cases) grid."""
    return np.asarray(values, dtype=float).reshape(repeats, cases)


def _mean_over_repeats(grid: np.ndarray) -> np.ndarray:
    """Each case's mean over its valid repeats; NaN (invalid, never 0.0) when none is valid."""
    valid = ~np.isnan(grid)
    counts = valid.sum(axis=0)
    sums = np.where(valid, grid, 0.0).sum(axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def score_suite(
    suite: Suite,
    predictions: pd.DataFrame,
    settings: SuiteSettings,
    metrics: Sequence[str] | None = None,
    compute_metric: Callable[..., list[float]] = compute,
    system: str | None = None,
) -> pd.DataFrame:
    """One row per case: id, tags, expected, output, every reference, the gold label and the
    metadata (JSON text) of the case, then one column per metric.

    The label and metadata ride along so that suite-level metrics, the warehouse and the
    viewer read them from the scores without going back to the suite file. ``compute_metric``
    has the signature of `flowstone.evaluation.metrics.compute`; the worker pool passes its
    own so that a shared server with a warm encoder does the scoring.

    A system with repeats answered each case several times: every answer is scored, a case's
    score is its mean over the repeats (the case stays the unit every interval and paired test
    resamples), ``<metric>_repeats`` keeps each repeat's score and ``outputs`` each answer.
    A judge with repeats adds ``<metric>_judge_agreement`` and ``<metric>_judge_spread``.
    ``system`` names the system in the error a judge's provider failure raises.
    """
    runs = align_outputs(suite, predictions)
    repeats, count = len(runs), len(suite.cases)
    outputs = [text for run in runs for text in run]
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
            "output": runs[0],
            "references": [list(case.references) for case in suite.cases],
            "label": [case.label for case in suite.cases],
            "metadata": [metadata_json(case.metadata) for case in suite.cases],
        }
    )
    if repeats > 1:
        table["repeats"] = repeats
        table["outputs"] = [list(answers) for answers in zip(*runs, strict=True)]
    judge_cost = 0.0
    for name in metrics or list(settings.metrics):
        setting = settings.metrics[name]
        metric = get_metric(name)
        try:
            if metric.judge:  # network-bound, needs contexts: always in this process
                contexts = [case.context for case in suite.cases] * repeats
                scores = metric.fn(
                    outputs, references * repeats, contexts=contexts, **setting.options
                )
            else:
                scores = compute_metric(name, outputs, references * repeats, **setting.options)
        except (ValueError, TypeError) as exc:
            raise ScoringError(f"metric '{name}' failed on suite '{suite.name}': {exc}") from exc
        except FlowStoneError as exc:
            from flowstone.evaluation.judge_metric import JudgeProviderError

            if not isinstance(exc, JudgeProviderError):
                raise
            raise ScoringError(
                f"{exc} (suite '{suite.name}', system '{system or 'unknown'}'); nothing was "
                "written: materialize the scores again once the provider answers"
            ) from exc
        grid = _per_case(scores, repeats, count)
        table[name] = _mean_over_repeats(grid) if repeats > 1 else grid[0]
        if repeats > 1:
            table[repeats_column(name)] = [list(column) for column in grid.T.tolist()]
        if metric.judge:
            judge_cost += _judge_columns(table, name, scores, repeats, count, setting.pass_score)
    table.attrs["judge_cost_usd"] = judge_cost
    return table


def _judge_columns(
    table: pd.DataFrame, name: str, scores: object, repeats: int, count: int, pass_score: float
) -> float:
    """The invalid replies of a judge metric, its agreement across judge repeats when it has
    any, and what it cost."""
    from flowstone.evaluation.judge_metric import JudgedScores  # loaded only to judge

    if not isinstance(scores, JudgedScores):
        raise ScoringError(
            f"judge metric '{name}' returned {type(scores).__name__}, not JudgedScores "
            "(the judge's replies and cost are missing)"
        )
    # a case none of whose answers was judged keeps the first unreadable reply
    unjudged = table[name].isna().tolist()
    replies: list[str | None] = [None] * count
    for i in (i for i in range(count) if unjudged[i]):
        answers = (scores.replies[r * count + i] for r in range(repeats))
        replies[i] = next((reply for reply in answers if reply is not None), None)
    table[f"{name}_invalid_reply"] = replies
    repeat_scores = getattr(scores, "repeat_scores", None)
    if repeat_scores and max(len(r) for r in repeat_scores) > 1:
        agreement = [verdicts_agree(judged, pass_score) for judged in repeat_scores]
        spread = [spread_of(judged) for judged in repeat_scores]
        table[agreement_column(name)] = _mean_over_repeats(_per_case(agreement, repeats, count))
        table[judge_spread_column(name)] = _mean_over_repeats(_per_case(spread, repeats, count))
    return float(scores.cost_usd)


# --- judges in mode: batch ---------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeBatches:
    """The judge batches of one partition before it is scored: those it still waits on
    (``waiting``, one per batch judge whose answers are not all final) and the ended ones
    whose answers the scoring reads from the cache now (``ready``)."""

    waiting: tuple[Waiting, ...] = ()
    ready: tuple[BatchJob, ...] = ()

    @property
    def cost_usd(self) -> float:
        """What the ended batches cost at the batch price: the scoring reads their answers as
        free cache hits, and this materialization is the one that paid for them."""
        return sum(job.cost_usd for job in self.ready)

    def consume(self, store: BatchStore | None = None) -> None:
        """Record the ended batches as shown on a materialization (after the scores were
        computed, so a failed scoring leaves them for the next run to show)."""
        if not self.ready:
            return
        from flowstone.llm.batch_store import BatchStore

        store = store or BatchStore()
        for job in self.ready:
            store.set_state(job, "consumed")


def batch_judges(settings: SuiteSettings) -> list[str]:
    """The judge metrics of ``settings`` in ``mode: batch``."""
    return [
        name
        for name, setting in settings.metrics.items()
        if get_metric(name).judge and setting.options.get("mode") == "batch"
    ]


def plan_judge_batches(
    suite: Suite,
    predictions: pd.DataFrame,
    settings: SuiteSettings,
    system: str | None,
    store: BatchStore | None = None,
) -> JudgeBatches:
    """Submit, per batch judge of the suite, the first attempts the response cache lacks as
    one batch for the partition (suite, ``system``); say which batches it waits on or which
    ended ones the scoring will read. Judges in ``mode: online`` are left to
    :func:`score_suite`. The requests are those :func:`score_suite` makes: every answer of
    every system repeat against the case's first reference, judge repeats apart."""
    names = batch_judges(settings)
    if not names:
        return JudgeBatches()
    from flowstone.evaluation.judge_metric import JudgeProviderError, plan_judge_batch
    from flowstone.llm.batch_flow import Waiting

    if not system:
        raise ScoringError(
            f"judge metrics {', '.join(names)} of suite '{suite.name}' are in mode batch, "
            "which needs the partition's system to record its batch"
        )
    runs = align_outputs(suite, predictions)
    outputs = [text for run in runs for text in run]
    references = [case.references[0] for case in suite.cases] * len(runs)
    contexts = [case.context for case in suite.cases] * len(runs)
    waiting: list[Waiting] = []
    ready: list[BatchJob] = []
    for name in names:
        try:
            plan = plan_judge_batch(
                name.removeprefix("llm_"),
                outputs,
                references,
                contexts,
                {"suite": suite.name, "system": system},
                settings.metrics[name].options,
                store,
            )
        except JudgeProviderError as exc:
            raise ScoringError(
                f"{exc} (suite '{suite.name}', system '{system}'); its batch was not "
                "submitted: materialize the scores again once the provider answers"
            ) from exc
        if isinstance(plan, Waiting):
            waiting.append(plan)
        else:
            ready.extend(plan.jobs)
    return JudgeBatches(tuple(waiting), tuple(ready))
