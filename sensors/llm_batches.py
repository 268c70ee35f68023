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
from flowstone.llm.batch_flow import TickReport, advance_batches
from flowstone.llm.batch_store import BatchStore, batches_exist
from flowstone.systems.batch_mode import batch_targets

if TYPE_CHECKING:  # define_asset_job's return type, which Dagster does not re-export
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )

PREDICTIONS_KEY = dg.AssetKey(["evaluation", "predictions"])
BATCH_TAG = "flowstone/llm_batches"


def batch_run_requests(report: TickReport) -> list[dg.RunRequest]:
    """One run per ready partition. The run key names the partition's ended batches, so a
    daemon that ticks again before the run consumed them requests nothing twice."""
    requests = []
    for scope, jobs in report.ready:
        ids = ",".join(j.batch_id for j in jobs)
        partition = dg.MultiPartitionKey(scope)
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
            asset_key=PREDICTIONS_KEY,
            partition=dg.MultiPartitionKey(job.scope),
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
        description="Polls the provider batches of systems in `mode: batch` and launches the "
        "evaluation run of each partition whose batch ended.",
    )
    def llm_batch_sensor(context: dg.SensorEvaluationContext):
        if not batches_exist():
            return dg.SkipReason("no provider batch was ever submitted")
        report = advance_batches(BatchStore(), batch_targets(catalog.systems))
        summary = tick_summary(report)
        for failed in report.failed:
            context.log.error(failed.detail or f"{failed.describe()} failed")
        runs = batch_run_requests(report)
        if not runs and not report.failed:
            return dg.SkipReason(summary)
        context.log.info(summary)
        return dg.SensorResult(run_requests=runs, asset_events=failure_observations(report))

    return llm_batch_sensor
