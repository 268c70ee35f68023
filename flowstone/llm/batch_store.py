"""The durable record of submitted provider batches: which batch answers which partition.

Why a table: the step that submits a batch ends at once, and the sensor that polls it runs in
another process (the daemon), maybe on another host, hours later. Both read and write this
record. It holds each batch's requests too, so an expired batch can be sent again without
the step, and what a batch cost, so the run that materializes the partition can show it.

The table lives in the instance folder (SQLite, beside the response cache) unless
``FLOWSTONE_LLM_BATCHES_DB_URL`` names a database (the instance's PostgreSQL) that every host
reaches. A record's ``state``:

- ``pending``: submitted, the provider is working on it;
- ``collected``: ended, its answers are in the response cache; the sensor launches the run;
- ``consumed``: the partition was materialized from it (its cost was shown there);
- ``resubmitted``: expired, its unanswered requests went out again as a new record;
- ``failed``: refused, or expired a second time; reported, never sent again on its own;
- ``cancelled``: replaced before it ended (the system's prompts changed).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from flowstone.llm.batch_api import BatchRequest
from flowstone.paths import instance_dir
from flowstone.storage.sql import aware, create_schema, engine_for, utcnow

BATCHES_DB_ENV = "FLOWSTONE_LLM_BATCHES_DB_URL"
BATCHES_FILE_NAME = "llm_batches.sqlite"
SCHEMA_LOCK_KEY = 7261540017  # the PostgreSQL advisory lock held while creating the table
#: States whose answers are not final yet, or are final and not yet shown on a partition.
OPEN_STATES = ("pending", "collected")

metadata = sa.MetaData()

batches_table = sa.Table(
    "flowstone_llm_batches",
    metadata,
    sa.Column("batch_id", sa.String(128), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False),  # the system whose provider it used
    sa.Column("scope", sa.String(512), nullable=False),  # JSON: the partition it answers
    sa.Column("provider", sa.String(128), nullable=False),
    sa.Column("endpoint", sa.String(512), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("requests", sa.Text, nullable=False),  # JSON list of BatchRequest.to_dict()
    # JSON lists of custom ids, once the batch ended: answered, failed, never processed
    sa.Column("answered", sa.Text, nullable=False, default="[]"),
    sa.Column("errored", sa.Text, nullable=False, default="[]"),
    sa.Column("expired", sa.Text, nullable=False, default="[]"),
    sa.Column("input_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("output_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("cost_usd", sa.Float, nullable=False, default=0.0),
    sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ended_at", sa.DateTime(timezone=True)),
    sa.Column("replaces", sa.String(128)),
    sa.Column("detail", sa.Text),
    sa.Index("ix_llm_batches_state", "state"),
    sa.Index("ix_llm_batches_scope", "scope"),
)


@dataclass(frozen=True)
class BatchJob:
    """One submitted batch, provider-neutral: the partition it answers (``scope``), the system
    whose first provider it went to (``owner``), that endpoint, its requests (custom id = the
    response-cache key), what came back and what it cost (at the batch price)."""

    batch_id: str
    owner: str
    scope: dict[str, str]
    provider: str
    endpoint: str
    requests: tuple[BatchRequest, ...]
    attempt: int = 1
    state: str = "pending"
    submitted_at: datetime = field(default_factory=utcnow)
    answered: tuple[str, ...] = ()
    errored: tuple[str, ...] = ()
    expired: tuple[str, ...] = ()
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    ended_at: datetime | None = None
    replaces: str | None = None
    detail: str | None = None

    @property
    def custom_ids(self) -> set[str]:
        return {r.custom_id for r in self.requests}

    @property
    def settled(self) -> set[str]:
        """The requests that reached a final outcome in this batch (an answer or an error):
        an errored one is retried online by the run, never batched again."""
        return set(self.answered) | set(self.errored)

    def describe(self) -> str:
        """The batch as a person reads it in a log line."""
        where = ", ".join(f"{k} {v}" for k, v in sorted(self.scope.items()))
        return f"batch {self.batch_id} ({len(self.requests)} requests, {where})"


def scope_text(scope: dict[str, str]) -> str:
    return json.dumps(scope, sort_keys=True)


def default_batches_url() -> str:
    url = os.environ.get(BATCHES_DB_ENV)
    if url:
        return url
    return f"sqlite:///{instance_dir() / BATCHES_FILE_NAME}"


@functools.lru_cache(maxsize=16)
def _engine(url: str) -> sa.Engine:
    """One engine and one schema check per URL and process (the sensor opens it every tick)."""
    if url.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(url[len("sqlite:///") :]) or ".", exist_ok=True)
    engine = engine_for(url, wal=True)
    create_schema(engine, metadata, lock_key=SCHEMA_LOCK_KEY)
    return engine


def batches_exist(url: str | None = None) -> bool:
    """Whether a batch was ever recorded here, without creating the store: a sensor tick on a
    deployment that never used batch mode must not make a database appear."""
    url = url or default_batches_url()
    if url.startswith("sqlite:///"):
        return os.path.exists(url[len("sqlite:///") :])
    return True


class BatchStore:
    """The ``flowstone_llm_batches`` table (SQLite in the instance folder, or PostgreSQL)."""

    def __init__(self, url: str | None = None):
        self.url = url or default_batches_url()
        self.engine = _engine(self.url)

    @staticmethod
    def _row(job: BatchJob) -> dict[str, Any]:
        return {
            "batch_id": job.batch_id,
            "owner": job.owner,
            "scope": scope_text(job.scope),
            "provider": job.provider,
            "endpoint": job.endpoint,
            "attempt": job.attempt,
            "state": job.state,
            "requests": json.dumps([r.to_dict() for r in job.requests]),
            "answered": json.dumps(list(job.answered)),
            "errored": json.dumps(list(job.errored)),
            "expired": json.dumps(list(job.expired)),
            "input_tokens": job.input_tokens,
            "output_tokens": job.output_tokens,
            "cost_usd": job.cost_usd,
            "submitted_at": job.submitted_at,
            "ended_at": job.ended_at,
            "replaces": job.replaces,
            "detail": job.detail,
        }

    @staticmethod
    def _job(row: Any) -> BatchJob:
        return BatchJob(
            batch_id=row.batch_id,
            owner=row.owner,
            scope=json.loads(row.scope),
            provider=row.provider,
            endpoint=row.endpoint,
            requests=tuple(BatchRequest.from_dict(r) for r in json.loads(row.requests)),
            attempt=row.attempt,
            state=row.state,
            submitted_at=aware(row.submitted_at),
            answered=tuple(json.loads(row.answered or "[]")),
            errored=tuple(json.loads(row.errored or "[]")),
            expired=tuple(json.loads(row.expired or "[]")),
            input_tokens=row.input_tokens,
            output_tokens=row.output_tokens,
            cost_usd=row.cost_usd,
            ended_at=aware(row.ended_at),
            replaces=row.replaces,
            detail=row.detail,
        )

    def add(self, job: BatchJob) -> None:
        with self.engine.begin() as conn:
            conn.execute(batches_table.insert().values(**self._row(job)))

    def save(self, job: BatchJob) -> None:
        """Write ``job``'s state and results over its record."""
        row = self._row(job)
        batch_id = row.pop("batch_id")
        with self.engine.begin() as conn:
            conn.execute(
                batches_table.update().where(batches_table.c.batch_id == batch_id).values(**row)
            )

    def set_state(self, job: BatchJob, state: str, detail: str | None = None) -> BatchJob:
        updated = replace(job, state=state, detail=detail if detail is not None else job.detail)
        self.save(updated)
        return updated

    def _select(self, *where: Any) -> list[BatchJob]:
        query = sa.select(batches_table).where(*where).order_by(batches_table.c.submitted_at)
        with self.engine.connect() as conn:
            return [self._job(row) for row in conn.execute(query)]

    def get(self, batch_id: str) -> BatchJob | None:
        jobs = self._select(batches_table.c.batch_id == batch_id)
        return jobs[0] if jobs else None

    def in_states(self, states: Sequence[str]) -> list[BatchJob]:
        return self._select(batches_table.c.state.in_(list(states)))

    def for_scope(
        self, scope: dict[str, str], states: Sequence[str] | None = None
    ) -> list[BatchJob]:
        where = [batches_table.c.scope == scope_text(scope)]
        if states is not None:
            where.append(batches_table.c.state.in_(list(states)))
        return self._select(*where)
