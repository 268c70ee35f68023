"""Worker pool metrics, scraped over real HTTP from `flowstone pool serve --metrics-port`."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from telemetry_helpers import sample, scrape

from flowstone.telemetry.metrics import serve_metrics
from flowstone.workers.errors import WorkerTimeoutError
from flowstone.workers.pool import WorkerPool
from flowstone.workers.server import PoolClient


def _serve(socket_path: Path, home: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "flowstone.workers.cli", "serve", "--socket", str(socket_path),
         "--bridge", "echo", "--workers", "2", "--health-interval-s", "3600", *extra],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_pool_serve_exposes_prometheus_metrics(tmp_path):
    with tempfile.TemporaryDirectory(prefix="fst-", dir="/tmp") as short:
        sock = Path(short) / "p.sock"
        proc = _serve(sock, tmp_path, "--metrics-port", "0", "--max-requests", "4")
        try:
            line = proc.stderr.readline()
            match = re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", line)
            assert "workers ready" in line and match, line
            url = match.group(1)
            with PoolClient(sock) as client:
                assert [client.execute("echo:echo", {"value": i}) for i in range(5)] == list(
                    range(5)
                )
                with pytest.raises(WorkerTimeoutError):
                    client.execute("echo:sleep", {"seconds": 10}, timeout=0.3)
                for _ in range(8):  # whatever the order, some worker reaches 4 requests
                    client.execute("echo:noop")
                assert client.ping()["metrics_url"] == url

                def settled():
                    _, text = scrape(url)
                    return (
                        text if sample(text, "flowstone_pool_workers", state="idle") == 2 else None
                    )

                text = _wait_for(settled)
            assert text, "the pool did not get back to 2 idle workers"
            content_type, _ = scrape(url)
            assert content_type.startswith("text/plain")
            echo = {"bridge": "echo"}
            assert sample(text, "flowstone_pool_call_seconds_count", **echo, command="echo") == 5
            assert (
                sample(text, "flowstone_pool_calls_total", **echo, command="echo", outcome="ok")
                == 5
            )
            assert (
                sample(
                    text, "flowstone_pool_calls_total", **echo, command="sleep", outcome="timeout"
                )
                == 1
            )
            assert (
                sample(text, "flowstone_pool_worker_replacements_total", **echo, reason="timeout")
                == 1
            )
            assert (
                sample(text, "flowstone_pool_worker_recycles_total", **echo, reason="max_requests")
                >= 1
            )
            started = sample(text, "flowstone_pool_workers_started_total", **echo)
            assert started >= 4  # 2 at start, 1 after the timeout, 1+ after recycling
            assert sample(text, "flowstone_pool_queue_depth", **echo) == 0
            assert sample(text, "flowstone_pool_size", **echo) == 2
            assert sample(text, "flowstone_pool_workers", **echo, state="busy") == 0
            # the timed-out call took its 0.3 s, and far less than its 10 s sleep (generous
            # upper bucket: killing and replacing the worker is slow on a busy machine)
            assert (
                sample(
                    text, "flowstone_pool_call_seconds_bucket", **echo, command="sleep", le="0.25"
                )
                == 0
            )
            assert (
                sample(
                    text, "flowstone_pool_call_seconds_bucket", **echo, command="sleep", le="5.0"
                )
                == 1
            )
            assert sample(text, "process_resident_memory_bytes") > 0
            with PoolClient(sock) as client:
                client.shutdown()
            assert proc.wait(timeout=15) == 0
            with pytest.raises(urllib.error.URLError):
                urllib.request.urlopen(url, timeout=2)  # the endpoint stopped with the server
        finally:
            proc.kill()
            proc.wait()


def test_a_taken_metrics_port_stops_serve_before_workers_start(tmp_path):
    with socket.socket() as taken, tempfile.TemporaryDirectory(prefix="fst-", dir="/tmp") as short:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = _serve(Path(short) / "p.sock", tmp_path, "--metrics-port", str(port))
        try:
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode != 0
        assert f"cannot serve metrics on 127.0.0.1:{port}" in err
        assert "choose another --metrics-port" in err
        assert not (Path(short) / "p.sock").exists()


def test_queue_depth_and_busy_workers_while_saturated(tmp_path, monkeypatch):
    """In-process pool, served by serve_metrics: the gauges read live state at scrape time."""
    workers_tests = Path(__file__).resolve().parents[1] / "workers"
    monkeypatch.syspath_prepend(str(workers_tests))  # the faulty test bridge, for its gate
    gate = tmp_path / "release"
    pool = WorkerPool(
        bridge="faulty_bridge:FaultyBridge",
        size=1,
        registry_dir=tmp_path / "workers",
        pythonpath=[str(workers_tests)],
        health_interval_s=None,
    ).start()
    server = serve_metrics(0)
    # The first call holds the only worker until the gate opens, so the other two must queue.
    callers = [
        threading.Thread(target=pool.execute, args=("faulty:wait_for", {"marker": str(gate)}))
        for _ in range(3)
    ]
    try:
        for thread in callers:
            thread.start()

        def queued():
            _, text = scrape(server.url)
            depth = sample(text, "flowstone_pool_queue_depth", bridge="faulty")
            return text if depth == 2 else None

        text = _wait_for(queued, 60.0)
        assert text, "two calls never showed as queued"
        assert sample(text, "flowstone_pool_workers", bridge="faulty", state="busy") == 1
        assert sample(text, "flowstone_pool_workers", bridge="faulty", state="idle") == 0
    finally:
        gate.touch()
        for thread in callers:
            thread.join(60)
        pool.close()
    _, text = scrape(server.url)
    server.close()
    # a closed pool leaves the live gauges (its counters stay: they are process totals)
    assert sample(text, "flowstone_pool_queue_depth", bridge="faulty") is None
    assert (
        sample(
            text, "flowstone_pool_calls_total", bridge="faulty", command="wait_for", outcome="ok"
        )
        >= 3
    )
