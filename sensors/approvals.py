"""Approval gate sensors: upstream materializations in, one request per data version out;
approvals in, exactly one RunRequest of the gated partition out.

Dagster has no approval step (dagster-io/dagster#8067, #11661, #14681); these two sensors
build one from the durable approval store in ``flowstone.approvals``.
"""

import json
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import dagster as dg

from flowstone.approvals.flow import (
    APPROVAL_REQUEST_TAG,
    APPROVED_BY_TAG,
    announce_requests,
    open_for_version,
    process_decisions,
    run_key,
)
from flowstone.approvals.store import ApprovalRequest
from sensors.run_events import run_check_evaluations

_DATA_VERSION_TAG = "dagster/data_version"
#: Who launched the upstream run: the tag Dagster+ sets to the signed-in user. Free-form tags
#: (``flowstone/requested_by``, ``user``) are whatever the launcher typed, so they never name
#: the requester; without this tag the requester is unknown, and a policy without
#: self-approval then refuses every decision rather than let one through.
REQUESTER_TAG = "dagster/user"


def asset_key_string(key: dg.AssetKey) -> str:
    """The store's name for an asset: ``evaluation/report``."""
    return key.to_user_string()


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def _materialization(record: dg.EventLogRecord) -> dg.AssetMaterialization:
    """The materialization a ``fetch_materializations`` record carries."""
    materialization = record.asset_materialization
    if materialization is None:
        raise ValueError(f"event log record {record.storage_id} carries no asset materialization")
    return materialization


def _summary(record: dg.EventLogRecord) -> dict[str, Any]:
    materialization = _materialization(record)
    summary = {k: _jsonable(v.value) for k, v in (materialization.metadata or {}).items()}
    summary["upstream_run_id"] = record.run_id
    return summary


def failed_blocking_checks(
    evaluations: Sequence[dg.AssetCheckEvaluation], asset_key: dg.AssetKey, partition: str | None
) -> list[str]:
    """The blocking checks that failed on ``asset_key``'s ``partition`` among a run's check
    ``evaluations``.

    Dagster stops what is downstream of a failed blocking check inside the run; an approval
    launches its run later, so the gate has to look: a partition that failed one is never
    offered for promotion, and the other partitions of the same run still are."""
    return [
        e.check_name
        for e in evaluations
        if e.asset_key == asset_key
        and e.partition == partition
        and not e.passed
        and e.blocking
        and e.severity == dg.AssetCheckSeverity.ERROR
    ]


def build_approval_sensors(
    gated_asset: dg.AssetKey,
    upstream_asset: dg.AssetKey,
    *,
    target: Any = None,
    name: str | None = None,
    partition_for: Callable[[str | None], str | None] = lambda partition: partition,
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    approvals_resource_key: str = "approvals",
    notifications_resource_key: str = "notifications",
    relaunch_after: timedelta = timedelta(minutes=10),
    batch_size: int = 200,
) -> Sequence[dg.SensorDefinition]:
    """Two sensors gating ``gated_asset`` on human approval of ``upstream_asset``'s versions.

    - ``<name>_approval_requests`` opens one request per upstream data version (the store's
      unique key plus this sensor's cursor make it idempotent), supersedes older pending
      requests of the same partition and notifies approvers with links signed for each.
    - ``<name>_approval_decisions`` expires or escalates overdue requests, announces
      decisions, records rejections as an ``AssetObservation`` on the gated partition, and
      turns each approval into exactly one RunRequest (run key ``approval-<request id>``,
      tag ``flowstone/approval_request``).

    ``target`` is what the RunRequests run (default: the gated asset alone); ``partition_for``
    maps an upstream partition key to the gated one (default: the same key).
    """
    prefix = name or gated_asset.to_python_identifier()
    upstream_name = asset_key_string(upstream_asset)
    gated_name = asset_key_string(gated_asset)
    keys = {approvals_resource_key, notifications_resource_key}

    def _resources(context):
        return (
            getattr(context.resources, approvals_resource_key),
            getattr(context.resources, notifications_resource_key),
        )

    @dg.sensor(
        name=f"{prefix}_approval_requests",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        required_resource_keys=keys,
        description=f"Opens an approval request for {gated_name} per data version of "
        f"{upstream_name} and notifies the approvers.",
    )
    def approval_requests(context: dg.SensorEvaluationContext, **_injected: Any) -> dg.SensorResult:
        approvals, notifications = _resources(context)
        store, policy, notifier = approvals.store(), approvals.policy(), notifications.notifier()
        if approvals.uses_dev_secret():
            context.log.warning(
                "INSECURE (development mode): approval links are signed with the public "
                "development secret; set FLOWSTONE_APPROVAL_SECRET before real use."
            )
        after = int(context.cursor) if context.cursor else None
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=upstream_asset, after_storage_id=after),
            limit=batch_size,
            ascending=True,
        ).records
        opened = held = 0
        evaluations_by_run: dict[str, list[dg.AssetCheckEvaluation]] = {}
        for record in records:
            materialization = _materialization(record)
            if record.run_id and record.run_id not in evaluations_by_run:
                evaluations_by_run[record.run_id] = run_check_evaluations(
                    context.instance, record.run_id
                )
            failed = failed_blocking_checks(
                evaluations_by_run.get(record.run_id or "", []),
                upstream_asset,
                materialization.partition,
            )
            if failed:
                held += 1
                context.log.info(
                    f"no approval request for {gated_name} [{materialization.partition}]: "
                    f"blocking check(s) {', '.join(failed)} failed on {upstream_name} in run "
                    f"{record.run_id}"
                )
                continue
            version = (materialization.tags or {}).get(_DATA_VERSION_TAG) or (
                f"storage-{record.storage_id}"
            )
            run = context.instance.get_run_by_id(record.run_id) if record.run_id else None
            requester = (run.tags.get(REQUESTER_TAG) or None) if run is not None else None
            result = open_for_version(
                store,
                policy,
                gated_name,
                partition_for(materialization.partition),
                version,
                _summary(record),
                requested_by=requester,
            )
            opened += int(result.created)
            for old in result.superseded:
                context.log.info(
                    f"approval request {old.id} for {gated_name} [{old.partition}] superseded "
                    f"by data version {version}"
                )
        announced = announce_requests(store, gated_name, notifier.notify, approvals.request_links)
        report = notifier.flush(time_budget_seconds=5)
        cursor = str(records[-1].storage_id) if records else context.cursor
        message = (
            f"{len(records)} new materializations of {upstream_name}, {opened} requests opened, "
            f"{held} held back by failed blocking checks, {len(announced)} announced; "
            f"notifications sent {report.sent}, failed {report.failed}"
        )
        context.log.info(message)
        if not opened and not announced:
            return dg.SensorResult(skip_reason=message, cursor=cursor)
        return dg.SensorResult(cursor=cursor)

    @dg.sensor(
        name=f"{prefix}_approval_decisions",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        required_resource_keys=keys,
        target=target if target is not None else [gated_asset],
        description=f"Launches {gated_name} once per approval; records and announces "
        "rejections and timeouts.",
    )
    def approval_decisions(
        context: dg.SensorEvaluationContext, **_injected: Any
    ) -> dg.SensorResult:
        approvals, notifications = _resources(context)
        store, notifier = approvals.store(), notifications.notifier()

        def has_run(request: ApprovalRequest) -> str | None:
            runs = context.instance.get_run_records(
                filters=dg.RunsFilter(tags={APPROVAL_REQUEST_TAG: request.id}), limit=1
            )
            return runs[0].dagster_run.run_id if runs else None

        outcome = process_decisions(
            store,
            gated_name,
            notifier.notify,
            approvals.request_links,
            has_run,
            relaunch_after=relaunch_after,
        )
        run_requests = []
        for launch in outcome.launches:
            request = launch.request
            if launch.relaunch:
                context.log.warning(
                    f"approval {request.id}: RunRequest emitted at {request.run_requested_at} "
                    "never became a run; emitting it again with the same run key"
                )
            run_requests.append(
                dg.RunRequest(
                    run_key=run_key(request.id),
                    partition_key=request.partition or None,
                    asset_selection=[gated_asset],
                    tags={
                        APPROVAL_REQUEST_TAG: request.id,
                        APPROVED_BY_TAG: request.decided_by or "",
                    },
                )
            )
        asset_events = [
            dg.AssetObservation(
                asset_key=gated_asset,
                partition=request.partition or None,
                description=f"{request.state.value}: {request.comment or 'no comment'}",
                metadata={
                    "approval_request": request.id,
                    "decision": request.state.value,
                    "decided_by": request.decided_by or "flowstone",
                    "comment": request.comment or "",
                    "upstream_data_version": request.data_version,
                },
            )
            for request in [*outcome.rejected, *outcome.timed_out]
        ]
        report = notifier.flush(time_budget_seconds=5)
        context.log.info(
            f"{gated_name}: {len(run_requests)} runs requested, {len(outcome.rejected)} "
            f"rejected, {len(outcome.timed_out)} timed out; notifications sent {report.sent}, "
            f"failed {report.failed}"
        )
        if not run_requests and not asset_events:
            return dg.SensorResult(skip_reason=f"no new decisions for {gated_name}")
        return dg.SensorResult(run_requests=run_requests, asset_events=asset_events)

    return [approval_requests, approval_decisions]
