"""The evaluation pipeline as plain functions, one per asset: load, predict, score, report.

The Dagster assets call these per partition, and so does the plain-loop peer in the
benchmark, so what is timed against Dagster is exactly the same work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from flowstone import paths, progress
from flowstone.evaluation import aggregate, report_html, scoring
from flowstone.evaluation import suites as suite_io
from flowstone.evaluation.catalog import Catalog
from flowstone.evaluation.config import RegressionSettings, SuiteSettings
from flowstone.evaluation.regression import Regression, assess
from flowstone.systems import batch_mode
from flowstone.systems.base import NotApplicableError

# Means as a person reads them in the UI's metadata; the stored values keep full precision.
DISPLAY_DECIMALS = 3


def shown(value: float) -> float:
    """``value`` rounded for display in asset metadata (never for what is stored or compared)."""
    return round(float(value), DISPLAY_DECIMALS)


def shown_table(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` for a Markdown table in metadata: the figures a failed metric does not have
    show as "—", never "nan" (Markdown prints NaN as it is)."""
    if not frame.isna().to_numpy().any():
        return frame
    rounded = frame.round(DISPLAY_DECIMALS).astype(object)
    return rounded.where(frame.notna(), report_html.MISSING)


@dataclass(frozen=True)
class StepResult:
    value: object
    metadata: dict


def load_suite(catalog: Catalog, suite_name: str) -> StepResult:
    loaded = suite_io.load_suite(catalog.suites[suite_name], suite_name)
    return StepResult(
        suite_io.suite_to_frame(loaded),
        {
            "cases": len(loaded),
            "tags": ", ".join(loaded.tags),
            "file": str(loaded.path),
            "sha256": loaded.sha256,
        },
    )


def predict(catalog: Catalog, suite_name: str, system_name: str, suite: pd.DataFrame) -> StepResult:
    """The system's predictions for the suite. For a system in ``mode: batch`` the value may be
    a ``PendingBatch`` instead: the suite went to the provider's batch API and nothing is to
    be stored yet (the predictions asset then materializes nothing; a sensor launches the run
    that does once the batch ended)."""
    system = catalog.systems.get(system_name)
    cases = suite_io.suite_from_frame(suite_name, suite).cases
    reason = system.not_applicable(suite_name, [case.label for case in cases])
    if reason:  # scores of such a partition would read as a real (and terrible) result
        raise NotApplicableError(f"evaluation/predictions {suite_name}|{system_name}: {reason}")
    reporter = progress.reporter(f"{suite_name} × {system_name}", len(cases) * system.repeats)
    batch_metadata: dict = {}
    if batch_mode.is_batch_system(system):
        outcome = batch_mode.predict_or_submit(
            system,
            cases,
            {"suite": suite_name, "system": system_name},
            suite=suite_name,
            progress=reporter,
        )
        if isinstance(outcome, batch_mode.PendingBatch):
            return StepResult(outcome, outcome.metadata())
        preds = outcome.predictions
        batch_metadata = outcome.metadata()
    else:
        preds = system.predict(cases, progress=reporter, suite=suite_name)
    table = pd.DataFrame([p.to_dict() for p in preds])
    return StepResult(
        table,
        {
            "cases": len(cases),
            **({"repeats": system.repeats, "answers": len(table)} if system.repeats > 1 else {}),
            "system_kind": system.kind,
            "latency_mean_s": float(table["latency_s"].mean()),
            "input_tokens": int(table["input_tokens"].sum()),
            "output_tokens": int(table["output_tokens"].sum()),
            "cost_usd": float(table["cost_usd"].sum()),
            "cache_hits": int(table["cached"].sum()),
            **system.run_metadata(),
            **batch_metadata,
            "preview": table[["case_id", "output"]].head(5),
        },
    )


def score(
    catalog: Catalog,
    suite_name: str,
    suite: pd.DataFrame,
    predictions: pd.DataFrame,
    compute_metric=scoring.compute,
    system_name: str | None = None,
) -> StepResult:
    """Per-case scores of the partition. With a judge in ``mode: batch`` the value may be a
    ``PendingBatch`` instead: the judge's uncached first attempts went to the provider's batch
    API and nothing is to be stored yet (the scores asset then materializes nothing; the batch
    sensor launches the run that does once the batch ended, and then every first attempt is a
    cache hit, paid at the batch price shown here)."""
    settings = catalog.settings.for_suite(suite_name)
    loaded = suite_io.suite_from_frame(suite_name, suite)
    batches = scoring.plan_judge_batches(loaded, predictions, settings, system_name)
    if batches.waiting:
        pending = batch_mode.PendingBatch(
            tuple(job for plan in batches.waiting for job in plan.jobs),
            next((plan.submitted for plan in batches.waiting if plan.submitted), None),
            tuple(job for plan in batches.waiting for job in plan.cancelled),
        )
        return StepResult(pending, pending.metadata())
    table = scoring.score_suite(
        loaded,
        predictions,
        settings,
        compute_metric=compute_metric,
        system=system_name,
    )
    table.attrs["judge_cost_usd"] = table.attrs.get("judge_cost_usd", 0.0) + batches.cost_usd
    batch_metadata = batch_mode.BatchAnswers([], batches.ready).metadata() if batches.ready else {}
    batches.consume()  # shown on this materialization; the sensor launches no run again
    metrics = list(settings.metrics)
    return StepResult(
        table,
        {
            "cases": len(table),
            # a judge with no readable reply has no mean: the report fails that metric
            **{f"mean/{m}": shown(table[m].mean()) for m in metrics if table[m].notna().any()},
            **{
                f"invalid/{m}": int(table[m].isna().sum()) for m in metrics if table[m].isna().any()
            },
            "judge_cost_usd": float(table.attrs.get("judge_cost_usd", 0.0)),
            **{f"judge_{k}": v for k, v in batch_metadata.items()},
            **models_used(settings),
            "preview": table[["case_id", *metrics]].head(10),
        },
    )


def models_used(settings) -> dict[str, str]:
    """``model/<metric>``: what each metric's non-default model reference pointed to when this
    partition was scored (``baked:minilm -> minilm@<version>``)."""
    from flowstone.embedders import current

    return {f"model/{name}": current(ref).label for name, ref in settings.model_refs().items()}


def case_scores(scores: pd.DataFrame, metrics: list[str]) -> dict[str, dict[str, float | None]]:
    """metric -> case id -> score (None: invalid), what the next run's paired regression test
    pairs its own scores with."""
    ids = scores["case_id"].astype(str).tolist()
    return {
        m: {
            case: (None if value != value else float(value))
            for case, value in zip(ids, scores[m].astype(float).tolist(), strict=True)
        }
        for m in metrics
        if m in scores.columns
    }


@dataclass(frozen=True)
class ReportResult:
    report: aggregate.Report
    regressions: list[Regression]
    html_path: Path
    previous_means: Mapping[str, float]
    compared: Mapping[str, Regression] = field(default_factory=dict)
    cases: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)
    settings: SuiteSettings | None = None

    @property
    def regression_settings(self) -> RegressionSettings:
        return self.settings.regression if self.settings else RegressionSettings()

    def to_value(self) -> dict:
        """The report as stored: its figures plus what it was compared with, so readers (the
        warehouse) need not query the instance or redo the regression math, and its per-case
        scores, which the next materialization's paired regression test reads."""
        return {
            **self.report.to_dict(),
            "previous_means": dict(self.previous_means),
            "regressions": [r.metric for r in self.regressions],
            "regression_tests": {m: r.metadata() for m, r in self.compared.items() if r.paired},
            "case_scores": {m: dict(v) for m, v in self.cases.items()},
        }

    def repeat_metadata(self) -> dict:
        """With repeats: how many, and per metric ``spread/<metric>`` (a number the UI can
        plot) and ``flipped/<metric>`` (how many cases change verdict across repeats); per
        judge with repeats ``judge_agreement/<metric>``."""
        report = self.report
        if not report.repeats and not report.judge_agreement:
            return {}
        return {
            **({"repeats": report.repeat_count} if report.repeats else {}),
            **{
                f"spread/{n}": shown(r.spread)
                for n, r in report.repeats.items()
                if r.spread == r.spread
            },
            **{f"flipped/{n}": len(r.flipped) for n, r in report.repeats.items()},
            **{f"judge_agreement/{n}": a.describe() for n, a in report.judge_agreement.items()},
        }

    def metadata(self) -> dict:
        """Per metric: ``mean/<metric>`` a number (the UI plots it across materializations)
        and ``ci/<metric>`` its interval as text beside it, or ``failed/<metric>`` why there is
        no mean; for a judge on a labelled suite ``calibration/<metric>`` its agreement with
        the labels and ``uncalibrated/<metric>`` why it is not to be trusted, when it is not."""
        figures: dict[str, object] = {}
        for name, summary in self.report.metrics.items():
            interval = summary.interval
            if interval is None:
                figures[f"failed/{name}"] = summary.failure
            else:
                figures[f"mean/{name}"] = shown(summary.mean)
                figures[f"ci/{name}"] = interval.describe(DISPLAY_DECIMALS)
        return {
            "cases": self.report.cases,
            **figures,
            **{f"invalid/{n}": m.invalid for n, m in self.report.metrics.items() if m.invalid},
            **{  # a correlation over constant scores is undefined: said, never a number
                f"suite/{n}": shown(v) if v == v else "undefined"
                for n, v in self.report.suite_metrics.items()
            },
            **{  # a judge's agreement with the gold labels, and whether it can be trusted
                f"calibration/{n}": c.describe() for n, c in self.report.calibration.items()
            },
            **{f"uncalibrated/{n}": c.verdict() for n, c in self.report.uncalibrated.items()},
            **self.repeat_metadata(),
            "passed": self.report.passed,
            "regressions": len(self.regressions),
            "summary": shown_table(self.report.summary_frame()),
            "report_path": str(self.html_path),
        }


def report(
    catalog: Catalog,
    suite_name: str,
    system_name: str,
    scores: pd.DataFrame,
    previous_means: Mapping[str, float],
    reports_dir: Path | None = None,
    previous_cases: Mapping[str, Mapping[str, float | None]] | None = None,
) -> ReportResult:
    """The report of one partition, compared with its previous materialization
    (``previous_means``, and its per-case scores for the paired test when the suite's
    ``regression.require_significance`` is set)."""
    settings = catalog.settings.for_suite(suite_name)
    result = aggregate.build_report(scores, settings, system_name)
    cases = case_scores(scores, list(result.metrics))
    stats = settings.statistics
    regressions, compared = assess(
        result.means,
        previous_means,
        settings.regression,
        cases,
        previous_cases,
        level=stats.confidence_level,
        resamples=stats.resamples,
        seed=stats.seed,
    )
    html_path = (reports_dir or paths.reports_dir()) / suite_name / f"{system_name}.html"
    report_html.write_report(html_path, report_html.render_report(result, scores, regressions))
    return ReportResult(result, regressions, html_path, previous_means, compared, cases, settings)


def run_partition(
    catalog: Catalog, suite_name: str, system_name: str, reports_dir: Path | None = None
):
    """The whole pipeline for one partition without Dagster (the benchmark's plain loop)."""
    suite = load_suite(catalog, suite_name).value
    preds = predict(catalog, suite_name, system_name, suite).value
    scores = score(catalog, suite_name, suite, preds, system_name=system_name).value
    return report(catalog, suite_name, system_name, scores, {}, reports_dir)
