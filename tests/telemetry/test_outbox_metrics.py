"""Outbox metrics: process counters from real deliveries (SMTP down, then up), the outbox gauges
read from its database by `flowstone metrics serve`, and counters summed over processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta

from support.net import free_port
from telemetry_helpers import sample, scrape

from flowstone.notifications.channels import EmailChannel
from flowstone.notifications.events import Notification
from flowstone.notifications.outbox import Outbox, backlog_gauges
from flowstone.telemetry.metrics import exporter_registry, registry, serve_metrics

CHILD = textwrap.dedent(
    """
    import sys
    from flowstone.notifications.channels import LogChannel
    from flowstone.notifications.events import Notification
    from flowstone.notifications.outbox import Outbox

    outbox = Outbox(sys.argv[1])
    outbox.enqueue(Notification(kind="child", title="from a step", text="hello"), ["log"])
    report = outbox.flush({"log": LogChannel()})
    assert report.sent == 1, report
    """
)


def value(name: str, **labels: str) -> float:
    return registry().get_sample_value(name, labels) or 0.0


# `flowstone metrics serve` as flowstone/cli.py composes it: the exporter plus the outbox reader
EXPORTER = textwrap.dedent(
    """
    from flowstone.notifications.outbox import backlog_gauges
    from flowstone.telemetry import cli

    cli.register_outbox_gauges(backlog_gauges)
    cli.app()
    """
)


def _exporter(env: dict, outbox_url: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", EXPORTER, "serve", "--port", "0", "--outbox-url", outbox_url],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    return proc


def test_outbox_counters_gauges_and_the_multiprocess_exporter(tmp_path):
    url = f"sqlite:///{tmp_path / 'outbox.db'}"
    outbox = Outbox(url)
    smtp_port = free_port()
    email = EmailChannel("127.0.0.1", smtp_port, "flowstone@example.com", ["ops@example.com"],
                         timeout=2.0)  # fmt: skip
    before = {n: value(f"flowstone_outbox_{n}_total", channel="email")
              for n in ("enqueued", "failed", "retries", "sent")}  # fmt: skip
    outbox.enqueue(Notification(kind="test", title="run failed", text="x"), ["email"])
    report = outbox.flush({"email": email})  # nothing listens on the SMTP port yet
    assert report.failed == 1
    assert value("flowstone_outbox_enqueued_total", channel="email") == before["enqueued"] + 1
    assert value("flowstone_outbox_failed_total", channel="email") == before["failed"] + 1

    # Two short-lived "step" processes write counters to a shared multiprocess folder.
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", CHILD, url], env=env, check=True, timeout=60)
    proc = _exporter(env, url)
    try:
        line = proc.stderr.readline()
        match = re.search(r"serving (http://\S+/metrics)", line)
        assert match and str(multiproc) in line, line
        _, text = scrape(match.group(1))
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0
    assert sample(text, "flowstone_outbox_up") == 1
    assert sample(text, "flowstone_outbox_pending", channel="email") == 1
    assert sample(text, "flowstone_outbox_retrying", channel="email") == 1
    assert sample(text, "flowstone_outbox_oldest_pending_age_seconds", channel="email") >= 0
    assert sample(text, "flowstone_outbox_pending", channel="log") == 0  # a 0, not a gap
    # summed over the two child processes
    assert sample(text, "flowstone_outbox_enqueued_total", channel="log") == 2
    assert sample(text, "flowstone_outbox_sent_total", channel="log") == 2

    from aiosmtpd.controller import Controller

    class Sink:
        async def handle_DATA(self, server, session, envelope):
            return "250 OK"

    controller = Controller(Sink(), hostname="127.0.0.1", port=smtp_port)
    controller.start()
    try:
        later = datetime.now(UTC) + timedelta(hours=2)  # past the backoff
        assert outbox.flush({"email": email}, now=later).sent == 1
    finally:
        controller.stop()
    assert value("flowstone_outbox_retries_total", channel="email") == before["retries"] + 1
    assert value("flowstone_outbox_sent_total", channel="email") == before["sent"] + 1
    server = serve_metrics(0, source=exporter_registry(backlog_gauges(url)))
    try:
        _, text = scrape(server.url)
    finally:
        server.close()
    assert sample(text, "flowstone_outbox_pending", channel="email") == 0
    assert sample(text, "flowstone_outbox_sent_total", channel="email") >= 1  # process counters


def test_an_unreachable_outbox_database_scrapes_as_down(caplog, tmp_path):
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing?connect_timeout=2"
    server = serve_metrics(0, source=exporter_registry(backlog_gauges(dead)))
    try:
        _, text = scrape(server.url)  # still a 200: one broken source must not hide the rest
    finally:
        server.close()
    assert sample(text, "flowstone_outbox_up") == 0
    assert sample(text, "flowstone_outbox_pending") is None
    assert "cannot read the notification outbox" in caplog.text
    assert "postgres@127.0.0.1" in caplog.text
    missing = f"sqlite:///{tmp_path / 'never-created.db'}"
    server = serve_metrics(0, source=exporter_registry(backlog_gauges(missing)))
    try:
        _, text = scrape(server.url)
    finally:
        server.close()
    assert sample(text, "flowstone_outbox_up") == 1  # nothing was ever queued
    assert not (tmp_path / "never-created.db").exists()  # and scraping did not create it
