"""The pool server's limits on clients: a read timeout and a connection cap, over a real socket."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.polling import wait_for

from flowstone.workers import cli
from flowstone.workers.errors import ServerBusyError
from flowstone.workers.pool import WorkerPool
from flowstone.workers.protocol import FrameReader, StreamClosed
from flowstone.workers.server import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_READ_TIMEOUT_S,
    PoolClient,
    PoolServer,
    _Connection,
)

CLOSED_WITHIN_S = 30.0  # generous: the timeout under test is half a second


def _server(short_tmp: Path, registry_dir: Path, **limits: object) -> PoolServer:
    pool = WorkerPool(bridge="echo", size=1, registry_dir=registry_dir, health_interval_s=None)
    return PoolServer(pool, short_tmp / "l.sock", **limits).start()  # type: ignore[arg-type]


@pytest.fixture
def timed_server(short_tmp: Path, registry_dir: Path) -> Iterator[PoolServer]:
    server = _server(short_tmp, registry_dir, read_timeout_s=0.5)
    yield server
    server.shutdown()


def _raw(server: PoolServer) -> socket.socket:
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(str(server.socket_path))
    raw.settimeout(CLOSED_WITHIN_S)
    return raw


def _frames_until_closed(raw: socket.socket) -> list[dict]:
    """Every frame the server sends before it closes the stream (bounded by CLOSED_WITHIN_S)."""
    reader = FrameReader(raw.fileno())
    frames = []
    deadline = time.monotonic() + CLOSED_WITHIN_S
    while True:
        try:
            frames.append(reader.read(deadline))
        except StreamClosed:
            return frames


def test_a_silent_or_stalled_connection_is_closed_after_the_read_timeout(timed_server):
    silent, stalled = _raw(timed_server), _raw(timed_server)
    with silent, stalled:
        stalled.sendall(b"\x00\x00")  # half a frame header, then nothing
        for raw in (silent, stalled):
            (frame,) = _frames_until_closed(raw)
            assert frame["id"] is None and frame["success"] is False
            assert frame["error"]["type"] == "ServerReadTimeoutError"
            assert "read_timeout_s=0.5s" in frame["error"]["message"]
    assert wait_for(lambda: timed_server.info()["connections"] == 0, timeout=CLOSED_WITHIN_S)


def test_a_client_reconnects_after_its_idle_connection_timed_out(timed_server, monkeypatch):
    with PoolClient(timed_server.socket_path) as client:
        assert client.execute("echo:echo", {"value": 1}) == 1
        assert wait_for(lambda: timed_server.info()["connections"] == 0, timeout=CLOSED_WITHIN_S)
        assert client.execute("echo:echo", {"value": 2}) == 2  # the stale connection was replaced
        # The race: the connection looks fine, and the server closes it as the request goes
        # out. The server's reason says the request was never read: sent again, once.
        assert wait_for(lambda: timed_server.info()["connections"] == 0, timeout=CLOSED_WITHIN_S)
        monkeypatch.setattr(_Connection, "stale", lambda self: False)
        assert client.execute("echo:echo", {"value": 3}) == 3
    assert timed_server.pool.stats()["requests"] == 3


def test_connections_over_the_cap_are_refused_with_a_clear_error(short_tmp, registry_dir):
    server = _server(short_tmp, registry_dir, max_connections=2, read_timeout_s=None)
    try:
        held = [_raw(server), _raw(server)]
        assert wait_for(lambda: server.info()["connections"] == 2)
        with _raw(server) as refused:
            (frame,) = _frames_until_closed(refused)
            assert frame["error"]["type"] == "ServerBusyError"
        started = time.monotonic()
        with (
            PoolClient(server.socket_path) as client,
            pytest.raises(ServerBusyError, match="max_connections") as caught,
        ):
            client.execute("echo:echo", {"value": 1})
        assert time.monotonic() - started < CLOSED_WITHIN_S  # an answer, not a hang
        assert "--max-connections" in str(caught.value)
        held.pop().close()
        assert wait_for(lambda: server.info()["connections"] == 1)
        with PoolClient(server.socket_path) as client:
            assert client.execute("echo:echo", {"value": 2}) == 2
        assert server.info()["refused_connections"] == 2
        for raw in held:
            raw.close()
    finally:
        server.shutdown()


def test_limits_have_documented_defaults_shared_with_the_cli(short_tmp, registry_dir):
    assert (cli.DEFAULT_READ_TIMEOUT_S, cli.DEFAULT_MAX_CONNECTIONS) == (
        DEFAULT_READ_TIMEOUT_S,
        DEFAULT_MAX_CONNECTIONS,
    )
    pool = WorkerPool(bridge="echo", size=1, registry_dir=registry_dir)
    server = PoolServer(pool, short_tmp / "d.sock")
    assert (server.read_timeout_s, server.max_connections) == (300.0, 256)
    assert PoolServer(pool, short_tmp / "d.sock", read_timeout_s=0).read_timeout_s is None
    with pytest.raises(ValueError, match="max_connections"):
        PoolServer(pool, short_tmp / "d.sock", max_connections=0)
