"""Fixtures for the approval and notification tests: real servers on 127.0.0.1 only.

- a Slack Web API subset (``chat.postMessage``, ``chat.update``, ``chat.postEphemeral``) over
  HTTP, with fault injection;
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
        "FLOWSTONE_SLACK_SIGNING_SECRET",
        "FLOWSTONE_SLACK_USERS",
        "FLOWSTONE_SLACK_API_URL",
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
    """``chat.postMessage``, ``chat.update`` and ``chat.postEphemeral`` as Slack serves them,
    plus switches to break it.

    ``mode``: ``ok``; ``error500`` (HTTP 500); ``ratelimited`` (HTTP 429 + Retry-After).
    ``down()`` closes the listening socket (connection refused); ``up()`` reopens the port.
    Like Slack, a message posted to a channel name is answered with the channel's ID
    (``channel_id()``), and ``chat.update`` finds a message by that ID and its ts only.
    ``updates`` and ``ephemerals`` record the calls of those two methods.
    """

    token = "xoxb-flowstone-test"

    def __init__(self) -> None:
        self.port = free_port()
        self.mode = "ok"
        self.retry_after = 7
        self.messages: list[dict] = []
        self.updates: list[dict] = []
        self.ephemerals: list[dict] = []
        self.channels: dict[str, str] = {}  # name -> ID
        self.requests = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.up()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def channel_id(self, channel: str) -> str:
        """The ID of a channel (names get one on first use; an ID stands for itself)."""
        if channel.startswith("C") and not channel.startswith("#"):
            return channel
        with self._lock:
            return self.channels.setdefault(channel, f"C{len(self.channels) + 1:08d}")

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
                method = self.path.removeprefix("/api/")
                if method not in ("chat.postMessage", "chat.update", "chat.postEphemeral"):
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
                if method == "chat.update":
                    self._reply(200, fake._update(body))
                    return
                channel = fake.channel_id(body["channel"])
                if method == "chat.postEphemeral":
                    if not body.get("user"):
                        self._reply(200, {"ok": False, "error": "user_not_in_channel"})
                        return
                    with fake._lock:
                        fake.ephemerals.append({**body, "channel_id": channel})
                    self._reply(200, {"ok": True, "message_ts": f"{time.time():.6f}"})
                    return
                ts = f"{time.time():.6f}"
                with fake._lock:
                    fake.messages.append({**body, "ts": ts, "channel_id": channel})
                self._reply(200, {"ok": True, "channel": channel, "ts": ts})

        return Handler

    def _update(self, body: dict) -> dict:
        """``chat.update``: the message must exist under that channel ID and ts."""
        with self._lock:
            for message in self.messages:
                if message["channel_id"] == body["channel"] and message["ts"] == body.get("ts"):
                    self.updates.append(body)
                    message.update(
                        {k: v for k, v in body.items() if k in ("text", "blocks")}, edited=True
                    )
                    return {"ok": True, "channel": body["channel"], "ts": body["ts"]}
        return {"ok": False, "error": "message_not_found"}

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
