"""Server mode over a real Unix socket: typed errors, streaming, bad frames, restarts, the CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from worker_helpers import HERE, alive, child_env

from flowstone.workers.errors import (
    RemoteError,
    ServerConnectionError,
    ServerUnavailableError,
    UnknownCommandError,
    WorkerTimeoutError,
)
from flowstone.workers.pool import WorkerPool
from flowstone.workers.protocol import FrameReader, encode_frame
from flowstone.workers.server import PoolClient, PoolServer

FAULTY = "faulty_bridge:FaultyBridge"


@pytest.fixture
def server(short_tmp, registry_dir):
    pool = WorkerPool(
        bridge=FAULTY,
        size=2,
        registry_dir=registry_dir,
        pythonpath=[str(HERE)],
        health_interval_s=None,
    )
    srv = PoolServer(pool, short_tmp / "pool.sock").start()
    yield srv
    srv.shutdown()


def test_client_calls_return_results_and_typed_errors(server):
    with PoolClient(server.socket_path) as client:
        pid = client.execute("faulty:pid")
        assert pid in server.pool.worker_pids()
        with pytest.raises(RemoteError) as caught:
            client.execute("faulty:boom", {"message": "empty prediction"})
        assert (
            caught.value.remote_type == "ValueError" and "in boom" in caught.value.remote_traceback
        )
        with pytest.raises(UnknownCommandError):
            client.execute("faulty:nothing")
        with pytest.raises(WorkerTimeoutError, match="within 0.3s"):
            client.execute("faulty:hang", {"seconds": 20}, timeout=0.3)
        assert client.ping()["pid"] == os.getpid()
        stats = client.stats()
        assert stats["timeouts"] == 1 and stats["server"]["connections"] >= 1
        deadline = time.monotonic() + 60
        while len(client.workers()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # the timed-out worker's replacement is being spawned
        assert len(client.workers()) == 2


def test_streaming_and_sessions_through_the_socket(short_tmp, registry_dir):
    pool = WorkerPool(bridge="echo", size=2, registry_dir=registry_dir, health_interval_s=None)
    with PoolServer(pool, short_tmp / "s.sock") as srv, PoolClient(srv.socket_path) as client:
        assert list(client.execute_stream("echo:count", {"n": 5})) == [0, 1, 2, 3, 4]
        assert client.execute("echo:count", {"n": 2}) == [0, 1]
        client.execute("echo:remember", {"key": "k", "value": 42}, session_id="job-7")
        assert client.execute("echo:recall", {"key": "k"}, session_id="job-7") == 42
        assert client.map("echo:echo", [{"value": i} for i in range(50)], concurrency=3) == list(
            range(50)
        )
        assert len(client._all) <= 3  # connections are reused, not leaked


def test_garbage_and_oversize_frames_get_an_error_and_spare_other_clients(server):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.connect(str(server.socket_path))
        raw.settimeout(5)
        reader = FrameReader(raw.fileno())
        body = b"\x89PNG not json"
        raw.sendall(len(body).to_bytes(4, "big") + body)
        reply = reader.read(time.monotonic() + 5)
        assert reply["success"] is False and reply["error"]["type"] == "MalformedFrameError"
        raw.sendall(encode_frame({"id": 1, "command": "faulty:pid"}))
        assert reader.read(time.monotonic() + 5)["success"] is True  # same connection still works
        raw.sendall(b"\xff\xff\xff\xffGARBAGE")
        reply = reader.read(time.monotonic() + 5)
        assert reply["error"]["type"] == "ProtocolError" and "limit" in reply["error"]["message"]
        assert raw.recv(1) == b""  # the server closed this stream
    with PoolClient(server.socket_path) as client:
        assert client.execute("faulty:pid") in server.pool.worker_pids()


def test_missing_server_is_a_clear_error(short_tmp):
    client = PoolClient(short_tmp / "nobody.sock", connect_timeout_s=0.2)
    with pytest.raises(ServerUnavailableError, match="flowstone pool serve --socket"):
        client.execute("echo:noop")


def test_socket_path_too_long_is_explained(tmp_path):
    with pytest.raises(ValueError, match="Unix sockets allow 107"):
        PoolClient(tmp_path / ("x" * 120) / "pool.sock")


def _serve(socket_path: Path, dagster_home: Path, bridge: str = "echo") -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flowstone.workers.cli",
            "serve",
            "--socket",
            str(socket_path),
            "--bridge",
            bridge,
            "--workers",
            "2",
        ],
        env=child_env(dagster_home),
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stderr.readline()
    assert "workers ready" in line, line
    return proc


@pytest.mark.slow  # starts real pool servers (CLI processes)
def test_server_restart_while_a_client_is_connected(short_tmp, tmp_path):
    sock = short_tmp / "r.sock"
    first = _serve(sock, tmp_path)
    client = PoolClient(sock, connect_timeout_s=10)
    try:
        assert client.execute("echo:echo", {"value": 1}) == 1
        errors = []

        def long_call():
            try:
                client.execute("echo:sleep", {"seconds": 120})
            except Exception as exc:
                errors.append(exc)

        caller = threading.Thread(target=long_call)
        caller.start()
        with PoolClient(sock, connect_timeout_s=10) as observer:  # wait until it is mid-call
            deadline = time.monotonic() + 60
            while observer.stats()["workers_busy"] < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert observer.stats()["workers_busy"] == 1
        first.kill()  # the server dies hard mid-call; its workers die with it
        first.wait()
        caller.join(60)
        assert not caller.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], ServerConnectionError)
        assert "next call reconnects" in str(errors[0])
        second = _serve(sock, tmp_path)  # replaces the stale socket file
        try:
            assert client.execute("echo:echo", {"value": 2}) == 2  # reconnected
            second.terminate()  # graceful restart between calls: the idle connection is stale
            second.wait(60)
            third = _serve(sock, tmp_path)
            try:
                assert client.execute("echo:echo", {"value": 3}) == 3
            finally:
                third.terminate()
                third.wait(60)
        finally:
            second.kill()
            second.wait()
    finally:
        client.close()
        first.kill()
        first.wait()


@pytest.mark.slow  # starts real pool servers (CLI processes)
def test_cli_status_stats_and_stop(short_tmp, tmp_path):
    sock = short_tmp / "c.sock"
    proc = _serve(sock, tmp_path)
    env = child_env(tmp_path)
    cli = [sys.executable, "-m", "flowstone.workers.cli"]
    try:
        PoolClient(sock).execute("echo:noop")
        status = subprocess.run(
            [*cli, "status", "--socket", str(sock)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        assert "echo pool on" in status.stdout and "idle" in status.stdout
        stats = subprocess.run(
            [*cli, "stats", "--socket", str(sock)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        import json

        payload = json.loads(stats.stdout)
        assert payload["requests"] == 1 and len(payload["workers"]) == 2
        pids = [w["pid"] for w in payload["workers"]]
        stop = subprocess.run(
            [*cli, "stop", "--socket", str(sock)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert stop.returncode == 0 and "stopping pool server" in stop.stdout
        assert proc.wait(timeout=60) == 0
        assert not sock.exists()
        assert not any(alive(p) for p in pids)
        missing = subprocess.run(
            [*cli, "status", "--socket", str(sock)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert missing.returncode == 1 and "no FlowStone pool server" in missing.stderr
    finally:
        proc.kill()
        proc.wait()
