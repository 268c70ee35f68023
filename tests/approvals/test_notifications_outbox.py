"""The durable outbox against a Slack Web API server and a real SMTP server on loopback."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from slack_sdk import WebClient

from flowstone.notifications import events
from flowstone.notifications.channels import EmailChannel, LogChannel, SlackChannel
from flowstone.notifications.notifier import Notifier
from flowstone.notifications.outbox import Backoff, Outbox
from flowstone.storage.sql import utcnow as _now
from resources.notifications import NotificationsResource


def slack_channel(fake_slack) -> SlackChannel:
    client = WebClient(token=fake_slack.token, base_url=fake_slack.base_url, timeout=3)
    return SlackChannel(client, "#approvals")


def failure(partition: str, error: str = "boom") -> events.Notification:
    return events.materialization_failed(
        "evaluation/report", partition, error, "run-1", "http://ui/runs/run-1"
    )


def test_slack_down_then_up_delivers_every_message_once(outbox_url: str, fake_slack) -> None:
    backoff = Backoff(base_seconds=30, max_seconds=600)
    notifier = Notifier(Outbox(outbox_url, backoff=backoff), {"slack": slack_channel(fake_slack)})
    for i in range(6):
        notifier.notify(failure(f"qa|sys{i}"))
    fake_slack.down()
    now = _now()
    report = notifier.flush(now=now)
    # The first failure marks Slack broken for this flush: one timeout, not six.
    assert (report.sent, report.failed, report.still_due) == (0, 1, 5)
    report = notifier.flush(now=now + timedelta(seconds=1))
    assert report.sent == 0
    assert len(notifier.outbox.rows("pending")) == 6
    first = notifier.outbox.rows()[0]
    assert first.attempts == 1 and "unreachable" in first.last_error
    assert first.next_attempt_at >= now + timedelta(seconds=24)  # 30s -20% jitter

    # "Restart": a new outbox object over the same database, Slack back up.
    fake_slack.up()
    restarted = Notifier(Outbox(outbox_url, backoff=backoff), {"slack": slack_channel(fake_slack)})
    report = restarted.flush(now=now + timedelta(minutes=5))
    assert (report.sent, report.failed) == (6, 0)
    assert restarted.flush(now=now + timedelta(hours=2)).sent == 0
    assert Notifier(Outbox(outbox_url), {"slack": slack_channel(fake_slack)}).flush().sent == 0
    keys = fake_slack.keys()
    assert len(keys) == 6 and len(set(keys)) == 6
    assert all(m["channel"] == "#approvals" for m in fake_slack.messages)
    assert fake_slack.messages[0]["blocks"][0]["type"] == "header"
    assert {r.state for r in restarted.outbox.rows()} == {"sent"}


def test_http_500_is_retried_and_ratelimit_honours_retry_after(outbox_url: str, fake_slack) -> None:
    notifier = Notifier(Outbox(outbox_url), {"slack": slack_channel(fake_slack)})
    notifier.notify(failure("a"))
    fake_slack.mode = "error500"
    now = _now()
    assert notifier.flush(now=now).failed == 1
    row = notifier.outbox.rows()[0]
    assert "HTTP 500" in row.last_error and row.state == "pending"

    fake_slack.mode = "ratelimited"
    fake_slack.retry_after = 7
    later = now + timedelta(hours=1)
    assert notifier.flush(now=later).failed == 1
    row = notifier.outbox.rows()[0]
    assert "ratelimited" in row.last_error
    assert row.next_attempt_at == later + timedelta(seconds=7)
    assert notifier.flush(now=later + timedelta(seconds=6)).sent == 0  # still waiting

    fake_slack.mode = "ok"
    assert notifier.flush(now=later + timedelta(seconds=8)).sent == 1
    assert len(fake_slack.messages) == 1 and notifier.outbox.rows()[0].attempts == 3


def test_a_stale_lease_is_retried_but_a_live_one_is_not(outbox_url: str, fake_slack) -> None:
    outbox = Outbox(outbox_url, lease_seconds=60)
    outbox.enqueue(failure("a"), ["slack"])
    now = _now()
    row = outbox.due(now=now)[0]
    assert outbox._claim(row.id, now)  # a process claimed it, then died before sending
    channels = {"slack": slack_channel(fake_slack)}
    assert outbox.flush(channels, now=now + timedelta(seconds=30)).sent == 0
    assert outbox.flush(channels, now=now + timedelta(seconds=61)).sent == 1
    assert len(fake_slack.messages) == 1


def test_repeated_failures_of_one_partition_are_suppressed(outbox_url: str, fake_slack) -> None:
    outbox = Outbox(outbox_url, duplicate_window=timedelta(minutes=30))
    notifier = Notifier(outbox, {"slack": slack_channel(fake_slack)})
    now = _now()
    assert len(notifier.notify(failure("qa|base"), now=now)) == 1
    assert notifier.notify(failure("qa|base", "boom again"), now=now + timedelta(minutes=1)) == []
    assert notifier.notify(failure("qa|base"), now=now + timedelta(minutes=2)) == []
    assert len(notifier.notify(failure("qa|tuned"), now=now)) == 1  # other partition
    assert notifier.flush(now=now + timedelta(minutes=3)).sent == 2
    assert outbox.rows()[0].duplicates == 2
    # After the window the same failure is news again.
    assert len(notifier.notify(failure("qa|base"), now=now + timedelta(minutes=31))) == 1


def test_email_goes_through_real_smtp_with_retry(outbox_url: str, smtp_server) -> None:
    host, port, sink = smtp_server
    email = EmailChannel(host, port, "flowstone@test", ["ops@test", "ml@test"], timeout=3)
    notifier = Notifier(Outbox(outbox_url), {"email": email})
    notifier.notify(events.bake_ready("minilm", {"p95_ms": 4.2, "size_mb": 23}, "http://x/r", "v3"))
    assert notifier.flush().sent == 1
    assert len(sink.envelopes) == 1
    envelope = sink.envelopes[0]
    assert sorted(envelope.rcpt_tos) == ["ml@test", "ops@test"]
    body = envelope.content.decode()
    assert "Subject: [FlowStone] Bake ready: minilm" in body and "p95_ms: 4.2" in body
    assert "Message-ID: <flowstone-outbox-1@flowstone>" in body

    # SMTP down: the row waits; back up: delivered once.
    dead = EmailChannel(host, 1, "flowstone@test", ["ops@test"], timeout=2)
    notifier_down = Notifier(Outbox(outbox_url), {"email": dead})
    notifier_down.notify(failure("qa|base"))
    now = _now()
    assert notifier_down.flush(now=now).failed == 1
    assert notifier.flush(now=now + timedelta(hours=1)).sent == 1
    assert len(sink.envelopes) == 2


def test_resource_defaults_to_log_channel(
    outbox_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    resource = NotificationsResource(database_url=outbox_url)
    channels = resource.channels()
    assert list(channels) == ["log"] and isinstance(channels["log"], LogChannel)
    notifier = resource.notifier()
    notifier.notify(failure("qa|base", "division by zero"))
    with caplog.at_level(logging.INFO, logger="flowstone.notifications"):
        assert notifier.flush().sent == 1
    assert "division by zero" in caplog.text and "evaluation/report [qa|base]" in caplog.text
    assert resource.outbox().rows("sent")[0].channel == "log"


def test_resource_accepts_a_dagster_slack_resource(outbox_url: str, fake_slack) -> None:
    from dagster_slack import SlackResource

    resource = NotificationsResource(
        database_url=outbox_url, slack=SlackResource(token=fake_slack.token)
    )
    channel = resource.channels()["slack"]
    assert isinstance(channel, SlackChannel)
    channel.client.base_url = fake_slack.base_url  # SlackResource has no base_url setting
    assert channel.send(failure("x"), "k1")
    assert fake_slack.keys() == ["k1"]


def test_resources_from_env_resolve_secrets_as_envvars(
    monkeypatch: pytest.MonkeyPatch, outbox_url: str, fake_slack, smtp_server
) -> None:
    import dagster as dg

    from resources.approvals import approvals_resource_from_env
    from resources.notifications import notifications_resource_from_env

    host, port, sink = smtp_server
    monkeypatch.setenv("SLACK_BOT_TOKEN", fake_slack.token)
    monkeypatch.setenv("FLOWSTONE_SMTP_HOST", host)
    monkeypatch.setenv("FLOWSTONE_SMTP_PORT", str(port))
    monkeypatch.setenv("FLOWSTONE_SMTP_TO", "ops@test, ml@test")
    monkeypatch.setenv("FLOWSTONE_APPROVAL_SECRET", "from-env")
    resource = notifications_resource_from_env(
        database_url=outbox_url, slack_base_url=fake_slack.base_url
    )
    assert isinstance(resource.slack_token, dg.EnvVar)  # not the secret itself
    approvals = approvals_resource_from_env()
    assert isinstance(approvals.signing_secret, dg.EnvVar) and not approvals.uses_dev_secret()

    @dg.sensor()
    def probe(context, notifications: NotificationsResource):
        notifier = notifications.notifier()
        assert sorted(notifier.channels) == ["email", "slack"]
        notifier.notify(failure("qa|base"))
        return dg.SkipReason(str(notifier.flush().sent))

    with dg.build_sensor_context(resources={"notifications": resource}) as ctx:
        assert probe(ctx).skip_message == "2"
    assert len(fake_slack.messages) == 1 and len(sink.envelopes) == 1
    assert sorted(sink.envelopes[0].rcpt_tos) == ["ml@test", "ops@test"]
