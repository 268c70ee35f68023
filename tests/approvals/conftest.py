"""Fixtures for the approval and notification tests: real servers on 127.0.0.1 only.

- a Slack Web API subset (``chat.postMessage``) over HTTP, with fault injection;
- a real SMTP server (aiosmtpd);
- PostgreSQL: the one on 127.0.0.1:5432 if it answers, else one started from initdb;
- Debian's chromium + chromium-driver, installed with apt the first time they are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- isolation


@pytest.fixture(autouse=True)
def _isolated_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every default path (instance folder, outputs) inside the test's tmp dir."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("FLOWSTONE_OUTPUTS_DIR", str(tmp_path / "outputs"))
    for name in (
        "FLOWSTONE_APPROVALS_DB_URL",
        "FLOWSTONE_NOTIFICATIONS_DB_URL",
        "FLOWSTONE_APPROVAL_SECRET",
        "FLOWSTONE_APPROVALS_URL",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'approvals.db'}"


@pytest.fixture
def outbox_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'outbox.db'}"


# --------------------------------------------------------------------------- Slack


class FakeSlack:
    """``chat.postMessage`` as Slack serves it, plus switches to break it.

    ``mode``: ``ok``; ``error500`` (HTTP 500); ``ratelimited`` (HTTP 429 + Retry-After).
    ``down()`` closes the listening socket (connection refused); ``up()`` reopens the port.
    """

    token = "xoxb-flowstone-test"

    def __init__(self) -> None:
        self.port = free_port()
        self.mode = "ok"
        self.retry_after = 7
        self.messages: list[dict] = []
        self.requests = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.up()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _reply(self, status: int, body: dict, headers: dict | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                with fake._lock:
                    fake.requests += 1
                if self.path != "/api/chat.postMessage":
                    self._reply(404, {"ok": False, "error": "unknown_method"})
                    return
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    body = json.loads(raw or "{}")
                else:
                    body = {k: v[0] for k, v in parse_qs(raw).items()}
                token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                token = token or body.get("token", "")
                if fake.mode == "error500":
                    self._reply(500, {"ok": False, "error": "internal_error"})
                    return
                if fake.mode == "ratelimited":
                    self._reply(
                        429, {"ok": False, "error": "ratelimited"},
                        {"Retry-After": str(fake.retry_after)},
                    )  # fmt: skip
                    return
                if token != fake.token:
                    self._reply(200, {"ok": False, "error": "invalid_auth"})
                    return
                if not body.get("channel") or not (body.get("text") or body.get("blocks")):
                    self._reply(200, {"ok": False, "error": "no_text"})
                    return
                ts = f"{time.time():.6f}"
                with fake._lock:
                    fake.messages.append({**body, "ts": ts})
                self._reply(200, {"ok": True, "channel": body["channel"], "ts": ts})

        return Handler

    def up(self) -> None:
        if self._server is not None:
            return
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    def keys(self) -> list[str]:
        """The outbox message keys carried in each delivered message's metadata."""
        out = []
        for message in self.messages:
            metadata = message.get("metadata")
            if isinstance(metadata, str):
                metadata = json.loads(metadata)
            out.append(metadata["event_payload"]["key"])
        return out

    def titles(self) -> list[str]:
        return [m["blocks"][0]["text"]["text"] for m in self.messages]


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    slack = FakeSlack()
    yield slack
    slack.down()


# --------------------------------------------------------------------------- SMTP


class SmtpSink:
    def __init__(self) -> None:
        self.envelopes: list = []

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd handler hook
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server() -> Iterator[tuple[str, int, SmtpSink]]:
    from aiosmtpd.controller import Controller

    sink = SmtpSink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield "127.0.0.1", port, sink
    finally:
        controller.stop()


# --------------------------------------------------------------------------- PostgreSQL


def _pg_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server URL without database: the machine's PostgreSQL, or one we start ourselves."""
    if _pg_answers("127.0.0.1", 5432):
        yield "postgresql+psycopg://postgres@127.0.0.1:5432"
        return
    initdb = shutil.which("initdb")
    pg_ctl = shutil.which("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432 and no initdb/pg_ctl to start one")
    data = tmp_path_factory.mktemp("pgdata")
    port = free_port()
    subprocess.run([initdb, "-D", str(data), "-U", "postgres", "-A", "trust"], check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run(
        [pg_ctl, "-D", str(data), "-o", f"-p {port} -k {data} -h 127.0.0.1", "-w", "start"],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([pg_ctl, "-D", str(data), "-m", "fast", "stop"], capture_output=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh database for one test, dropped afterwards."""
    import sqlalchemy as sa

    name = f"flowstone_approvals_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{postgres_server}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# --------------------------------------------------------------------------- Chromium

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _ensure_chromium() -> str | None:
    """Install Debian's chromium + chromium-driver once; return a skip reason if impossible."""
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return None
    apt = shutil.which("apt-get")
    if apt is None:
        return "chromium is missing and apt-get is not available to install it"
    if os.geteuid() != 0:
        return "chromium is missing and installing it with apt-get needs root"
    started = time.monotonic()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        [apt, "update"],
        [apt, "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"],
    ):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            return f"`{' '.join(command)}` failed ({done.returncode}): {done.stderr[-500:]}"
    print(f"\n[approvals] installed chromium + chromium-driver with apt in "
          f"{time.monotonic() - started:.0f}s")  # fmt: skip
    return None


@pytest.fixture(scope="session")
def chromium_ready() -> str:
    reason = _ensure_chromium()
    if reason:
        pytest.skip(reason)
    return CHROMIUM
