"""Real servers on loopback for the storage tests: PostgreSQL, moto's S3 server, an HTTP API.

PostgreSQL (tests/support/postgres.py): the server on 127.0.0.1:$FLOWSTONE_TEST_PG_PORT
(default 5432) is used when it answers; otherwise PostgreSQL is installed with apt-get (when
running as root and it is missing) and a throwaway cluster is started in a temp folder as the
``postgres`` user (initdb and postgres refuse to run as root) on a free loopback port. Every
test gets its own database.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from support.net import free_port
from support.postgres import PgCluster, PgServer, running_or_own_server, start_cluster_or_skip

# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """host/port/user of a PostgreSQL server: the running one, or our own cluster."""
    with running_or_own_server(skip_if_missing=True) as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A SQLAlchemy URL of a fresh throwaway database, dropped after the test."""
    with pg_server.database("fs_test", digits=12) as name:
        yield pg_server.url(name)


@pytest.fixture(scope="session")
def own_pg_cluster() -> Iterator[PgCluster]:
    """Always our own cluster: the restart test must not restart the shared server."""
    cluster = start_cluster_or_skip()
    try:
        yield cluster
    finally:
        cluster.stop()


# --------------------------------------------------------------------------- S3 (moto)


def s3_client(endpoint: str):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


@pytest.fixture
def s3(moto_endpoint: str):
    """A boto3 client on the moto endpoint."""
    return s3_client(moto_endpoint)


@pytest.fixture
def dead_endpoint() -> str:
    """An S3 endpoint URL where nothing listens (the 'S3 is down' fault)."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def bucket(moto_endpoint: str) -> str:
    name = f"fs-{uuid.uuid4().hex[:10]}"
    s3_client(moto_endpoint).create_bucket(Bucket=name)
    return name


# --------------------------------------------------------------------------- HTTP API


@dataclass
class FakeApi:
    """State of the loopback HTTP API: stored bodies, injected faults, applied writes."""

    objects: dict = field(default_factory=dict)
    faults: list = field(default_factory=list)  # statuses to answer before serving normally
    fail_after_apply: int = 0  # apply the write, then answer 500 this many times
    delay_seconds: float = 0.0
    delay_count: int = 0
    applied: list = field(default_factory=list)
    seen_keys: dict = field(default_factory=dict)
    requests: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(api: FakeApi):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def _reply(self, status: int, body: bytes = b"", ctype: str = "application/json"):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            if status == 429:
                self.send_header("Retry-After", "0")
            self.end_headers()
            # the client may have timed out on purpose (timeout fault)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

        def _fault(self) -> bool:
            with api.lock:
                api.requests.append(
                    (self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
                )
                delay = api.delay_seconds if api.delay_count > 0 else 0
                api.delay_count -= 1 if delay else 0
                status = api.faults.pop(0) if api.faults else None
            if delay:
                time.sleep(delay)
            if status:
                self._reply(status, json.dumps({"error": "injected"}).encode())
                return True
            return False

        def do_GET(self):
            if self._fault():
                return
            stored = api.objects.get(self.path)
            if stored is None:
                self._reply(404, b'{"error":"not found"}')
            else:
                self._reply(200, stored[0], stored[1])

        def _write(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self._fault():
                return
            key = self.headers.get("Idempotency-Key")
            with api.lock:
                if key and key in api.seen_keys:
                    status = api.seen_keys[key]
                else:
                    api.objects[self.path] = (body, self.headers.get("Content-Type", ""))
                    api.applied.append((self.path, key))
                    status = 201
                    if key:
                        api.seen_keys[key] = status
                lost = api.fail_after_apply > 0
                api.fail_after_apply -= 1 if lost else 0
            self._reply(500 if lost else status, b"{}")

        do_PUT = _write
        do_POST = _write

    return Handler


@pytest.fixture
def fake_api() -> Iterator[tuple[str, FakeApi]]:
    api = FakeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", api
    finally:
        server.shutdown()
        server.server_close()
