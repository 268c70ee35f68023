"""Real servers on loopback for the storage tests: PostgreSQL, moto's S3 server, an HTTP API.

PostgreSQL: the server on 127.0.0.1:$FLOWSTONE_TEST_PG_PORT (default 5432) is used when it
answers; otherwise PostgreSQL is installed with apt-get (when running as root and it is
missing) and a throwaway cluster is started in a temp folder as the ``postgres`` user (initdb
and postgres refuse to run as root) on a free loopback port. Every test gets its own database.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- PostgreSQL


def _pg_bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found and shutil.which("initdb"):
        found = [shutil.which("initdb")]
    if not found:
        if os.geteuid() != 0:
            pytest.skip("PostgreSQL is not installed and we are not root to apt-get it")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "postgresql"],
            check=True,
            env=env,
            capture_output=True,
        )
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).resolve().parent


@dataclass
class PgCluster:
    """A throwaway PostgreSQL cluster in a temp folder, run as the postgres user."""

    port: int = field(default_factory=free_port)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fs-pg-")))
    host: str = "127.0.0.1"
    user: str = "postgres"

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = list(args)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> PgCluster:
        bin_dir = _pg_bin_dir()
        self.pg_ctl = str(bin_dir / "pg_ctl")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        data = self.root / "data"
        self._run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")  # fmt: skip
        self.data = data
        self._ctl("start")
        return self

    def _ctl(self, action: str) -> None:
        opts = f"-p {self.port} -h 127.0.0.1 -k {self.root} -c fsync=off -c full_page_writes=off"
        self._run(self.pg_ctl, "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"),
                  "-w", "-t", "60", action)  # fmt: skip

    def restart(self) -> None:
        self._ctl("restart")

    def stop(self) -> None:
        try:
            self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[dict]:
    """host/port/user of a PostgreSQL server: the running one, or our own cluster."""
    port = int(os.environ.get("FLOWSTONE_TEST_PG_PORT", "5432"))
    if reachable("127.0.0.1", port):
        yield {"host": "127.0.0.1", "port": port, "user": "postgres", "own": False}
        return
    cluster = PgCluster().start()
    try:
        yield {"host": cluster.host, "port": cluster.port, "user": cluster.user, "own": True}
    finally:
        cluster.stop()


def _admin(server: dict, sql: str) -> None:
    import psycopg

    with psycopg.connect(
        host=server["host"], port=server["port"], user=server["user"], dbname="postgres",
        autocommit=True,
    ) as conn:  # fmt: skip
        conn.execute(sql)


@pytest.fixture
def pg_url(pg_server: dict) -> Iterator[str]:
    """A SQLAlchemy URL of a fresh throwaway database, dropped after the test."""
    name = f"fs_test_{uuid.uuid4().hex[:12]}"
    _admin(pg_server, f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://{pg_server['user']}@{pg_server['host']}:{pg_server['port']}/{name}"
    _admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def own_pg_cluster() -> Iterator[PgCluster]:
    """Always our own cluster: the restart test must not restart the shared server."""
    cluster = PgCluster().start()
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
