"""Evaluation assets: suite -> predictions -> scores -> report, partitioned by suite x system.

Three observable sources carry what Dagster cannot see (suite files, system definitions, metric
settings) as per-partition data versions, so after an edit the UI marks exactly the partitions
that need a re-run. Each body runs `flowstone.evaluation.pipeline` per partition; with
`BackfillPolicy.single_run()` a backfill is one run over many partitions (the bodies loop, and
metadata still lands on each partition).
"""

from dataclasses import dataclass
from typing import Any

import dagster as dg

from assets.metadata import to_metadata
from flowstone.evaluation import suites as suite_io
from flowstone.evaluation.catalog import Catalog
from resources.worker_pool import PythonWorkerPoolResource

GROUP = "evaluation"
PREFIX = "evaluation"
OWNERS = ["team:ml-platform"]


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


def previous_means(context: dg.AssetExecutionContext, partition_key: str) -> dict[str, float]:
    """Metric means recorded by the last materialization of the same partition."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[partition_key]),
        limit=1,
    ).records
    if not records:
        return {}
    metadata = records[0].asset_materialization.metadata
    return {
        k[len(MEAN_PREFIX) :]: float(v.value)
        for k, v in metadata.items()
        if k.startswith(MEAN_PREFIX)
    }


def threshold_check_name(metric: str) -> str:
    return f"{metric}_above_threshold"


def build_check_specs(catalog: Catalog) -> list[dg.AssetCheckSpec]:
    settings = catalog.settings
    every = [settings.default, *settings.suites.values()]
    specs = [
        dg.AssetCheckSpec(
            name=threshold_check_name(metric),
            asset=REPORT_KEY,
            blocking=any(metric in s.thresholds and s.thresholds[metric].blocking for s in every),
            description=f"The suite mean of {metric} is at least the threshold in evaluation.yaml.",
        )
        for metric in settings.thresholded_metrics
    ]
    specs.append(
        dg.AssetCheckSpec(
            name="no_regression",
            asset=REPORT_KEY,
            description="No metric mean fell by more than the regression margin since the previous run.",
        )
    )
    return specs


def check_results(catalog: Catalog, outcomes: dict):
    """``outcomes``: partition key -> `flowstone.evaluation.pipeline.ReportResult`."""
    """One result a check: per partition in a one-partition run, combined over a batch."""
    for metric in catalog.settings.thresholded_metrics:
        verdicts = {
            k: r.report.thresholds[metric]
            for k, r in outcomes.items()
            if metric in r.report.thresholds
        }
        if not verdicts:
            yield dg.AssetCheckResult(
                check_name=threshold_check_name(metric),
                passed=True,
                metadata={"note": f"no threshold on {metric} for these suites"},
            )
            continue
        failed = {k: v for k, v in verdicts.items() if not v.passed}
        blocking = any(v.blocking for v in failed.values())
        yield dg.AssetCheckResult(
            check_name=threshold_check_name(metric),
            passed=not failed,
            severity=dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN,
            metadata={
                **{f"mean/{k}": v.mean for k, v in verdicts.items()},
                "min_mean": min(v.min_mean for v in verdicts.values()),
                "failed_partitions": ", ".join(failed) or "none",
            },
        )
    regressed = {k: r.regressions for k, r in outcomes.items() if r.regressions}
    yield dg.AssetCheckResult(
        check_name="no_regression",
        passed=not regressed,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            f"drop/{k}/{r.metric}": f"{r.previous:.3f} -> {r.current:.3f} (-{r.relative_drop:.1%})"
            for k, regs in regressed.items()
            for r in regs
        },
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
    )
    def predictions(context: dg.AssetExecutionContext, suite):
        return PartitionBatch(context).run(
            lambda suite_name, system_name, suite: _pipeline().predict(
                catalog, suite_name, system_name, suite
            ),
            suite=suite,
        )

    @dg.asset(
        **common,
        deps=[dg.AssetDep(scoring_config, partition_mapping=by_suite)],
        description="Per-case scores, one column a metric, recomputed from stored predictions.",
    )
    def scores(
        context: dg.AssetExecutionContext, worker_pool: PythonWorkerPoolResource, suite, predictions
    ):
        context.log.info(f"scoring with the worker pool in '{worker_pool.mode}' mode")
        return PartitionBatch(context).run(
            lambda suite_name, _system, suite, predictions: _pipeline().score(
                catalog, suite_name, suite, predictions, worker_pool.compute_metric
            ),
            suite=suite,
            predictions=predictions,
        )

    @dg.asset(
        **common,
        check_specs=build_check_specs(catalog),
        description="Summary statistics, pass rates, tag breakdown, threshold checks and regressions.",
    )
    def report(context: dg.AssetExecutionContext, scores):
        batch = PartitionBatch(context)
        outcomes = {}
        for key in batch.keys:
            suite_name, system_name = batch.dims(key)
            outcome = _pipeline().report(
                catalog,
                suite_name,
                system_name,
                batch.input(scores, key),
                previous_means(context, key),
            )
            batch.record(
                key,
                {**outcome.metadata(), "report": dg.MetadataValue.url(outcome.html_path.as_uri())},
            )
            outcomes[key] = outcome
        yield dg.Output(batch.output({k: o.to_value() for k, o in outcomes.items()}))
        yield from check_results(catalog, outcomes)

    return [suite_file, system_spec, scoring_config, suite, predictions, scores, report]
