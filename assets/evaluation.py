"""Evaluation assets: suite -> predictions -> scores -> report, partitioned by suite x system.

Three observable sources carry what Dagster cannot see (suite files, system definitions, metric
settings) as per-partition data versions, so after an edit the UI marks exactly the partitions
that need a re-run. Each body runs `flowstone.evaluation.pipeline` per partition; with
`BackfillPolicy.single_run()` a backfill is one run over many partitions (the bodies loop, and
metadata still lands on each partition).
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dagster as dg

from assets.metadata import to_metadata
from assets.partition_checks import latest_target, partitioned_check_spec
from flowstone.evaluation import suites as suite_io
from flowstone.evaluation.catalog import Catalog
from flowstone.evaluation.check_names import NO_REGRESSION, threshold_check_name
from flowstone.storage.versions import VERSIONS_KEPT
from flowstone.systems.batch_mode import PendingBatch
from flowstone.web.links import ViewerLinks, public_base_url
from resources.worker_pool import PythonWorkerPoolResource

if TYPE_CHECKING:  # the pipeline brings pandas and matplotlib; loaded on first use only
    from assets.partition_checks import AssetCheckEvaluationTargetMaterializationData
    from flowstone.evaluation.aggregate import ThresholdVerdict
    from flowstone.evaluation.pipeline import ReportResult

GROUP = "evaluation"
PREFIX = "evaluation"
OWNERS = ["team:ml-platform"]
SCORE_VERSIONS_KEPT = 10  # earlier per-case scores kept per partition for the viewer's diff


@dataclass(frozen=True)
class StepSettings:
    """How the evaluation steps run, which a deployment changes without touching their bodies.

    The one-machine default: one run for a whole backfill, no step retries, no pool. Scale-out
    (``assets/scaleout.py``) asks for retries, the ``llm`` pool on the step that calls
    providers, and backfills cut into several runs that workers can share.
    """

    backfill_policy: dg.BackfillPolicy = dg.BackfillPolicy.single_run()
    retry_policy: dg.RetryPolicy | None = None
    llm_pool: str | None = None


KIND_TAGS = {"dagster/kind/python": ""}
MEAN_PREFIX = "mean/"
REPORT_KEY = dg.AssetKey([PREFIX, "report"])
EVALUATION_JOB = dg.define_asset_job(
    "evaluation_job",
    selection=dg.AssetSelection.groups(GROUP),
    description="Suite -> predictions -> scores -> report for suite x system partitions.",
)


def _pipeline():
    """The pipeline module, imported on first use: it brings pandas, numpy and matplotlib,
    which the code location does not need to load."""
    from flowstone.evaluation import pipeline

    return pipeline


def evaluation_partitions(catalog: Catalog) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition(
        {
            "suite": dg.StaticPartitionsDefinition(catalog.suite_names),
            "system": dg.StaticPartitionsDefinition(catalog.systems.names),
        }
    )


class PartitionBatch:
    """The partitions one run materializes: one, or many under a single-run backfill.

    Inputs arrive as a value (one partition) or a dict keyed by partition (many); outputs go
    back the same way, which is what Dagster's UPath-based I/O managers expect.
    """

    def __init__(self, context: dg.AssetExecutionContext):
        self.context = context
        self.keys = list(context.partition_keys)
        self._def = context.assets_def.partitions_def

    def dims(self, key: str) -> tuple[str, str]:
        by_dim = self._def.get_partition_key_from_str(key).keys_by_dimension
        return by_dim["suite"], by_dim["system"]

    def input(self, value, key: str):
        return value if len(self.keys) == 1 else value[key]

    def output(self, values: dict):
        return values[self.keys[0]] if len(self.keys) == 1 else values

    def record(self, key: str, metadata: dict) -> None:
        self.context.add_asset_metadata(to_metadata(metadata), partition_key=key)

    def run(self, step, **inputs):
        """Call ``step(suite, system, **inputs_for_that_partition)`` for each partition and
        record its metadata on that partition."""
        values = {}
        for key in self.keys:
            suite_name, system_name = self.dims(key)
            result = step(
                suite_name, system_name, **{n: self.input(v, key) for n, v in inputs.items()}
            )
            self.record(key, result.metadata)
            values[key] = result.value
        return self.output(values)


@dataclass(frozen=True)
class PreviousReport:
    """What the report compares itself with: the previous materialization's means and, from
    its stored value, its per-case scores (None when only its metadata could be read)."""

    means: dict[str, float]
    cases: dict[str, dict[str, float | None]] | None = None


def previous_report(context: dg.AssetExecutionContext, partition_key: str) -> PreviousReport:
    """The last materialization of the same partition, at full precision from its stored
    report (the metadata shows means rounded to 3 decimals, which would make an unchanged mean
    look changed); from the metadata only when that object cannot be read."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[partition_key]),
        limit=1,
    ).records
    if not records:
        return PreviousReport({})
    try:
        stored = context.load_asset_value(context.asset_key, partition_key=partition_key)
        means = {  # a failed metric (no valid score) stored no mean and compares with nothing
            name: float(figures["mean"])
            for name, figures in stored["metrics"].items()
            if figures.get("mean") is not None
        }
        return PreviousReport(means, stored.get("case_scores"))  # None: stored before kept
    except Exception as exc:  # moved or unreadable: the rounded figures still compare
        context.log.warning(
            f"{context.asset_key.to_user_string()} {partition_key}: the previous report could "
            f"not be read ({exc}); comparing with the means in its metadata (3 decimals)"
        )
    metadata = records[0].asset_materialization.metadata
    return PreviousReport(
        {
            k[len(MEAN_PREFIX) :]: float(v.value)
            for k, v in metadata.items()
            if k.startswith(MEAN_PREFIX)
        }
    )


def _announce_batches(
    context: dg.AssetExecutionContext, results: dict, waiting: list[str]
) -> Iterator[dg.AssetObservation]:
    """A partition that waits on a provider batch: observed (the asset's partition page shows
    the batch, its size and when it went out), not materialized, so scores and report are
    skipped and the run ends as a success. A run of several partitions materializes none of
    them while one waits (Dagster stores a partition range's output as one): the others'
    answers are in the response cache, and their run costs nothing once the batches end."""
    for key in waiting:
        metadata = results[key].metadata
        context.log.info(
            f"{key}: {metadata['llm_batch']} provider batch {metadata['llm_batch_ids']} "
            f"({metadata['llm_batch_requests']} requests); llm_batch_sensor launches the run "
            "that materializes this partition once it ended"
        )
        yield dg.AssetObservation(
            asset_key=context.asset_key, partition=key, metadata=to_metadata(metadata)
        )
    others = [k for k in results if k not in waiting]
    if others:
        context.log.warning(
            f"not materialized while {len(waiting)} partition(s) wait on provider batches: "
            f"{', '.join(others)}; materialize them in a run of their own (their LLM answers "
            "are cached)"
        )


def build_check_specs(
    catalog: Catalog, partitions: dg.PartitionsDefinition
) -> list[dg.AssetCheckSpec]:
    """One partitioned check per thresholded metric, plus the regression check.

    Partitioned (a Dagster 1.13 preview) so that each suite x system partition has its own
    result and the asset's check status counts failing partitions instead of showing the
    latest one. A metric whose suite sets no threshold gets no result for that partition."""
    settings = catalog.settings
    every = [settings.default, *settings.suites.values()]
    specs = [
        partitioned_check_spec(
            threshold_check_name(metric),
            REPORT_KEY,
            partitions,
            blocking=any(metric in s.thresholds and s.thresholds[metric].blocking for s in every),
            description=(
                f"{metric} over the whole suite is at least the threshold in evaluation.yaml"
                if any(metric in s.suite_metrics for s in every)
                else f"The suite mean of {metric} is at least the threshold in evaluation.yaml"
            )
            + " (suites without one are not checked).",
        )
        for metric in settings.thresholded_metrics
    ]
    specs.append(
        partitioned_check_spec(
            NO_REGRESSION,
            REPORT_KEY,
            partitions,
            description="No metric mean fell by more than the regression margin since the "
            "previous materialization of the same partition.",
        )
    )
    return specs


@dataclass(frozen=True)
class CheckOutcome:
    """One check's verdict on one partition, before it becomes a Dagster event."""

    name: str
    passed: bool
    blocking: bool
    metadata: dict[str, Any]
    description: str

    @property
    def severity(self) -> dg.AssetCheckSeverity:
        return dg.AssetCheckSeverity.ERROR if self.blocking else dg.AssetCheckSeverity.WARN

    def result(self) -> dg.AssetCheckResult:
        """For a one-partition run: Dagster fills in the partition and the materialization."""
        return dg.AssetCheckResult(
            check_name=self.name,
            passed=self.passed,
            metadata=self.metadata,
            severity=self.severity,
            description=self.description,
        )

    def evaluation(
        self, partition_key: str, target: "AssetCheckEvaluationTargetMaterializationData | None"
    ) -> dg.AssetCheckEvaluation:
        """For one partition of a multi-partition run, which Dagster cannot attribute itself."""
        return dg.AssetCheckEvaluation(
            asset_key=REPORT_KEY,
            check_name=self.name,
            passed=self.passed,
            metadata=self.metadata,
            severity=self.severity,
            blocking=self.blocking,
            description=self.description,
            partition=partition_key,
            target_materialization_data=target,
        )


def threshold_outcome(outcome: "ReportResult", metric: str) -> CheckOutcome:
    """A metric's threshold check: its mean and interval (or a suite metric's value) against
    the floor, or a failure (not an error) naming why there is no figure to compare."""
    verdict = outcome.report.thresholds[metric]
    summary = outcome.report.metrics.get(metric)
    if summary is None:  # a suite metric: one value over the suite, no interval
        return suite_threshold_outcome(metric, verdict)
    interval = summary.interval
    if interval is None:
        return CheckOutcome(
            threshold_check_name(metric),
            False,
            verdict.blocking,
            {"valid": 0, "invalid": summary.invalid, "min_mean": verdict.min_mean},
            f"{metric} failed, no mean to compare with threshold {verdict.min_mean:.3f}: "
            f"{verdict.reason}",
        )
    return CheckOutcome(
        threshold_check_name(metric),
        verdict.passed,
        verdict.blocking,
        {"mean": round(verdict.mean, 3), "ci": interval.describe(), "min_mean": verdict.min_mean},
        f"{metric} mean {verdict.mean:.3f} ({interval.level:.0%} CI {interval.bounds()}) "
        f"{'>=' if verdict.passed else '<'} threshold {verdict.min_mean:.3f}",
    )


def suite_threshold_outcome(metric: str, verdict: "ThresholdVerdict") -> CheckOutcome:
    """A suite metric's check; an undefined value (NaN, e.g. a correlation over constant
    scores) fails with the reason rather than comparing as a number."""
    if verdict.reason is not None:
        return CheckOutcome(
            threshold_check_name(metric),
            False,
            verdict.blocking,
            {"value": "undefined", "min_mean": verdict.min_mean},
            f"{verdict.reason}; no value to compare with threshold {verdict.min_mean:.3f}",
        )
    return CheckOutcome(
        threshold_check_name(metric),
        verdict.passed,
        verdict.blocking,
        {"value": round(verdict.mean, 3), "min_mean": verdict.min_mean},
        f"{metric} over the suite {verdict.mean:.3f} "
        f"{'>=' if verdict.passed else '<'} threshold {verdict.min_mean:.3f}",
    )


def partition_check_outcomes(outcome: "ReportResult") -> list[CheckOutcome]:
    """The checks of one partition: one per threshold its suite sets, and the regression
    check once there is a previous materialization to compare with."""
    results = [threshold_outcome(outcome, metric) for metric in outcome.report.thresholds]
    if outcome.previous_means:
        results.append(regression_outcome(outcome))
    return results


def regression_outcome(outcome: "ReportResult") -> CheckOutcome:
    """No metric fell by more than the margin (and, with ``require_significance``, by more
    than the paired test on the same cases allows): per metric, the drop and the test."""
    settings = outcome.regression_settings
    metadata: dict[str, Any] = {"compared_metrics": len(outcome.compared)}
    for metric, r in outcome.compared.items():
        line = f"{r.previous:.3f} -> {r.current:.3f} ({-r.relative_drop:+.1%})"
        if r.paired is not None:
            p = r.paired
            line += f", paired {p.difference:+.3f} [{p.ci.bounds()}] p={p.p_value:.3g} ({p.test})"
        metadata[f"{'drop' if r in outcome.regressions else 'change'}/{metric}"] = line
    rule = f"by more than {settings.margin:.0%}"
    if settings.require_significance:
        rule += f" with a paired test p < {settings.alpha}"
    return CheckOutcome(
        NO_REGRESSION,
        not outcome.regressions,
        False,
        metadata,
        f"{len(outcome.regressions)} metric(s) fell {rule}: "
        + ", ".join(r.metric for r in outcome.regressions)
        if outcome.regressions
        else f"no metric fell {rule}",
    )


def build_evaluation_assets(catalog: Catalog, steps: StepSettings | None = None) -> list:
    steps = steps or StepSettings()
    partitions = evaluation_partitions(catalog)
    by_suite = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="suite")
    by_system = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="system")
    settings = catalog.settings

    @dg.observable_source_asset(
        key=[PREFIX, "suite_file"],
        partitions_def=dg.StaticPartitionsDefinition(catalog.suite_names),
        group_name=GROUP,
        tags=KIND_TAGS,
        description="The JSONL suite files; the data version is each file's sha256.",
    )
    def suite_file() -> dg.DataVersionsByPartition:
        return dg.DataVersionsByPartition(
            {name: suite_io.file_sha256(path)[:16] for name, path in catalog.suites.items()}
        )

    @dg.observable_source_asset(
        key=[PREFIX, "system_spec"],
        partitions_def=dg.StaticPartitionsDefinition(catalog.systems.names),
        group_name=GROUP,
        tags=KIND_TAGS,
        description="Each system's definition (code, parameters, prompt, model) as a fingerprint.",
    )
    def system_spec() -> dg.DataVersionsByPartition:
        return dg.DataVersionsByPartition({s.name: s.fingerprint() for s in catalog.systems})

    @dg.observable_source_asset(
        key=[PREFIX, "scoring_config"],
        partitions_def=dg.StaticPartitionsDefinition(catalog.suite_names),
        group_name=GROUP,
        tags=KIND_TAGS,
        description="Metric settings and thresholds per suite, from evaluation.yaml.",
    )
    def scoring_config() -> dg.DataVersionsByPartition:
        return dg.DataVersionsByPartition(
            {name: settings.for_suite(name).fingerprint() for name in catalog.suite_names}
        )

    common: dict[str, Any] = dict(
        key_prefix=[PREFIX],
        partitions_def=partitions,
        group_name=GROUP,
        owners=OWNERS,
        kinds={"python"},
        backfill_policy=steps.backfill_policy,
        retry_policy=steps.retry_policy,
        code_version="1",
    )

    @dg.asset(
        **common,
        deps=[dg.AssetDep(suite_file, partition_mapping=by_suite)],
        description="The suite, loaded and validated, as a table of cases.",
    )
    def suite(context: dg.AssetExecutionContext):
        return PartitionBatch(context).run(
            lambda suite_name, _system: _pipeline().load_suite(catalog, suite_name)
        )

    @dg.asset(
        **common,
        pool=steps.llm_pool,
        deps=[dg.AssetDep(system_spec, partition_mapping=by_system)],
        description="The system's output for every case of the suite.",
        # a system in `mode: batch` submits a provider batch and materializes nothing until
        # llm_batch_sensor launches the run that reads the answers
        output_required=False,
    )
    def predictions(context: dg.AssetExecutionContext, suite):
        batch = PartitionBatch(context)
        results = {}
        for key in batch.keys:
            suite_name, system_name = batch.dims(key)
            results[key] = _pipeline().predict(
                catalog, suite_name, system_name, batch.input(suite, key)
            )
        waiting = [k for k, r in results.items() if isinstance(r.value, PendingBatch)]
        if waiting:
            yield from _announce_batches(context, results, waiting)
            return
        for key, result in results.items():
            batch.record(key, result.metadata)
        yield dg.Output(batch.output({k: r.value for k, r in results.items()}))

    @dg.asset(
        **common,
        deps=[dg.AssetDep(scoring_config, partition_mapping=by_suite)],
        description="Per-case scores, one column a metric, recomputed from stored predictions.",
        # the viewer's per-case diff reads the partition's earlier materializations
        metadata={VERSIONS_KEPT: SCORE_VERSIONS_KEPT},
        # a judge in `mode: batch` submits a provider batch and materializes nothing until
        # llm_batch_sensor launches the run that scores from its answers
        output_required=False,
    )
    def scores(
        context: dg.AssetExecutionContext, worker_pool: PythonWorkerPoolResource, suite, predictions
    ):
        context.log.info(f"scoring with the worker pool in '{worker_pool.mode}' mode")
        batch = PartitionBatch(context)
        results = {}
        for key in batch.keys:
            suite_name, system_name = batch.dims(key)
            results[key] = _pipeline().score(
                catalog,
                suite_name,
                batch.input(suite, key),
                batch.input(predictions, key),
                worker_pool.compute_metric,
                system_name,
            )
        waiting = [k for k, r in results.items() if isinstance(r.value, PendingBatch)]
        if waiting:
            yield from _announce_batches(context, results, waiting)
            return
        for key, result in results.items():
            batch.record(key, result.metadata)
        yield dg.Output(batch.output({k: r.value for k, r in results.items()}))

    # A multi-asset only for can_subset: it makes each check's output optional, so a partition
    # whose suite sets no threshold for a metric gets no result rather than a false "passed".
    @dg.multi_asset(
        name=f"{PREFIX}__report",  # the step key an @asset with key_prefix had
        outs={
            "report": dg.AssetOut(
                key=REPORT_KEY,
                group_name=GROUP,
                owners=OWNERS,
                kinds={"python"},
                code_version="1",
                description="Summary statistics, pass rates, tag breakdown, threshold checks "
                "and regressions.",
            )
        },
        ins={"scores": dg.AssetIn(key=[PREFIX, "scores"])},
        partitions_def=partitions,
        backfill_policy=steps.backfill_policy,
        retry_policy=steps.retry_policy,
        check_specs=build_check_specs(catalog, partitions),
        can_subset=True,
    )
    def report(context: dg.AssetExecutionContext, scores):
        batch = PartitionBatch(context)
        viewer = ViewerLinks(public_base_url())
        outcomes: dict[str, ReportResult] = {}
        for key in batch.keys:
            suite_name, system_name = batch.dims(key)
            previous = previous_report(context, key)
            outcome = _pipeline().report(
                catalog,
                suite_name,
                system_name,
                batch.input(scores, key),
                previous.means,
                previous_cases=previous.cases,
            )
            batch.record(
                key,
                {
                    **outcome.metadata(),
                    # links open in the served viewer (`flowstone serve`); a browser refuses
                    # file:// links from the UI, so the HTML file's path stays as a path
                    "viewer": dg.MetadataValue.url(viewer.partition(suite_name, system_name)),
                    "compare systems": dg.MetadataValue.url(viewer.suite(suite_name)),
                    "changes since last run": dg.MetadataValue.url(
                        viewer.diff(suite_name, system_name)
                    ),
                    "report": dg.MetadataValue.url(viewer.html_report(suite_name, system_name)),
                },
            )
            outcomes[key] = outcome
        yield dg.Output(
            batch.output({k: o.to_value() for k, o in outcomes.items()}), output_name="report"
        )
        for key, outcome in outcomes.items():
            checks = partition_check_outcomes(outcome)
            if len(batch.keys) == 1:
                yield from (check.result() for check in checks)
            else:
                target = latest_target(context.instance, REPORT_KEY, key)
                yield from (check.evaluation(key, target) for check in checks)

    return [suite_file, system_spec, scoring_config, suite, predictions, scores, report]
