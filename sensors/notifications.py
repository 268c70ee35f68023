"""Notification sensors: failed runs and failed asset checks into the outbox, outbox out.

Writing to the outbox is cheap and local; delivery happens in the flush sensor (and at the end
of each of these ticks, within a small time budget), so a Slack outage never fails a tick or
loses a message: rows wait and are retried with backoff.
"""

import json
from collections.abc import Sequence
from typing import Any

import dagster as dg

from flowstone.notifications import events
from flowstone.notifications.events import Notification
from resources.notifications import NotificationsResource
from sensors.run_events import run_check_evaluations

_PARTITION_TAG = "dagster/partition"


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def _error_text(error: Any) -> str:
    """The user's own exception first (Dagster wraps it), then the wrapper for context."""
    chain = []
    while error is not None:
        chain.append(error.message.strip())
        error = error.cause
    return chain[-1] if len(chain) == 1 else f"{chain[-1]}\n(raised in: {chain[0]})"


def _assets_by_step(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dict[str, list[str]]:
    """Step key -> asset keys it materializes, from the run's execution plan snapshot."""
    if not run.execution_plan_snapshot_id:
        return {}
    plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    out: dict[str, list[str]] = {}
    for step in plan.steps:
        for output in step.outputs:
            if output.properties is not None and output.properties.asset_key is not None:
                out.setdefault(step.key, []).append(output.properties.asset_key.to_user_string())
    return out


def failure_notifications(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    step_failures: Sequence[dg.DagsterEvent],
    fallback_error: str | None,
    run_url: str,
) -> list[Notification]:
    """One notification per failed asset step of ``run`` (or one for the run)."""
    partition = run.tags.get(_PARTITION_TAG)
    by_step = _assets_by_step(instance, run)
    out = []
    for event in step_failures:
        error = event.step_failure_data.error
        text = _error_text(error) if error is not None else (event.message or "step failed")
        names = by_step.get(event.step_key or "") or [f"{run.job_name}.{event.step_key}"]
        for name in names:
            out.append(events.materialization_failed(name, partition, text, run.run_id, run_url))
    if not out:
        if run.asset_selection and len(run.asset_selection) == 1:
            name = next(iter(run.asset_selection)).to_user_string()
        else:
            name = run.job_name
        out.append(
            events.materialization_failed(
                name, partition, fallback_error or "run failed", run.run_id, run_url
            )
        )
    return out


def failed_check_notifications(
    instance: dg.DagsterInstance, run: dg.DagsterRun, run_url: str
) -> list[Notification]:
    """Notifications for every asset check that did not pass in ``run``."""
    out = []
    for evaluation in run_check_evaluations(instance, run.run_id):
        if evaluation.passed:
            continue
        out.append(
            events.check_failed(
                evaluation.asset_key.to_user_string(),
                evaluation.partition or run.tags.get(_PARTITION_TAG),
                evaluation.check_name,
                evaluation.description,
                {k: _jsonable(v.value) for k, v in evaluation.metadata.items()},
                run.run_id,
                run_url,
            )
        )
    return out


def build_notification_sensors(
    *,
    flush_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    monitor_all_code_locations: bool = False,
) -> Sequence[dg.SensorDefinition]:
    """The run-failure sensor, the asset-check-failure sensor and the outbox flush sensor.

    They take the ``NotificationsResource`` under the resource key ``notifications``.
    """

    @dg.run_failure_sensor(
        name="flowstone_run_failure_notifications",
        default_status=default_status,
        monitor_all_code_locations=monitor_all_code_locations,
        description="Queues a 'materialization failed' notification (asset, partition, error, "
        "run link) for each failed run; repeats of one partition are suppressed.",
    )
    def run_failure_notifications(
        context: dg.RunFailureSensorContext, notifications: NotificationsResource
    ) -> None:
        resource = notifications
        notifier = resource.notifier()
        run = context.dagster_run
        url = resource.run_url(run.run_id)
        fallback = context.failure_event.message if context.failure_event else None
        queued = [
            *failure_notifications(
                context.instance, run, context.get_step_failure_events(), fallback, url
            ),
            *failed_check_notifications(context.instance, run, url),
        ]
        rows = sum(len(notifier.notify(n)) for n in queued)
        report = notifier.flush(time_budget_seconds=5)
        context.log.info(
            f"run {run.run_id} failed: {len(queued)} notifications, {rows} outbox rows "
            f"(the rest suppressed as repeats); sent {report.sent}, failed {report.failed}"
        )

    @dg.run_status_sensor(
        run_status=dg.DagsterRunStatus.SUCCESS,
        name="flowstone_asset_check_notifications",
        default_status=default_status,
        monitor_all_code_locations=monitor_all_code_locations,
        description="Queues a notification for each failed asset check in a successful run "
        "(an evaluation regression check becomes an 'evaluation regression').",
    )
    def asset_check_notifications(
        context: dg.RunStatusSensorContext, notifications: NotificationsResource
    ) -> None:
        resource = notifications
        run = context.dagster_run
        queued = failed_check_notifications(context.instance, run, resource.run_url(run.run_id))
        if not queued:
            return
        notifier = resource.notifier()
        for notification in queued:
            notifier.notify(notification)
        notifier.flush(time_budget_seconds=5)

    @dg.sensor(
        name="flowstone_notification_outbox",
        minimum_interval_seconds=flush_interval_seconds,
        default_status=default_status,
        description="Delivers due notifications from the durable outbox, retrying with backoff.",
    )
    def notification_outbox(
        context: dg.SensorEvaluationContext, notifications: NotificationsResource
    ) -> dg.SkipReason:
        report = notifications.notifier().flush(time_budget_seconds=20)
        return dg.SkipReason(
            f"outbox: sent {report.sent}, failed {report.failed}, waiting {report.still_due}"
        )

    return [run_failure_notifications, asset_check_notifications, notification_outbox]
