"""Runs in this process: what `flowstone demo`, `flowstone models bake` and the benchmarks use.

A Dagster run launched from the UI goes through the daemon and a run worker; these helpers run
the same jobs with ``execute_in_process`` against the same instance, so everything they
materialize is in the UI afterwards. Each takes the ``Definitions`` it runs (the composition
root's ``defs``, or a test's own), so the wiring never imports the composition root.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from assets.baking import BAKE_JOB, MODELS
from assets.comparison import COMPARISON_JOB, COMPARISON_KEY
from assets.dbt import DBT_JOB
from assets.evaluation import EVALUATION_JOB, PREFIX, REPORT_KEY
from assets.pools import ensure_pool_limits
from assets.warehouse import WAREHOUSE_JOB

# Step-by-step Dagster logs belong in the UI; a terminal shows progress and warnings.
QUIET_RUN_CONFIG: Mapping[str, Any] = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
# The tags a single-run backfill carries (documented for launching one by hand); Dagster
# exports no constant for them.
PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"

OnDone = Callable[[str, bool, float], None]
RunResults = dict[str, dg.ExecuteInProcessResult]


def execute_partitions(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    keys: Sequence[str],
    single_run: bool = False,
    on_done: OnDone | None = None,
    run_config: Mapping[str, Any] | None = None,
) -> RunResults:
    """Run ``job`` over ``keys``: a run each, or one run over the key range (what a
    single-run backfill does; the keys must be contiguous in the partitions order).
    Returns the run result per partition key; ``on_done(label, ok, seconds)`` after each run."""
    import time

    runs: list[tuple[str, Sequence[str], dict[str, Any]]] = (
        [
            (
                f"{len(keys)} partitions",
                keys,
                {"tags": {PARTITION_RANGE_START_TAG: keys[0], PARTITION_RANGE_END_TAG: keys[-1]}},
            )
        ]
        if single_run
        else [(key, [key], {"partition_key": key}) for key in keys]
    )
    outcomes: RunResults = {}
    for label, covered, target in runs:
        start = time.perf_counter()
        result = job.execute_in_process(
            instance=instance,
            run_config=dict(QUIET_RUN_CONFIG if run_config is None else run_config),
            raise_on_error=False,
            **target,
        )
        outcomes.update(dict.fromkeys(covered, result))
        if on_done:
            on_done(label, result.success, time.perf_counter() - start)
    return outcomes


def observe_sources(defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
    """Observe the evaluation's observable sources (suite files, systems, settings), what
    "Observe all" does in the UI, so staleness and data versions are current before a run.
    One observation job each: their partitions differ (suite vs system)."""
    graph = defs.resolve_asset_graph()
    for key in sorted(graph.observable_asset_keys, key=lambda k: k.to_user_string()):
        if key.path[0] != PREFIX:
            continue
        name = f"observe_{key.to_python_identifier()}"
        job = dg.Definitions(
            assets=[defs.resolve_assets_def(key)],
            jobs=[dg.define_asset_job(name, selection=[key])],
        ).resolve_job_def(name)
        job.execute_in_process(instance=instance, run_config=dict(QUIET_RUN_CONFIG))


def materialize_partitions(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    partition_keys: Sequence[str] | None = None,
    single_run: bool = False,
    on_done: OnDone | None = None,
) -> RunResults:
    """Observe the evaluation sources, then run the evaluation job over ``partition_keys``
    (default: every suite x system partition). Returns the run result per partition."""
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    job = defs.resolve_job_def(EVALUATION_JOB.name)
    observe_sources(defs, instance)
    if job.partitions_def is None:
        raise ValueError(f"{EVALUATION_JOB.name} has no partitions")
    keys = list(partition_keys or job.partitions_def.get_partition_keys())
    return execute_partitions(job, instance, keys, single_run, on_done)


def latest_metadata(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str
) -> Mapping[str, dg.MetadataValue]:
    """The metadata of the latest materialization of ``key``'s ``partition`` ({} if none)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    materialization = records[0].asset_materialization if records else None
    return materialization.metadata if materialization else {}


def latest_reports(instance: dg.DagsterInstance, keys: Sequence[str]) -> dict[str, dict]:
    """The latest report metadata per evaluated partition, as plain values."""
    out = {}
    for key in keys:
        metadata = latest_metadata(instance, REPORT_KEY, key)
        if metadata:
            out[key] = {name: value.value for name, value in metadata.items()}
    return out


def compare_suites(
    defs: dg.Definitions, instance: dg.DagsterInstance, suites: Sequence[str]
) -> dict[str, dict[str, Any] | None]:
    """Materialize ``evaluation/comparison`` for each suite (a run each) and return what it
    stored, or None for a suite whose run failed (e.g. fewer than two systems evaluated)."""
    job = defs.resolve_job_def(COMPARISON_JOB)
    results = execute_partitions(job, instance, list(suites))
    out: dict[str, dict[str, Any] | None] = {}
    for suite in suites:
        if not results[suite].success:
            out[suite] = None
            continue
        stored = defs.load_asset_value(COMPARISON_KEY, partition_key=suite, instance=instance)
        if not isinstance(stored, dict):
            raise TypeError(f"evaluation/comparison {suite} stored {type(stored).__name__}")
        out[suite] = stored
    return out


def bake_models(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    names: Sequence[str],
    on_done: OnDone | None = None,
) -> RunResults:
    """Add ``names`` as ``models`` partitions (what the drop sensor does) and run the bake job
    for each. Returns the run result per model."""
    ensure_pool_limits(instance)
    partitions_name = MODELS.name
    if partitions_name is None:
        raise ValueError("the bake job's `models` DynamicPartitionsDefinition has no name")
    missing = [n for n in names if not instance.has_dynamic_partition(partitions_name, n)]
    if missing:
        instance.add_dynamic_partitions(partitions_name, missing)
    job = defs.resolve_job_def(BAKE_JOB.name)
    return execute_partitions(job, instance, list(names), on_done=on_done)


def materialize_analytics(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    partition_keys: Sequence[str],
    run_config: Mapping[str, Any] | None = None,
) -> RunResults:
    """Warehouse partitions (one run over ``partition_keys``), then the dbt build for today.

    One warehouse run when the keys are a contiguous range of the partitions definition (a
    single-run backfill), else one run per key so a failed evaluation partition in between is
    not loaded. Returns one result per job name (the warehouse's first failed run, else its
    last); dbt is skipped if the warehouse failed.
    """
    ensure_pool_limits(instance)
    job = defs.resolve_job_def(WAREHOUSE_JOB)
    if job.partitions_def is None:
        raise ValueError(f"{WAREHOUSE_JOB} has no partitions")
    all_keys = job.partitions_def.get_partition_keys()
    wanted = set(partition_keys)
    ordered = [k for k in all_keys if k in wanted]
    if not ordered:
        raise ValueError(f"none of {list(partition_keys)} is a partition of {WAREHOUSE_JOB}")
    first = all_keys.index(ordered[0])
    contiguous = all_keys[first : first + len(ordered)] == ordered
    runs = execute_partitions(
        job,
        instance,
        ordered,
        single_run=contiguous and len(ordered) > 1,
        run_config=run_config or {},
    )
    failed = [result for result in runs.values() if not result.success]
    results = {WAREHOUSE_JOB: failed[0] if failed else runs[ordered[-1]]}
    if results[WAREHOUSE_JOB].success:
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        results[DBT_JOB] = defs.resolve_job_def(DBT_JOB).execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config=dict(run_config or {}),
            partition_key=today,
        )
    return results
