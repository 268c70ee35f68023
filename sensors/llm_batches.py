"""The LLM batch sensor: polls the provider batches that predictions steps submitted, and
launches the run that materializes a partition once its batches ended.

Why a sensor: a batch can take up to 24 hours and no worker should wait on it. Each tick reads
every pending batch's state (one request each), fills the response cache from the ones that
ended (at the batch price), sends expired requests again once and reports a second expiry.
A partition whose batches all ended gets one run of the evaluation job: its predictions step
finds every answer in the cache and retries online only what the batch could not answer.

Running by default, unlike the other sensors: it only acts on batches a person submitted by
materializing a batch system's partition, and without it such a partition waits forever. On a
deployment that never used batch mode a tick reads nothing and creates nothing.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import dagster as dg

from flowstone.evaluation.catalog import Catalog
from flowstone.evaluation.judge_metric import is_judge_batch, judge_batch_targets
from flowstone.llm.batch_flow import TargetFor, TickReport, advance_batches
from flowstone.llm.batch_store import BatchJob, BatchStore, batches_exist
from flowstone.systems.batch_mode import batch_targets

if TYPE_CHECKING:  # define_asset_job's return type, which Dagster does not re-export
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )

PREDICTIONS_KEY = dg.AssetKey(["evaluation", "predictions"])
SCORES_KEY = dg.AssetKey(["evaluation", "scores"])
BATCH_TAG = "flowstone/llm_batches"
PARTITION_DIMENSIONS = ("suite", "system")


def _partition(scope: dict[str, str]) -> dg.MultiPartitionKey:
    """The evaluation partition a batch answers; a judge batch's scope also names its metric
    (``JUDGE_SCOPE_KEY``), which is not a partition dimension."""
    return dg.MultiPartitionKey({k: scope[k] for k in PARTITION_DIMENSIONS})


def batch_run_requests(report: TickReport) -> list[dg.RunRequest]:
    """One run per ready partition (a system's batch and its judges' batches that end on the
    same tick share it: the run reads them all). The run key names the partition's ended
    batches, so a daemon that ticks again before the run consumed them requests nothing
    twice."""
    merged: dict[str, tuple[dict[str, str], list[BatchJob]]] = {}
    for scope, jobs in report.ready:
        key = str(_partition(scope))
        merged.setdefault(key, (scope, []))[1].extend(jobs)
    requests = []
    for scope, ended in merged.values():
        ids = ",".join(j.batch_id for j in ended)
        partition = _partition(scope)
        digest = hashlib.sha256(ids.encode()).hexdigest()[:16]
        requests.append(
            dg.RunRequest(
                run_key=f"llm-batch-{partition}-{digest}",
                partition_key=partition,
                tags={BATCH_TAG: ids[:4000]},
            )
        )
    return requests


def failure_observations(report: TickReport) -> list[dg.AssetObservation]:
    """A reported failure on the partition it leaves unmaterialized, beside the observation
    its step made when it submitted the batch."""
    return [
        dg.AssetObservation(
            asset_key=SCORES_KEY if is_judge_batch(job) else PREDICTIONS_KEY,
            partition=_partition(job.scope),
            metadata={"llm_batch": "failed", "llm_batch_ids": job.batch_id, "detail": job.detail},
        )
        for job in report.failed
    ]


def tick_summary(report: TickReport) -> str:
    """The tick's one line: what is in progress, collected, sent again, failed, launched."""
    parts = []
    for job, status in report.in_progress:
        progress = status if isinstance(status, str) else f"{status.done}/{status.total} done"
        parts.append(f"{job.describe()} in progress ({progress})")
    parts += [f"{j.describe()} ended: {len(j.answered)} answered" for j in report.collected]
    parts += [
        f"{old.batch_id} expired, sent again as {new.batch_id}" for old, new in report.resubmitted
    ]
    parts += [f"FAILED: {j.detail}" for j in report.failed]
    return "; ".join(parts) or "no provider batch in progress"


def batch_targets_of(catalog: Catalog) -> TargetFor:
    """Where a recorded batch's answers go: a judge batch's from its metric's settings, a
    system batch's from its system."""
    systems = batch_targets(catalog.systems)
    judges = judge_batch_targets(catalog.settings)
    return lambda job: judges(job) if is_judge_batch(job) else systems(job)


def build_llm_batch_sensor(
    catalog: Catalog, job: UnresolvedAssetJobDefinition | dg.JobDefinition
) -> dg.SensorDefinition:
    """``llm_batch_sensor`` over the systems of ``catalog``, launching ``job`` (the
    evaluation job) per partition whose batches ended."""

    @dg.sensor(
        name="llm_batch_sensor",
        job=job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Polls the provider batches of systems and judges in `mode: batch` and "
        "launches the evaluation run of each partition whose batch ended.",
    )
    def llm_batch_sensor(context: dg.SensorEvaluationContext):
        if not batches_exist():
            return dg.SkipReason("no provider batch was ever submitted")
        report = advance_batches(BatchStore(), batch_targets_of(catalog))
        summary = tick_summary(report)
        for failed in report.failed:
            context.log.error(failed.detail or f"{failed.describe()} failed")
        runs = batch_run_requests(report)
        if not runs and not report.failed:
            return dg.SkipReason(summary)
        context.log.info(summary)
        return dg.SensorResult(run_requests=runs, asset_events=failure_observations(report))

    return llm_batch_sensor
