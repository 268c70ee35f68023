"""Runs in this process: what `flowstone demo`, `flowstone models bake` and the benchmarks use.

A Dagster run launched from the UI goes through the daemon and a run worker; these helpers run
the same jobs with ``execute_in_process`` against the same instance, so everything they
materialize is in the UI afterwards. Each takes the ``Definitions`` it runs (the composition
root's ``defs``, or a test's own), so the wiring never imports the composition root.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
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
# (partition key, ok): a partition of a run over several has finished, ok when it materialized
# every asset of the job and passed its blocking checks
OnPartition = Callable[[str, bool], None]
# (step key, partitions it materialized, seconds, ok): a step of a run over several partitions
OnStep = Callable[[str, int, float, bool], None]
RunResults = dict[str, dg.ExecuteInProcessResult]


def partition_ranges(
    partitions_def: dg.PartitionsDefinition,
    keys: Sequence[str],
    instance: dg.DagsterInstance | None = None,
) -> list[list[str]]:
    """``keys`` cut into the fewest key ranges that single-run backfills cover exactly, each
    in the partitions' order: one range when the keys are contiguous.

    A range of a two-dimension definition is the product of a range of each dimension
    (Dagster's range from ``a|x`` to ``b|y`` holds every key between ``a`` and ``b`` of the
    first with every key between ``x`` and ``y`` of the second), so such keys are cut into
    rectangles: all suite x system keys are one, whatever order the systems are listed in."""
    wanted = {str(k) for k in keys}

    def listed(definition: dg.PartitionsDefinition) -> list[str]:
        return [str(k) for k in definition.get_partition_keys(dynamic_partitions_store=instance)]

    every = listed(partitions_def)
    unknown = wanted - set(every)
    if unknown:
        raise ValueError(f"not partitions of the job: {', '.join(sorted(unknown))}")
    if not isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return [
            every[first : last + 1]
            for first, last in _contiguous([i for i, k in enumerate(every) if k in wanted])
        ]
    outer, inner = partitions_def.partitions_defs
    rows, cols = listed(outer.partitions_def), listed(inner.partitions_def)
    present: dict[int, list[int]] = {}
    for key in wanted:
        by_dim = partitions_def.get_partition_key_from_str(key).keys_by_dimension
        present.setdefault(rows.index(by_dim[outer.name]), []).append(
            cols.index(by_dim[inner.name])
        )
    # consecutive rows with the same column runs share their rectangles
    groups: list[tuple[list[int], list[tuple[int, int]]]] = []
    for row in sorted(present):
        runs = _contiguous(sorted(present[row]))
        if groups and groups[-1][1] == runs and groups[-1][0][-1] == row - 1:
            groups[-1][0].append(row)
        else:
            groups.append(([row], runs))
    ranges = []
    for row_ids, runs in groups:
        for first, last in runs:
            start = dg.MultiPartitionKey({outer.name: rows[row_ids[0]], inner.name: cols[first]})
            end = dg.MultiPartitionKey({outer.name: rows[row_ids[-1]], inner.name: cols[last]})
            covered = partitions_def.get_partition_keys_in_range(
                dg.PartitionKeyRange(str(start), str(end))
            )
            ranges.append([str(k) for k in covered])
    if sorted(k for r in ranges for k in r) != sorted(wanted):  # never: the cut is exact
        raise AssertionError(f"partition ranges {ranges} do not cover exactly {sorted(wanted)}")
    return sorted(ranges, key=lambda r: every.index(r[0]))


def _contiguous(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted indices as (first, last) runs of consecutive ones."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


class _RunTracker:
    """Follows one run over several partitions through its event stream (the instance calls
    it with each event as it is stored), for progress while the run goes on: each step as it
    ends, and each partition once the step that completes it has ended."""

    def __init__(
        self,
        keys: Sequence[str],
        expected: AbstractSet[dg.AssetKey],
        on_partition: OnPartition | None,
        on_step: OnStep | None,
    ):
        self.keys = list(keys)
        self.expected = frozenset(expected)
        self.on_partition = on_partition
        self.on_step = on_step
        self.materialized: dict[str, set[dg.AssetKey]] = {k: set() for k in self.keys}
        self.blocked: set[str] = set()  # a blocking check failed: its own run would fail
        self.finished: dict[str, bool] = {}
        self.step_started: dict[str, float] = {}
        self.step_partitions: dict[str, set[str]] = {}

    def complete(self, key: str) -> bool:
        return self.materialized.get(key, set()) >= self.expected

    def __call__(self, entry: Any) -> None:
        event = entry.dagster_event
        if event is None:
            return
        kind = event.event_type
        if kind == dg.DagsterEventType.STEP_START:
            self.step_started[event.step_key] = time.perf_counter()
        elif kind == dg.DagsterEventType.ASSET_MATERIALIZATION and event.partition:
            self.materialized.setdefault(event.partition, set()).add(event.asset_key)
            self.step_partitions.setdefault(event.step_key, set()).add(event.partition)
        elif kind == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            check = event.asset_check_evaluation_data
            if check.partition and check.blocking and not check.passed:
                self.blocked.add(check.partition)
        elif kind in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            if self.on_step:
                started = self.step_started.get(event.step_key, time.perf_counter())
                self.on_step(
                    event.step_key,
                    len(self.step_partitions.get(event.step_key, ())),
                    time.perf_counter() - started,
                    kind == dg.DagsterEventType.STEP_SUCCESS,
                )
            for key in self.keys:
                if key not in self.finished and self.complete(key):
                    self.finish(key, key not in self.blocked)

    def finish(self, key: str, ok: bool) -> None:
        self.finished[key] = ok
        if self.on_partition:
            self.on_partition(key, ok)


def execute_partitions(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    keys: Sequence[str],
    single_run: bool = False,
    on_done: OnDone | None = None,
    run_config: Mapping[str, Any] | None = None,
    *,
    on_partition: OnPartition | None = None,
    on_step: OnStep | None = None,
    retry_alone: bool = False,
) -> RunResults:
    """Run ``job`` over ``keys``: a run each, or (``single_run``) one run per range of them
    (what a single-run backfill does: one run when the keys are a range of the partitions,
    e.g. all of them; see :func:`partition_ranges`). Returns the run result per partition key;
    ``on_done(label, ok, seconds)`` after each run.

    A run over several partitions reports from its event stream while it goes: ``on_step``
    when a step ends, and ``on_partition(key, ok)`` for each partition once it materialized
    every asset of the job (ok unless a blocking check of that partition failed, which alone
    would fail its own run), or at the run's end for one that materialized less (ok if the run
    succeeded, e.g. a partition that waits on a provider batch). With ``retry_alone``, the
    partitions a failed run did not complete run again, a run each, so that the partition
    that breaks the run fails alone, as in a run of its own, and the others still land."""
    if single_run and job.partitions_def is not None and len(keys) > 1:
        groups = partition_ranges(job.partitions_def, keys, instance)
    else:
        groups = [[key] for key in keys]
    outcomes: RunResults = {}
    for covered in groups:
        partition_key: str | None = None
        tags: dict[str, str] | None = None
        tracker: _RunTracker | None = None
        if len(covered) == 1:
            label = partition_key = covered[0]
        else:
            label = f"{len(covered)} partitions in one run"
            tags = {PARTITION_RANGE_START_TAG: covered[0], PARTITION_RANGE_END_TAG: covered[-1]}
            tracker = _RunTracker(
                covered, job.asset_layer.selected_asset_keys, on_partition, on_step
            )
        start = time.perf_counter()
        run_id = str(uuid.uuid4())  # known before the run: its events reach the tracker
        if tracker is not None:
            instance.add_event_listener(run_id, tracker)
        result = job.execute_in_process(
            instance=instance,
            run_config=dict(QUIET_RUN_CONFIG if run_config is None else run_config),
            raise_on_error=False,
            run_id=run_id,
            partition_key=partition_key,
            tags=tags,
        )
        outcomes.update(dict.fromkeys(covered, result))
        if on_done:
            on_done(label, result.success, time.perf_counter() - start)
        if tracker is None:
            continue
        rest = [k for k in covered if k not in tracker.finished]  # materialized less
        if retry_alone and not result.success and rest:
            outcomes.update(
                execute_partitions(job, instance, rest, on_done=on_done, run_config=run_config)
            )
            continue
        for key in rest:
            tracker.finish(key, result.success and key not in tracker.blocked)
    return outcomes


def observe_sources(defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
    """Observe the evaluation's observable sources (suite files, systems, settings), what
    "Observe all" does in the UI, so staleness and data versions are current before a run.
    One observation job per partitions definition (suite vs system): a job's assets share one."""
    graph = defs.resolve_asset_graph()
    groups: list[tuple[dg.PartitionsDefinition | None, list[dg.AssetKey]]] = []
    for key in sorted(graph.observable_asset_keys, key=lambda k: k.to_user_string()):
        if key.path[0] != PREFIX:
            continue
        partitions = graph.get(key).partitions_def
        group = next((keys for p, keys in groups if p == partitions), None)
        if group is None:
            groups.append((partitions, [key]))
        else:
            group.append(key)
    for _, keys in groups:
        name = f"observe_{'_'.join(k.to_python_identifier() for k in keys)}"
        job = dg.Definitions(
            assets=[defs.resolve_assets_def(k) for k in keys],
            jobs=[dg.define_asset_job(name, selection=keys)],
        ).resolve_job_def(name)
        job.execute_in_process(instance=instance, run_config=dict(QUIET_RUN_CONFIG))


def materialize_partitions(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    partition_keys: Sequence[str] | None = None,
    single_run: bool = False,
    on_done: OnDone | None = None,
    *,
    on_partition: OnPartition | None = None,
    on_step: OnStep | None = None,
) -> RunResults:
    """Observe the evaluation sources, then run the evaluation job over ``partition_keys``
    (default: every suite x system partition): a run each, or with ``single_run`` one run
    over them all (what the UI's backfill does under the assets' single-run policy), whose
    partitions a failure sends back to a run each (see :func:`execute_partitions`). Returns
    the run result per partition."""
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    job = defs.resolve_job_def(EVALUATION_JOB.name)
    observe_sources(defs, instance)
    if job.partitions_def is None:
        raise ValueError(f"{EVALUATION_JOB.name} has no partitions")
    keys = list(partition_keys or job.partitions_def.get_partition_keys())
    return execute_partitions(
        job,
        instance,
        keys,
        single_run,
        on_done,
        on_partition=on_partition,
        on_step=on_step,
        retry_alone=single_run,
    )


def warm_shared_pool(metrics: Iterable[str]) -> threading.Thread | None:
    """Start the host's shared pool server in the background when one of ``metrics`` is
    heavy and the code location's worker pool (``worker_pool_resource_from_env``) is in its
    ``auto`` mode, where the first heavy metric of a scores step starts that server and waits
    for it: the server then loads its encoder while the code location loads and the first
    steps run. Nothing else changes: the step finds the server running and uses it, and a
    server that cannot start leaves the step to find that out and score in its own process,
    as it would have. Returns the thread, or None when there is nothing to start."""
    from flowstone.errors import ConfigError
    from flowstone.evaluation.metrics import METRICS
    from flowstone.workers.autostart import AutoPool, auto_pool_setting
    from flowstone.workers.errors import PoolError
    from resources.worker_pool import worker_pool_resource_from_env

    if not any(getattr(METRICS.get(name), "heavy", False) for name in metrics):
        return None
    resource = worker_pool_resource_from_env()
    if resource.socket_path or resource.private_pool or not resource.auto_pool:
        return None
    try:
        if not auto_pool_setting().enabled:
            return None
    except ConfigError:  # the step names the bad setting itself
        return None
    pool = AutoPool.from_env(
        workers=resource.auto_pool_workers,
        start_timeout_s=resource.start_timeout_s,
        bridge_options={"preload": True, **resource.bridge_options},
    )

    def start() -> None:
        with contextlib.suppress(PoolError):  # the step finds it failed, and scores itself
            pool.ensure()

    thread = threading.Thread(target=start, name="flowstone-pool-warm-up", daemon=True)
    thread.start()
    return thread


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
    """Materialize ``evaluation/comparison`` for every suite (one run; if it fails, a run
    each) and return what it stored, or None for a suite whose run failed (e.g. fewer than
    two systems evaluated)."""
    job = defs.resolve_job_def(COMPARISON_JOB)
    results = execute_partitions(job, instance, list(suites), single_run=True, retry_alone=True)
    compared = [suite for suite in suites if results[suite].success]
    stored: dict[str, Any] = {}
    if compared and job.partitions_def is not None:
        # a load per range of suites, not per suite: each load builds its own contexts
        with defs.get_asset_value_loader(instance) as loader:
            for covered in partition_ranges(job.partitions_def, compared, instance):
                value = loader.load_asset_value(
                    COMPARISON_KEY,
                    partition_key_range=dg.PartitionKeyRange(covered[0], covered[-1]),
                )
                stored.update({covered[0]: value} if len(covered) == 1 else value)
    out: dict[str, dict[str, Any] | None] = {}
    for suite in suites:
        value = stored.get(suite)
        if suite in compared and not isinstance(value, dict):
            raise TypeError(f"evaluation/comparison {suite} stored {type(value).__name__}")
        out[suite] = value if suite in compared else None
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

    One warehouse run per range of the keys (see :func:`partition_ranges`): one for every
    suite x system partition, a few around a failed evaluation partition, which is not loaded.
    Returns one result per job name (the warehouse's first failed run, else its last); dbt is
    skipped if the warehouse failed.
    """
    ensure_pool_limits(instance)
    job = defs.resolve_job_def(WAREHOUSE_JOB)
    if job.partitions_def is None:
        raise ValueError(f"{WAREHOUSE_JOB} has no partitions")
    if not partition_keys:
        raise ValueError(f"no partition of {WAREHOUSE_JOB} to load")
    ordered = [k for r in partition_ranges(job.partitions_def, partition_keys) for k in r]
    runs = execute_partitions(job, instance, ordered, single_run=True, run_config=run_config or {})
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
