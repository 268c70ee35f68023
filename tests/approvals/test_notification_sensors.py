"""Run-failure, asset-check and outbox sensors against a Dagster test instance and fake Slack."""

import dagster as dg
import pytest

from flowstone.notifications.outbox import outbox_table
from resources.notifications import NotificationsResource
from sensors.notifications import build_notification_sensors

DAILY = dg.StaticPartitionsDefinition(["2026-01-01", "2026-01-02"])


@dg.asset(partitions_def=DAILY)
def flaky_feed(context: dg.AssetExecutionContext) -> None:
    raise ValueError(f"upstream API returned 503 for {context.partition_key}")


@dg.asset
def scored() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"exact_match": 0.61})


@dg.asset_check(asset=scored)
def no_regression() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        description="exact_match fell from 0.74 to 0.61",
        metadata={"previous": 0.74, "current": 0.61},
    )


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def notifications(outbox_url: str, fake_slack) -> NotificationsResource:
    return NotificationsResource(
        database_url=outbox_url,
        slack_token=fake_slack.token,
        slack_base_url=fake_slack.base_url,
        slack_channel="#alerts",
        dagster_ui_url="http://dagster.test",
    )


def _fail(instance, partition: str) -> tuple[dg.DagsterRun, dg.DagsterEvent]:
    result = dg.materialize([flaky_feed], instance=instance, partition_key=partition,
                            raise_on_error=False)  # fmt: skip
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    return run, failure


def _run_status(sensor, instance, run, event, notifications, failure: bool) -> None:
    with dg.build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_event=event,
        dagster_instance=instance,
        dagster_run=run,
        resources={"notifications": notifications},
    ) as context:
        sensor(context.for_run_failure() if failure else context)


def _on_failure(sensor, instance, run, event, notifications) -> None:
    _run_status(sensor, instance, run, event, notifications, failure=True)


def test_run_failure_notifies_once_per_partition(instance, notifications, fake_slack) -> None:
    failure_sensor, _, outbox_sensor = build_notification_sensors()
    run, event = _fail(instance, "2026-01-01")
    _on_failure(failure_sensor, instance, run, event, notifications)
    assert fake_slack.titles() == ["Materialization failed: flaky_feed [2026-01-01]"]
    message = fake_slack.messages[0]
    assert "upstream API returned 503 for 2026-01-01" in message["text"]
    button = message["blocks"][-1]["elements"][0]
    assert button["url"] == f"http://dagster.test/runs/{run.run_id}"

    # The same partition failing again (a retry storm) is counted, not re-sent.
    for _ in range(2):
        run2, event2 = _fail(instance, "2026-01-01")
        _on_failure(failure_sensor, instance, run2, event2, notifications)
    run3, event3 = _fail(instance, "2026-01-02")
    _on_failure(failure_sensor, instance, run3, event3, notifications)
    assert fake_slack.titles() == [
        "Materialization failed: flaky_feed [2026-01-01]",
        "Materialization failed: flaky_feed [2026-01-02]",
    ]
    assert notifications.outbox().rows()[0].duplicates == 2

    # Nothing left for the flush sensor.
    with dg.build_sensor_context(
        instance=instance, resources={"notifications": notifications}
    ) as ctx:
        skip = outbox_sensor(ctx)
    assert "sent 0" in skip.skip_message and len(fake_slack.messages) == 2


def test_failed_check_becomes_an_evaluation_regression(instance, notifications, fake_slack) -> None:
    _, check_sensor, _ = build_notification_sensors()
    result = dg.materialize([scored, no_regression], instance=instance)
    assert result.success
    run = instance.get_run_by_id(result.run_id)
    success = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_SUCCESS)
    _run_status(check_sensor, instance, run, success, notifications, failure=False)
    assert fake_slack.titles() == ["Evaluation regression: scored"]
    assert "exact_match fell from 0.74 to 0.61" in fake_slack.messages[0]["text"]


def test_outbox_sensor_delivers_what_waited_while_slack_was_down(
    instance, notifications, fake_slack
) -> None:
    failure_sensor, _, outbox_sensor = build_notification_sensors()
    fake_slack.down()
    run, event = _fail(instance, "2026-01-02")
    _on_failure(failure_sensor, instance, run, event, notifications)
    (row,) = notifications.outbox().rows("pending")
    assert row.attempts == 1
    fake_slack.up()
    # Make the retry due now rather than after the backoff.
    outbox = notifications.outbox()
    with outbox.engine.begin() as conn:
        conn.execute(outbox_table.update().values(next_attempt_at=row.created_at))
    with dg.build_sensor_context(
        instance=instance, resources={"notifications": notifications}
    ) as ctx:
        skip = outbox_sensor(ctx)
    assert "sent 1" in skip.skip_message
    assert fake_slack.titles() == ["Materialization failed: flaky_feed [2026-01-02]"]
