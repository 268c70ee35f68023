"""Fixtures for the approval and notification tests: real servers on 127.0.0.1 only.

- a Slack Web API subset (``chat.postMessage``) over HTTP, with fault injection;
- a real SMTP server (aiosmtpd);
- PostgreSQL: the one on 127.0.0.1:$FLOWSTONE_TEST_PG_PORT (default 5432) if it answers, else a
  throwaway cluster (tests/support/postgres.py, shared with the storage and scale-out tests);
- Debian's chromium + chromium-driver, installed with apt the first time they are missing
  (tests/support/chromium.py, shared with the UI tests).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from support.chromium import chromium_ready_fixture
from support.net import free_port
from support.postgres import running_or_own_server

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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A server URL without database: the machine's PostgreSQL, or one we start ourselves."""
    with running_or_own_server(skip_if_missing=True) as server:
        yield server.url()


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

chromium_ready = chromium_ready_fixture("approvals")
