"""A durable outbox: notifications are written first and delivered after, with retries.

Writing a row is what "notify" means; delivering is a separate step that any process may run
(a sensor tick, the CLI). A row is claimed with a lease before sending and marked sent right
after, so a restart never resends what was delivered, and a delivery that failed (Slack down,
SMTP refusing) waits with exponential backoff (or the server's Retry-After) and is tried
again until it goes through. Repeats of the same fact (``dedup_key``) inside a window are
counted on the first row instead of being sent again.

The one window that cannot be closed: a crash after the server accepted a message and before
the row is marked sent. That row is resent once its lease runs out (Slack and SMTP have no
idempotency key); email carries a stable Message-ID so mail systems collapse the copy.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa

from flowstone.notifications.channels import Channel, DeliveryError
from flowstone.notifications.events import Notification
from flowstone.paths import instance_dir
from flowstone.storage.sql import aware, create_schema, display_url, engine_for, utcnow
from flowstone.telemetry import metrics

log = logging.getLogger("flowstone.notifications")

SCHEMA_LOCK_KEY = 7261540002  # the PostgreSQL advisory lock held while creating the table

metadata = sa.MetaData()

outbox_table = sa.Table(
    "flowstone_outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("dedup_key", sa.String(512)),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending | sending | sent
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("duplicates", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("lease_until", sa.DateTime(timezone=True)),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    sa.Column("receipt", sa.String(256)),
    sa.Column("last_error", sa.Text),
    sa.Index("ix_outbox_due", "state", "next_attempt_at"),
    sa.Index("ix_outbox_dedup", "channel", "dedup_key", "created_at"),
)


@functools.lru_cache(maxsize=32)
def _engine_with_schema(url: str) -> sa.Engine:
    """One engine and one schema check per URL and process (sensors build outboxes per tick)."""
    engine = engine_for(url)
    create_schema(engine, metadata, lock_key=SCHEMA_LOCK_KEY)
    return engine


@functools.lru_cache(maxsize=32)
def _read_engine(url: str) -> sa.Engine:
    """An engine that creates nothing: reading the backlog must not make a database appear."""
    return engine_for(url)


def default_outbox_url() -> str:
    url = os.environ.get("FLOWSTONE_NOTIFICATIONS_DB_URL")
    if url:
        return url
    folder: Path = instance_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'flowstone_outbox.db'}"


@dataclass(frozen=True)
class Backoff:
    """Delay before attempt n+1: base * 2**(n-1), capped, with +-20% jitter."""

    base_seconds: float = 30.0
    max_seconds: float = 1800.0

    def delay(self, attempts: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return max(retry_after, 0.0)
        raw = min(self.max_seconds, self.base_seconds * 2 ** max(attempts - 1, 0))
        return raw * random.uniform(0.8, 1.2)


@dataclass(frozen=True)
class OutboxRow:
    id: int
    channel: str
    kind: str
    dedup_key: str | None
    notification: Notification
    state: str
    attempts: int
    duplicates: int
    created_at: datetime
    next_attempt_at: datetime
    sent_at: datetime | None
    receipt: str | None
    last_error: str | None

    @property
    def message_key(self) -> str:
        return f"flowstone-outbox-{self.id}"


@dataclass
class FlushReport:
    sent: int = 0
    failed: int = 0
    still_due: int = 0


class Outbox:
    """The outbox table plus the send loop over a set of channels."""

    def __init__(
        self,
        url: str | None = None,
        backoff: Backoff | None = None,
        lease_seconds: float = 120.0,
        duplicate_window: timedelta = timedelta(hours=1),
    ):
        self.url = url or default_outbox_url()
        self.engine = _engine_with_schema(self.url)
        self.backoff = backoff or Backoff()
        self.lease = timedelta(seconds=lease_seconds)
        self.duplicate_window = duplicate_window

    # ------------------------------------------------------------------ enqueue

    def enqueue(
        self, notification: Notification, channels: Sequence[str], now: datetime | None = None
    ) -> list[int]:
        """Store one row per channel; returns the new row ids (empty when suppressed)."""
        now = now or utcnow()
        ids: list[int] = []
        written: list[tuple[str, bool]] = []  # (channel, suppressed), counted once committed
        with self.engine.begin() as conn:
            for channel in channels:
                if notification.dedup_key and self._suppress(conn, channel, notification, now):
                    written.append((channel, True))
                    continue
                result = conn.execute(
                    outbox_table.insert().values(
                        channel=channel,
                        kind=notification.kind,
                        dedup_key=notification.dedup_key,
                        payload=notification.to_json(),
                        state="pending",
                        attempts=0,
                        duplicates=0,
                        created_at=now,
                        next_attempt_at=now,
                    )
                )
                key = result.inserted_primary_key
                if key is None:  # SQLAlchemy gives one for every single-row INSERT
                    raise RuntimeError(f"outbox insert for channel {channel!r} returned no row id")
                ids.append(int(key[0]))
                written.append((channel, False))
        for channel, suppressed in written:
            metrics.outbox_enqueued(channel, suppressed)
        return ids

    def _suppress(
        self, conn: sa.Connection, channel: str, notification: Notification, now: datetime
    ) -> bool:
        earlier = conn.execute(
            sa.select(outbox_table.c.id)
            .where(
                outbox_table.c.channel == channel,
                outbox_table.c.dedup_key == notification.dedup_key,
                outbox_table.c.created_at >= now - self.duplicate_window,
            )
            .order_by(outbox_table.c.id.desc())
            .limit(1)
        ).scalar()
        if earlier is None:
            return False
        conn.execute(
            outbox_table.update()
            .where(outbox_table.c.id == earlier)
            .values(duplicates=outbox_table.c.duplicates + 1)
        )
        log.info(
            "notification %s for %s suppressed: same as outbox row %s within %s",
            notification.dedup_key, channel, earlier, self.duplicate_window,
        )  # fmt: skip
        return True

    # ------------------------------------------------------------------ deliver

    def flush(
        self,
        channels: Mapping[str, Channel],
        now: datetime | None = None,
        limit: int = 100,
        time_budget_seconds: float = 20.0,
    ) -> FlushReport:
        """Deliver due rows for the given channels, oldest first, within a time budget.

        A channel that fails is not tried again in the same flush (its later rows just wait),
        so a Slack outage costs one timeout per flush rather than one per message.
        """
        report = FlushReport()
        started = time.monotonic()
        broken: set[str] = set()
        for row in self.due(channels.keys(), now=now, limit=limit):
            if row.channel in broken or time.monotonic() - started > time_budget_seconds:
                report.still_due += 1
                continue
            at = now or utcnow()
            if not self._claim(row.id, at):
                continue  # another process is sending it
            try:
                receipt = channels[row.channel].send(row.notification, row.message_key)
            except DeliveryError as exc:
                broken.add(row.channel)
                self._failed(row, exc, at)
                metrics.outbox_delivery(row.channel, ok=False, retry=row.attempts > 0)
                report.failed += 1
                continue
            self._sent(row.id, receipt, now or utcnow())
            metrics.outbox_delivery(row.channel, ok=True, retry=row.attempts > 0)
            report.sent += 1
        return report

    def due(
        self, channels: Iterable[str] | None = None, now: datetime | None = None, limit: int = 100
    ) -> list[OutboxRow]:
        now = now or utcnow()
        query = sa.select(outbox_table).where(
            sa.or_(
                sa.and_(outbox_table.c.state == "pending", outbox_table.c.next_attempt_at <= now),
                sa.and_(outbox_table.c.state == "sending", outbox_table.c.lease_until < now),
            )
        )
        if channels is not None:
            query = query.where(outbox_table.c.channel.in_(list(channels)))
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(outbox_table.c.id).limit(limit)).mappings().all()
        return [self._row(r) for r in rows]

    def rows(self, state: str | None = None) -> list[OutboxRow]:
        query = sa.select(outbox_table).order_by(outbox_table.c.id)
        if state is not None:
            query = query.where(outbox_table.c.state == state)
        with self.engine.connect() as conn:
            return [self._row(r) for r in conn.execute(query).mappings().all()]

    def _claim(self, row_id: int, now: datetime) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(
                outbox_table.update()
                .where(
                    outbox_table.c.id == row_id,
                    sa.or_(
                        sa.and_(
                            outbox_table.c.state == "pending",
                            outbox_table.c.next_attempt_at <= now,
                        ),
                        sa.and_(
                            outbox_table.c.state == "sending", outbox_table.c.lease_until < now
                        ),
                    ),
                )
                .values(
                    state="sending",
                    lease_until=now + self.lease,
                    attempts=outbox_table.c.attempts + 1,
                )
            )
        return result.rowcount == 1

    def _sent(self, row_id: int, receipt: str, now: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                outbox_table.update()
                .where(outbox_table.c.id == row_id)
                .values(state="sent", sent_at=now, receipt=receipt[:256], lease_until=None)
            )

    def _failed(self, row: OutboxRow, exc: DeliveryError, now: datetime) -> None:
        attempts = row.attempts + 1
        delay = self.backoff.delay(attempts, exc.retry_after)
        log.warning(
            "notification outbox row %s (%s via %s) failed on attempt %s, next try in %.0fs: %s",
            row.id, row.kind, row.channel, attempts, delay, exc,
        )  # fmt: skip
        with self.engine.begin() as conn:
            conn.execute(
                outbox_table.update()
                .where(outbox_table.c.id == row.id)
                .values(
                    state="pending",
                    lease_until=None,
                    last_error=str(exc)[:4000],
                    next_attempt_at=now + timedelta(seconds=delay),
                )
            )

    @staticmethod
    def _row(r: Mapping) -> OutboxRow:
        return OutboxRow(
            id=r["id"],
            channel=r["channel"],
            kind=r["kind"],
            dedup_key=r["dedup_key"],
            notification=Notification.from_json(r["payload"]),
            state=r["state"],
            attempts=r["attempts"],
            duplicates=r["duplicates"],
            created_at=aware(r["created_at"]),
            next_attempt_at=aware(r["next_attempt_at"]),
            sent_at=aware(r["sent_at"]),
            receipt=r["receipt"],
            last_error=r["last_error"],
        )


# ---------------------------------------------------------------------- backlog


class ChannelBacklog(NamedTuple):
    """Undelivered rows of one channel: what an operator alerts on."""

    pending: int  # not yet delivered (pending, or being sent)
    retrying: int  # of those, rows that failed at least once and wait for another attempt
    oldest_created_at: datetime | None  # when the oldest of them was written


def pending_counts(url: str | None = None) -> dict[str, ChannelBacklog]:
    """The backlog of every channel the outbox has seen, zeros included (an alert on
    ``pending > 0`` needs a 0, not a missing series), by channel name.

    Why public: the metrics exporter reads it at each scrape, because the rows outlive the
    processes that wrote and deliver them. Reads only: a database or table that does not exist
    yet means nothing was ever queued, and is left uncreated. Both queries can use the table's
    indexes (channel..., state...).
    """
    url = url or default_outbox_url()
    if url.startswith("sqlite:///") and not os.path.exists(url[len("sqlite:///") :]):
        return {}
    engine = _read_engine(url)
    table = outbox_table
    channels = sa.select(table.c.channel).distinct()
    query = (
        sa.select(
            table.c.channel,
            sa.func.count(),
            sa.func.sum(sa.case((table.c.attempts > 0, 1), else_=0)),
            sa.func.min(table.c.created_at),
        )
        .where(table.c.state != "sent")
        .group_by(table.c.channel)
    )
    try:
        with engine.connect() as conn:
            known = [row[0] for row in conn.execute(channels)]
            unsent: dict[str, tuple[Any, Any, Any]] = {
                row[0]: (row[1], row[2], row[3]) for row in conn.execute(query)
            }
    except sa.exc.DBAPIError:
        if not sa.inspect(engine).has_table(table.name):
            return {}  # nothing was ever queued here
        raise
    backlog: dict[str, ChannelBacklog] = {}
    for channel in sorted(known):
        count, failed, first = unsent.get(channel, (0, 0, None))
        backlog[channel] = ChannelBacklog(int(count), int(failed or 0), aware(first))
    return backlog


def backlog_gauges(url: str | None = None) -> metrics.OutboxCollector:
    """The exporter's outbox gauges over the database at ``url`` (default: this outbox's).

    Why here: telemetry owns the gauges and the outbox owns its table; the outbox already
    calls telemetry's hooks, so it is the side that binds the two. ``flowstone metrics serve``
    gets this function registered by the CLI (``flowstone/cli.py``).
    """
    url = url or default_outbox_url()
    return metrics.OutboxCollector(functools.partial(pending_counts, url), display_url(url))
