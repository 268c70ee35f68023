"""SQL plumbing shared by FlowStone's own tables (approvals, the notification outbox, telemetry).

Why one module: each of those stores needs the same three things and had grown its own copy of
them: an engine that behaves under concurrent processes (SQLite waits for a lock instead of
failing at once, PostgreSQL reconnects after a server restart), a schema creation that
processes starting together on an empty PostgreSQL database do not collide in, and datetimes
that come back timezone-aware (SQLite returns them naive; everything stored here is UTC).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, overload

import sqlalchemy as sa

SQLITE_BUSY_TIMEOUT_S = 30
SCHEMA_ATTEMPTS = 3


def normalize_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (SQLAlchemy's default driver is psycopg2)."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def engine_for(url: str, *, wal: bool = False) -> sa.Engine:
    """An engine for ``url``: SQLite waits up to 30 s for a lock held by another process
    (``wal=True`` also switches the file to write-ahead logging, so readers do not block the
    writer); PostgreSQL checks a pooled connection before use, so a restarted server costs a
    reconnect rather than an error. Creating it connects to nothing."""
    url = normalize_url(url)
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    # pysqlite's timeout is SQLite's busy timeout
    engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
    if wal:

        @sa.event.listens_for(engine, "connect")
        def _write_ahead_log(dbapi_connection: Any, _record: Any) -> None:
            enable_write_ahead_log(dbapi_connection)

    return engine


def enable_write_ahead_log(
    connection: sqlite3.Connection, timeout_s: float = SQLITE_BUSY_TIMEOUT_S
) -> None:
    """Switch a SQLite file to WAL, waiting for other connections as the busy timeout would.

    While another connection (another process opening the same new file) holds a write lock on
    a file not yet in WAL mode, SQLite fails the switch at once with "database is locked"
    instead of calling its busy handler. The mode is stored in the file, so only connections
    that open a new file together meet this.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(0.01)


def create_schema(
    engine: sa.Engine,
    metadata: sa.MetaData,
    *,
    lock_key: int,
    extra: Callable[[sa.Connection], None] | None = None,
) -> None:
    """Create ``metadata``'s missing tables and indexes, then run ``extra`` (triggers and the
    like), in one transaction.

    On PostgreSQL the transaction first takes the advisory lock ``lock_key`` (one number per
    store): processes that start at once on an empty database (daemon, run workers on other
    hosts, the web page) would otherwise all see no table and collide in CREATE TABLE (a
    pg_type unique violation). SQLite has no such lock: a process that loses the same race
    fails its CREATE and tries again, finding the table the winner made.
    """
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            with engine.begin() as conn:
                if engine.dialect.name == "postgresql":
                    conn.execute(
                        sa.text("SELECT pg_advisory_xact_lock(CAST(:key AS BIGINT))"),
                        {"key": lock_key},
                    )
                metadata.create_all(conn)
                if extra is not None:
                    extra(conn)
            return
        except (sa.exc.OperationalError, sa.exc.IntegrityError, sa.exc.ProgrammingError):
            if engine.dialect.name == "postgresql" or attempt == SCHEMA_ATTEMPTS - 1:
                raise


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC: the only kind of datetime these tables hold."""
    return datetime.now(UTC)


@overload
def aware(value: datetime) -> datetime: ...


@overload
def aware(value: None) -> None: ...


def aware(value: datetime | None) -> datetime | None:
    """``value`` as stored, made aware: SQLite hands datetimes back naive, and they are UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def display_url(url: str) -> str:
    """``url`` without its password, for log lines and error messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<database>"
