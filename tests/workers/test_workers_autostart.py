"""The host's shared pool, started on demand: found or started once, reused, stopped when idle,
off by FLOWSTONE_POOL=off, and a failed start is one warning and in-process scores.

Every test here that starts a server does so under its own short DAGSTER_HOME with an idle
timeout, and kills what it started (found by that unique socket path) when it ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import dagster as dg
import psutil
import pytest
from worker_helpers import alive

from flowstone.errors import ConfigError
from flowstone.evaluation.metrics import METRICS, Metric
from flowstone.workers.autostart import AutoPool, AutoPoolError, auto_pool_setting
from flowstone.workers.pool import WorkerPool
from flowstone.workers.server import PoolClient, PoolServer, default_socket_path
from resources.worker_pool import PythonWorkerPoolResource

FAST_SERVER = {"bridge_options": {}}  # no encoder preload: the server starts in a second


def _servers_on(socket_path: Path) -> list[psutil.Process]:
    """Processes serving ``socket_path`` (a path unique to the test), wherever their parent."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(str(socket_path) == part for part in proc.info["cmdline"] or ()):
                found.append(proc)
    return found


def _kill(processes: list[psutil.Process]) -> None:
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            proc.kill()  # its workers follow (parent-death signal)
    psutil.wait_procs(processes, timeout=10)


@pytest.fixture
def auto_home(short_tmp: Path, monkeypatch: pytest.MonkeyPatch):
    """A short DAGSTER_HOME with the shared pool on; kills any server started under it."""
    home = short_tmp / "h"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("FLOWSTONE_POOL", "on")
    monkeypatch.setenv("FLOWSTONE_POOL_IDLE_TIMEOUT", "120")  # nothing outlives a dead test long
    monkeypatch.delenv("FLOWSTONE_POOL_SOCKET", raising=False)
    monkeypatch.delenv("FLOWSTONE_EXECUTOR", raising=False)
    yield home
    _kill(_servers_on(home / "pool" / "metrics.sock"))


@pytest.fixture
def fake_heavy(monkeypatch: pytest.MonkeyPatch) -> str:
    """A cheap metric marked heavy, so that falling back in-process loads no encoder."""

    def overlap(predictions, references) -> list[float]:
        return [float(p == r) for p, r in zip(predictions, references, strict=True)]

    monkeypatch.setitem(METRICS, "fake_heavy", Metric("fake_heavy", overlap, "test", heavy=True))
    return "fake_heavy"


def _resource(**config) -> PythonWorkerPoolResource:
    resource = PythonWorkerPoolResource(**config)
    resource.setup_for_execution(dg.build_init_resource_context())
    return resource


# The setting and the default socket -----------------------------------------------------------


def test_setting_default_socket_and_its_short_fallback(monkeypatch, tmp_path):
    assert auto_pool_setting({}).enabled
    assert auto_pool_setting({"FLOWSTONE_POOL": "on"}).enabled
    off = auto_pool_setting({"FLOWSTONE_POOL": "off"})
    assert not off.enabled and off.detail == "off (FLOWSTONE_POOL=off)"
    scale_out = auto_pool_setting({"FLOWSTONE_EXECUTOR": "celery"})
    assert not scale_out.enabled and "FLOWSTONE_POOL_SOCKET" in scale_out.detail
    assert auto_pool_setting({"FLOWSTONE_EXECUTOR": "k8s", "FLOWSTONE_POOL": "on"}).enabled
    with pytest.raises(ConfigError, match="FLOWSTONE_POOL"):
        auto_pool_setting({"FLOWSTONE_POOL": "sometimes"})

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert default_socket_path() == tmp_path / "home" / "pool" / "metrics.sock"
    deep = tmp_path / ("d" * 120)
    monkeypatch.setenv("DAGSTER_HOME", str(deep))
    fallback = default_socket_path()
    assert fallback.parent.parent == Path("/tmp") and fallback.name == "metrics.sock"
    assert len(str(fallback)) < 108 and fallback == default_socket_path()  # stable per folder
    monkeypatch.setenv("DAGSTER_HOME", str(deep) + "x")
    assert default_socket_path() != fallback


# The idle timeout ----------------------------------------------------------------------------


def test_idle_server_stops_itself_and_removes_its_socket(short_tmp, registry_dir):
    pool = WorkerPool(bridge="echo", size=1, registry_dir=registry_dir, health_interval_s=None)
    server = PoolServer(pool, short_tmp / "idle.sock", idle_timeout_s=1.0).start()
    try:
        with PoolClient(server.socket_path) as client:
            assert client.execute("echo:echo", {"value": 7}) == 7
            assert 0 < client.stats()["server"]["idle_remaining_s"] <= 1.0
        assert server.wait(30), "the idle server did not stop"
        assert server.stop_reason == "idle"
        assert not server.socket_path.exists()
        assert pool.closed
    finally:
        server.shutdown()


@pytest.mark.slow
def test_a_connected_client_keeps_the_server_and_stats_do_not(short_tmp, registry_dir):
    pool = WorkerPool(bridge="echo", size=1, registry_dir=registry_dir, health_interval_s=None)
    server = PoolServer(pool, short_tmp / "busy.sock", idle_timeout_s=1.0).start()
    try:
        with PoolClient(server.socket_path) as client:
            client.execute("echo:echo", {"value": 1})
            assert not server.wait(2.5), "stopped while a client that made calls was connected"
            assert client.execute("echo:echo", {"value": 2}) == 2
        with PoolClient(server.socket_path) as looker:  # only looks: the idle clock keeps going
            for _ in range(100):
                with contextlib.suppress(Exception):
                    looker.stats()
                if server.wait(0.1):
                    break
        assert server.wait(30) and server.stop_reason == "idle"
    finally:
        server.shutdown()


# Finding and starting ------------------------------------------------------------------------


def test_first_use_starts_the_server_later_uses_reuse_it_and_it_stops_when_idle(
    auto_home, monkeypatch
):
    monkeypatch.setenv("FLOWSTONE_POOL_IDLE_TIMEOUT", "2")
    auto = AutoPool.from_env(**FAST_SERVER)
    assert auto.socket_path == auto_home / "pool" / "metrics.sock"
    first = auto.ensure()
    assert first["started"] and first["bridge"] == "metrics" and first["idle_timeout_s"] == 2
    assert first["size"] == 1  # one warm worker by default
    second = AutoPool.from_env(**FAST_SERVER).ensure()
    assert not second["started"] and second["pid"] == first["pid"]
    assert [p.pid for p in _servers_on(auto.socket_path)] == [first["pid"]]
    assert "starts:" in auto.log_path.read_text()
    psutil.Process(first["pid"]).wait(60)  # idle for 2 s: it stops by itself
    assert not auto.socket_path.exists()
    assert "stopped after 2s idle" in auto.log_path.read_text()


_RACER = """
import json, sys
from flowstone.workers.autostart import AutoPool
info = AutoPool.from_env(bridge_options={}).ensure()
print(json.dumps({"pid": info["pid"], "started": info["started"]}))
"""


def test_two_runs_starting_at_once_start_one_server(auto_home):
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
        )
        for _ in range(2)
    ]
    outputs = [json.loads(proc.communicate(timeout=120)[0]) for proc in racers]
    assert sorted(o["started"] for o in outputs) == [False, True]
    assert outputs[0]["pid"] == outputs[1]["pid"]
    socket_path = auto_home / "pool" / "metrics.sock"
    assert [p.pid for p in _servers_on(socket_path)] == [outputs[0]["pid"]]
    assert (auto_home / "pool" / "metrics.log").read_text().count("starts:") == 1


def test_a_server_that_dies_at_once_is_an_error_and_not_retried_at_once(auto_home):
    auto = AutoPool.from_env(command=[sys.executable, "-c", "print('no pool today'); exit(3)"])
    with pytest.raises(AutoPoolError, match="exited with status 3") as caught:
        auto.ensure()
    assert "no pool today" in str(caught.value)
    with pytest.raises(AutoPoolError, match="failed to start .* the next try is in"):
        auto.ensure()  # within retry_after_s: no second spawn, no second wait
    assert auto.log_path.read_text().count("starts:") == 1
    assert auto.last_failure() is not None


def test_a_server_with_another_bridge_on_the_socket_is_not_used(auto_home, registry_dir):
    pool = WorkerPool(bridge="echo", size=1, registry_dir=registry_dir, health_interval_s=None)
    with (
        PoolServer(pool, default_socket_path()),
        pytest.raises(AutoPoolError, match="'echo' bridge, not 'metrics'"),
    ):
        AutoPool.from_env().ensure()


# The resource --------------------------------------------------------------------------------


def test_light_metrics_and_pool_off_start_nothing(auto_home, fake_heavy, monkeypatch):
    socket_path = auto_home / "pool" / "metrics.sock"
    auto = _resource(**FAST_SERVER)
    assert auto.mode == "auto"  # nothing started at set-up
    assert auto.compute_metric("exact_match", ["a", "b"], ["a", "c"]) == [1.0, 0.0]
    assert auto.mode == "auto" and not socket_path.exists()  # a light metric needs no pool

    monkeypatch.setenv("FLOWSTONE_POOL", "off")
    off = _resource(**FAST_SERVER)
    assert off.mode == "in_process"
    assert off.compute_metric(fake_heavy, ["a", "b"], ["a", "c"]) == [1.0, 0.0]
    assert not socket_path.exists() and not _servers_on(socket_path)
    monkeypatch.setenv("FLOWSTONE_POOL", "on")
    assert _resource(auto_pool=False).mode == "in_process"


scored: dict[str, object] = {}


@dg.asset
def pooled_scores(worker_pool: PythonWorkerPoolResource) -> dg.MaterializeResult:
    scored["first"] = worker_pool.compute_metric("fake_heavy", ["a", "b"], ["a", "c"])
    scored["second"] = worker_pool.compute_metric("fake_heavy", ["x"], ["x"])
    scored["light"] = worker_pool.compute_metric("exact_match", ["a"], ["a"])
    scored["mode"] = worker_pool.mode
    return dg.MaterializeResult(metadata={"mode": worker_pool.mode})


def test_a_pool_that_cannot_start_is_one_warning_and_in_process_scores(auto_home, fake_heavy):
    (auto_home / "pool").write_text("a file where the pool folder should be")
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [pooled_scores],
        resources={"worker_pool": PythonWorkerPoolResource(**FAST_SERVER)},
        instance=instance,
    )
    assert result.success
    assert scored == {"first": [1.0, 0.0], "second": [1.0], "light": [1.0], "mode": "in_process"}
    warnings = [
        entry.user_message
        for entry in instance.all_logs(result.run_id)
        if entry.level == logging.WARNING and "worker pool:" in entry.user_message
    ]
    assert len(warnings) == 1, warnings
    assert "cannot create the pool server's folder" in warnings[0]
    assert "scoring in this step's process instead" in warnings[0]


def test_a_server_that_dies_while_starting_falls_back_without_a_context(
    auto_home, fake_heavy, caplog
):
    """No Dagster context: the one warning goes to logging. The real server command dies at
    once: a plain file sits where its socket goes."""
    (auto_home / "pool").mkdir()
    (auto_home / "pool" / "metrics.sock").write_text("not a socket")
    resource = PythonWorkerPoolResource(**FAST_SERVER)
    resource._mode, resource._auto = "auto", True  # as set-up leaves it, without a context
    with caplog.at_level(logging.WARNING, logger="resources.worker_pool"):
        assert resource.compute_metric("fake_heavy", ["a"], ["a"]) == [1.0]
        assert resource.compute_metric("fake_heavy", ["a"], ["b"]) == [0.0]
    messages = [r.getMessage() for r in caplog.records if "worker pool:" in r.getMessage()]
    assert len(messages) == 1 and "exited with status 1" in messages[0], messages
    assert "is not a socket" in messages[0]  # the end of the server's log
    assert resource.mode == "in_process"


# With the real encoder -----------------------------------------------------------------------


@pytest.mark.slow
def test_two_runs_race_on_embedding_similarity_and_the_next_run_reuses_the_server(auto_home):
    """Two resources (two runs) need the encoder at once: one server starts, both score on it;
    a third run finds it warm."""
    predictions, references = ["a cat sat", "it rains"], ["a cat was sitting", "stock prices"]
    runs = [_resource() for _ in range(2)]
    results: dict[int, list[float]] = {}

    def score(i: int) -> None:
        results[i] = runs[i].compute_metric("embedding_similarity", predictions, references)

    threads = [threading.Thread(target=score, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert [run.mode for run in runs] == ["server", "server"]
    assert results[0] == pytest.approx(results[1])
    assert results[0][0] > results[0][1] and all(0 <= s <= 1 for s in results[0])
    socket_path = auto_home / "pool" / "metrics.sock"
    servers = _servers_on(socket_path)
    assert len(servers) == 1
    assert (auto_home / "pool" / "metrics.log").read_text().count("starts:") == 1

    later = _resource()
    assert later.compute_metric("embedding_similarity", predictions, references) == pytest.approx(
        results[0]
    )
    assert later.stats()["server"]["pid"] == servers[0].pid
    for run in (*runs, later):
        run.teardown_after_execution(dg.build_init_resource_context())
    assert alive(servers[0].pid)  # the runs ended; the server stays for the next one
