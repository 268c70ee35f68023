"""The durable approval store: requests, decisions and an append-only audit log.

Dagster has no approval step, so the state that a human decision needs (what was asked, about
which data version, who decided) lives here, in SQLite under the instance folder or in
PostgreSQL. Every state change is a compare-and-set UPDATE plus an audit row in one
transaction, so the CLI, the web page and sensor ticks in other processes cannot both win.

:meth:`ApprovalStore.decide` is the one door every front end (CLI, page, Slack) decides
through, so the rules that must hold whoever asks live there: the approver list, no
self-approval (an unknown requester counts as a refusal, not a pass) and no decision after
``timeout_at``. The front ends only prove *who* is asking. Personal approval tokens live here
too (hashed), so every process that can decide can also check one.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import json
import logging
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from flowstone.approvals.machine import (
    OPEN_STATES,
    ApprovalError,
    ApprovalPolicy,
    IllegalTransition,
    RequestNotFound,
    State,
    check_approver,
    check_transition,
)
from flowstone.approvals.settings import default_database_url
from flowstone.storage.sql import aware, create_schema, engine_for, utcnow

log = logging.getLogger("flowstone.approvals")


class RequestTimedOut(IllegalTransition):
    """A decision arrived after the request's ``timeout_at``."""


class InvalidToken(ApprovalError):
    """A personal approval token that is unknown, malformed or revoked."""


SCHEMA_LOCK_KEY = 7261540001  # the PostgreSQL advisory lock held while creating the tables

metadata = sa.MetaData()

requests_table = sa.Table(
    "flowstone_approval_requests",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("asset", sa.String(512), nullable=False),
    sa.Column("partition", sa.String(512), nullable=False, default=""),
    sa.Column("data_version", sa.String(256), nullable=False),
    sa.Column("summary", sa.Text, nullable=False, default="{}"),
    sa.Column("requested_by", sa.String(256)),
    sa.Column("approvers", sa.Text),  # JSON list of names, NULL means "anyone"
    sa.Column("escalation_approvers", sa.Text, nullable=False, default="[]"),
    sa.Column("allow_self_approval", sa.Boolean, nullable=False, default=True),
    sa.Column("os_users", sa.Text),  # JSON {os login: approver}: who the CLI decides as
    sa.Column("on_timeout", sa.String(16), nullable=False, default="expire"),
    sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("timeout_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("decided_by", sa.String(256)),
    sa.Column("decided_at", sa.DateTime(timezone=True)),
    sa.Column("comment", sa.Text),
    sa.Column("announced_state", sa.String(16)),  # the last state people were told about
    sa.Column("run_requested_at", sa.DateTime(timezone=True)),
    sa.Column("run_id", sa.String(64)),
    sa.UniqueConstraint("asset", "partition", "data_version", name="uq_approval_version"),
    sa.Index("ix_approval_state", "state"),
    sa.Index("ix_approval_asset_partition", "asset", "partition"),
)

audit_table = sa.Table(
    "flowstone_approval_audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(32), nullable=False, index=True),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("from_state", sa.String(16)),
    sa.Column("to_state", sa.String(16)),
    sa.Column("actor", sa.String(256)),
    sa.Column("comment", sa.Text),
    sa.Column("detail", sa.Text, nullable=False, default="{}"),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

tokens_table = sa.Table(
    "flowstone_approval_tokens",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),  # public: what list and revoke show
    sa.Column("approver", sa.String(256), nullable=False),
    # sha256 of the token: tokens are 32 random bytes, so a fast hash is enough (nothing to
    # brute-force) and the lookup stays one indexed equality. The token itself is never stored.
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.Column("last_used_at", sa.DateTime(timezone=True)),
)

#: Columns added after the first release: (table, column, DDL type). create_all does not add
#: columns to an existing table, so an older database gets them by ALTER TABLE on first use.
_ADDED_COLUMNS = [("flowstone_approval_requests", "os_users", "TEXT")]
TOKEN_PREFIX = "fsa_"

_SQLITE_APPEND_ONLY = [
    """CREATE TRIGGER IF NOT EXISTS flowstone_approval_audit_no_update
       BEFORE UPDATE ON flowstone_approval_audit
       BEGIN SELECT RAISE(ABORT, 'flowstone_approval_audit is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS flowstone_approval_audit_no_delete
       BEFORE DELETE ON flowstone_approval_audit
       BEGIN SELECT RAISE(ABORT, 'flowstone_approval_audit is append-only'); END""",
]
_POSTGRES_APPEND_ONLY = [
    """CREATE OR REPLACE FUNCTION flowstone_approval_audit_append_only() RETURNS trigger AS $$
       BEGIN RAISE EXCEPTION 'flowstone_approval_audit is append-only'; END $$ LANGUAGE plpgsql""",
    """CREATE TRIGGER flowstone_approval_audit_append_only
       BEFORE UPDATE OR DELETE ON flowstone_approval_audit
       FOR EACH ROW EXECUTE FUNCTION flowstone_approval_audit_append_only()""",
]


@functools.lru_cache(maxsize=32)
def _engine_with_schema(url: str) -> sa.Engine:
    """One engine and one schema check per URL and process. SQLite in write-ahead-log mode:
    the web page and the CLI read while a sensor tick writes."""
    engine = engine_for(url, wal=True)
    create_schema(engine, metadata, lock_key=SCHEMA_LOCK_KEY, extra=_append_only_triggers)
    return engine


def _append_only_triggers(conn: sa.Connection) -> None:
    """The audit log refuses UPDATE and DELETE, whoever connects; older tables get the
    columns added since."""
    inspector = sa.inspect(conn)
    for table, column, ddl in _ADDED_COLUMNS:
        if column not in {c["name"] for c in inspector.get_columns(table)}:
            conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}"))
    if conn.dialect.name == "postgresql":
        exists = conn.execute(
            sa.text("SELECT 1 FROM pg_trigger WHERE tgname = :name"),
            {"name": "flowstone_approval_audit_append_only"},
        ).first()
        statements = [] if exists else _POSTGRES_APPEND_ONLY
    else:
        statements = _SQLITE_APPEND_ONLY
    for statement in statements:
        conn.execute(sa.text(statement))


@dataclass(frozen=True)
class ApprovalRequest:
    """One question put to a human: may ``asset``/``partition`` move on at ``data_version``?"""

    id: str
    asset: str
    partition: str
    data_version: str
    summary: dict[str, Any]
    requested_by: str | None
    approvers: list[str] | None
    escalation_approvers: list[str]
    allow_self_approval: bool
    os_users: dict[str, str]
    on_timeout: str
    requested_at: datetime
    timeout_at: datetime
    state: State
    decided_by: str | None
    decided_at: datetime | None
    comment: str | None
    announced_state: str | None
    run_requested_at: datetime | None
    run_id: str | None

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    def allowed_approvers(self) -> list[str] | None:
        """Names that may decide now; escalation adds the escalation approvers."""
        if self.approvers is None:
            return None
        if self.state == State.ESCALATED:
            return sorted(set(self.approvers) | set(self.escalation_approvers))
        return self.approvers

    @classmethod
    def from_row(cls, row: sa.RowMapping) -> ApprovalRequest:
        return cls(
            id=row["id"],
            asset=row["asset"],
            partition=row["partition"],
            data_version=row["data_version"],
            summary=json.loads(row["summary"] or "{}"),
            requested_by=row["requested_by"],
            approvers=None if row["approvers"] is None else json.loads(row["approvers"]),
            escalation_approvers=json.loads(row["escalation_approvers"] or "[]"),
            allow_self_approval=bool(row["allow_self_approval"]),
            os_users=json.loads(row["os_users"] or "{}"),
            on_timeout=row["on_timeout"],
            requested_at=aware(row["requested_at"]),
            timeout_at=aware(row["timeout_at"]),
            state=State(row["state"]),
            decided_by=row["decided_by"],
            decided_at=aware(row["decided_at"]),
            comment=row["comment"],
            announced_state=row["announced_state"],
            run_requested_at=aware(row["run_requested_at"]),
            run_id=row["run_id"],
        )


@dataclass(frozen=True)
class AuditEntry:
    id: int
    request_id: str
    event: str
    from_state: str | None
    to_state: str | None
    actor: str | None
    comment: str | None
    detail: dict[str, Any]
    at: datetime


@dataclass(frozen=True)
class ApprovalToken:
    """A personal token as listed: never the token itself, which only its creator saw once."""

    id: str
    approver: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


def token_digest(token: str) -> str:
    """The stored form of a token: its sha256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class OpenResult:
    """What :meth:`ApprovalStore.open_request` did: the request, whether it is new, and which
    older pending requests for the same partition it superseded."""

    request: ApprovalRequest
    created: bool
    superseded: list[ApprovalRequest]


class ApprovalStore:
    """Approval requests and their audit log in one SQL database (SQLite or PostgreSQL)."""

    def __init__(self, url: str | None = None):
        self.url = url or default_database_url()
        # One engine (and one schema check) per URL and process: sensors build a store on
        # every tick, and DDL on every tick would lock the tables under PostgreSQL.
        self.engine = _engine_with_schema(self.url)

    # ----------------------------------------------------------------- reading

    def get(self, request_id: str) -> ApprovalRequest:
        with self.engine.connect() as conn:
            row = (
                conn.execute(sa.select(requests_table).where(requests_table.c.id == request_id))
                .mappings()
                .first()
            )
        if row is None:
            raise RequestNotFound(
                f"no approval request {request_id!r} in {self.describe()}; "
                "`flowstone approvals list --state all` shows the known ids."
            )
        return ApprovalRequest.from_row(row)

    def list(
        self,
        states: Sequence[State | str] | None = None,
        asset: str | None = None,
        partition: str | None = None,
        limit: int = 200,
    ) -> list[ApprovalRequest]:
        query = sa.select(requests_table).order_by(requests_table.c.requested_at.desc())
        if states:
            query = query.where(requests_table.c.state.in_([State(s).value for s in states]))
        if asset is not None:
            query = query.where(requests_table.c.asset == asset)
        if partition is not None:
            query = query.where(requests_table.c.partition == partition)
        with self.engine.connect() as conn:
            rows = conn.execute(query.limit(limit)).mappings().all()
        return [ApprovalRequest.from_row(r) for r in rows]

    def audit(self, request_id: str | None = None) -> builtins.list[AuditEntry]:
        query = sa.select(audit_table).order_by(audit_table.c.id)
        if request_id is not None:
            query = query.where(audit_table.c.request_id == request_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            AuditEntry(
                id=r["id"],
                request_id=r["request_id"],
                event=r["event"],
                from_state=r["from_state"],
                to_state=r["to_state"],
                actor=r["actor"],
                comment=r["comment"],
                detail=json.loads(r["detail"] or "{}"),
                at=aware(r["at"]),
            )
            for r in rows
        ]

    # ----------------------------------------------------------------- writing

    def open_request(
        self,
        asset: str,
        partition: str | None,
        data_version: str,
        summary: Mapping[str, Any] | None = None,
        policy: ApprovalPolicy | None = None,
        requested_by: str | None = None,
        now: datetime | None = None,
    ) -> OpenResult:
        """Open (or find) the request for ``asset``/``partition`` at ``data_version``.

        Idempotent per (asset, partition, data_version): a repeated sensor tick or a restarted
        daemon gets the existing request back with ``created=False``. Opening a new version
        supersedes the still-open requests for older versions of the same partition.
        """
        policy = policy or ApprovalPolicy()
        now = now or utcnow()
        partition = partition or ""
        if not data_version:
            raise ValueError(f"approval request for {asset} [{partition}]: empty data_version")
        existing = self._find(asset, partition, data_version)
        if existing is not None:
            return OpenResult(existing, created=False, superseded=[])
        approvers = policy.approvers_for(asset)
        if approvers is None:
            log.warning(
                "approvals: no approvers configured for %s; anyone may decide its requests. "
                "Set ApprovalsResource.approvers to restrict this.",
                asset,
            )
        request_id = uuid.uuid4().hex
        superseded: list[ApprovalRequest] = []
        try:
            with self.engine.begin() as conn:
                older = (
                    conn.execute(
                        sa.select(requests_table).where(
                            requests_table.c.asset == asset,
                            requests_table.c.partition == partition,
                            requests_table.c.state.in_([s.value for s in OPEN_STATES]),
                        )
                    )
                    .mappings()
                    .all()
                )
                for row in older:
                    if self._cas(
                        conn,
                        row["id"],
                        State(row["state"]),
                        State.SUPERSEDED,
                        actor="flowstone",
                        comment=f"superseded by data version {data_version} (request {request_id})",
                        now=now,
                        values={},
                        detail={"superseded_by": request_id},
                    ):
                        superseded.append(ApprovalRequest.from_row(row))
                conn.execute(
                    requests_table.insert().values(
                        id=request_id,
                        asset=asset,
                        partition=partition,
                        data_version=data_version,
                        summary=json.dumps(dict(summary or {}), default=str, sort_keys=True),
                        requested_by=requested_by,
                        approvers=None if approvers is None else json.dumps(approvers),
                        escalation_approvers=json.dumps(policy.escalation_names()),
                        allow_self_approval=policy.allow_self_approval,
                        os_users=json.dumps(dict(policy.os_users), sort_keys=True),
                        on_timeout=policy.on_timeout,
                        requested_at=now,
                        timeout_at=now + timedelta(hours=policy.timeout_hours),
                        state=State.PENDING.value,
                    )
                )
                self._append_audit(
                    conn,
                    request_id,
                    "opened",
                    None,
                    State.PENDING,
                    requested_by or "flowstone",
                    None,
                    now,
                    {"asset": asset, "partition": partition, "data_version": data_version},
                )
        except IntegrityError:
            # Another process opened the same version between our read and our insert.
            existing = self._find(asset, partition, data_version)
            if existing is None:
                raise
            return OpenResult(existing, created=False, superseded=[])
        return OpenResult(
            self.get(request_id),
            created=True,
            superseded=[self.get(r.id) for r in superseded],
        )

    def decide(
        self,
        request_id: str,
        approve: bool,
        by: str,
        comment: str | None = None,
        now: datetime | None = None,
        via: str = "cli",
    ) -> ApprovalRequest:
        """Approve or reject as ``by``, an identity the caller has proven (``via`` says how).

        Refuses, whatever the front end: requests no longer open; a pending request past its
        ``timeout_at`` (it expires, or escalates and is then decided under the escalated
        approver list); approvers not on the list; self-approval when it is off, including
        when the request does not know its requester.
        """
        now = now or utcnow()
        request = self.get(request_id)
        target = State.APPROVED if approve else State.REJECTED
        if request.state == State.PENDING and now >= request.timeout_at:
            request = self._time_out(request, now)
            if request.state == State.EXPIRED:
                raise RequestTimedOut(
                    f"approval request {request_id} for {request.asset} timed out at "
                    f"{request.timeout_at:%Y-%m-%d %H:%M:%S} UTC and is expired; a decision "
                    "after the deadline is refused. Rematerialize the upstream for a new request."
                )
        check_transition(request_id, request.state, target)
        check_approver(
            request_id,
            request.asset,
            by,
            request.allowed_approvers(),
            request.requested_by,
            request.allow_self_approval,
        )
        return self.transition(
            request_id,
            target,
            actor=by,
            comment=comment,
            now=now,
            expected=request.state,
            detail={"via": via},
        )

    def transition(
        self,
        request_id: str,
        target: State,
        actor: str,
        comment: str | None = None,
        now: datetime | None = None,
        expected: State | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> ApprovalRequest:
        """Move one request to ``target`` if legal; raises :class:`IllegalTransition` otherwise."""
        now = now or utcnow()
        current = expected or self.get(request_id).state
        check_transition(request_id, current, target)
        values: dict[str, Any] = {}
        if target in (State.APPROVED, State.REJECTED):
            values = {"decided_by": actor, "decided_at": now, "comment": comment}
        elif target in (State.EXPIRED,):
            values = {"decided_at": now, "comment": comment}
        with self.engine.begin() as conn:
            won = self._cas(
                conn, request_id, current, target, actor, comment, now, values, dict(detail or {})
            )
        if not won:
            fresh = self.get(request_id)
            # Someone else moved it first: explain with the state they left it in.
            check_transition(request_id, fresh.state, target)
            raise IllegalTransition(
                f"approval request {request_id} changed while deciding (now {fresh.state.value}); "
                "try again."
            )
        return self.get(request_id)

    def _time_out(self, request: ApprovalRequest, now: datetime) -> ApprovalRequest:
        """Apply an overdue pending request's timeout now (the sweep may not have run yet);
        returns the request as it stands afterwards, whoever moved it."""
        target = State.ESCALATED if request.on_timeout == "escalate" else State.EXPIRED
        with self.engine.begin() as conn:
            self._cas(
                conn,
                request.id,
                State.PENDING,
                target,
                "flowstone",
                f"no decision by {request.timeout_at.isoformat()}",
                now,
                {"decided_at": now} if target == State.EXPIRED else {},
                {"timeout_at": request.timeout_at.isoformat()},
            )
        return self.get(request.id)

    # ----------------------------------------------------------------- tokens

    def create_token(self, approver: str, now: datetime | None = None) -> tuple[str, str]:
        """A new personal token for ``approver``: ``(id, token)``. The token is returned once
        and only its sha256 is stored, so a copy of the database decides nothing."""
        approver = approver.strip()
        if not approver:
            raise ApprovalError("approval token: the approver name is empty")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = secrets.token_hex(6)
        with self.engine.begin() as conn:
            conn.execute(
                tokens_table.insert().values(
                    id=token_id,
                    approver=approver,
                    token_sha256=token_digest(token),
                    created_at=now or utcnow(),
                )
            )
        return token_id, token

    def tokens(self, approver: str | None = None) -> builtins.list[ApprovalToken]:
        query = sa.select(tokens_table).order_by(tokens_table.c.created_at)
        if approver is not None:
            query = query.where(tokens_table.c.approver == approver)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            ApprovalToken(
                id=r["id"],
                approver=r["approver"],
                created_at=aware(r["created_at"]),
                revoked_at=aware(r["revoked_at"]),
                last_used_at=aware(r["last_used_at"]),
            )
            for r in rows
        ]

    def revoke_token(self, token_id: str, now: datetime | None = None) -> ApprovalToken:
        """Revoke one token by its id; revoking twice is harmless."""
        with self.engine.begin() as conn:
            conn.execute(
                tokens_table.update()
                .where(tokens_table.c.id == token_id, tokens_table.c.revoked_at.is_(None))
                .values(revoked_at=now or utcnow())
            )
        for token in self.tokens():
            if token.id == token_id:
                return token
        raise ApprovalError(
            f"no approval token {token_id!r}; `flowstone approvals token list` shows the ids."
        )

    def approver_for_token(self, token: str, now: datetime | None = None) -> str:
        """The approver a presented token proves; :class:`InvalidToken` if it is unknown or
        revoked."""
        if not token or not token.startswith(TOKEN_PREFIX):
            raise InvalidToken("approval token is malformed (expected fsa_...)")
        with self.engine.begin() as conn:
            row = (
                conn.execute(
                    sa.select(tokens_table).where(
                        tokens_table.c.token_sha256 == token_digest(token)
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                raise InvalidToken(
                    "approval token is not known; create one with "
                    "`flowstone approvals token create NAME`."
                )
            if row["revoked_at"] is not None:
                raise InvalidToken(
                    f"approval token {row['id']} of {row['approver']} was revoked at "
                    f"{aware(row['revoked_at']):%Y-%m-%d %H:%M} UTC."
                )
            conn.execute(
                tokens_table.update()
                .where(tokens_table.c.id == row["id"])
                .values(last_used_at=now or utcnow())
            )
        return str(row["approver"])

    def due_for_timeout(self, now: datetime | None = None, asset: str | None = None):
        """Pending requests whose ``timeout_at`` has passed."""
        now = now or utcnow()
        query = sa.select(requests_table).where(
            requests_table.c.state == State.PENDING.value, requests_table.c.timeout_at <= now
        )
        if asset is not None:
            query = query.where(requests_table.c.asset == asset)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [ApprovalRequest.from_row(r) for r in rows]

    def sweep_timeouts(
        self, now: datetime | None = None, asset: str | None = None
    ) -> builtins.list[ApprovalRequest]:
        """Expire or escalate every overdue pending request; returns the ones this call moved.

        Each request is moved by exactly one caller even when several sweep at once, so the
        caller can notify for what it gets back without sending twice.
        """
        now = now or utcnow()
        moved = []
        for request in self.due_for_timeout(now, asset):
            target = State.ESCALATED if request.on_timeout == "escalate" else State.EXPIRED
            with self.engine.begin() as conn:
                won = self._cas(
                    conn,
                    request.id,
                    State.PENDING,
                    target,
                    "flowstone",
                    f"no decision by {request.timeout_at.isoformat()}",
                    now,
                    {"decided_at": now} if target == State.EXPIRED else {},
                    {"timeout_at": request.timeout_at.isoformat()},
                )
            if won:
                moved.append(self.get(request.id))
        return moved

    def claim_announcement(
        self, request_id: str, state: State, now: datetime | None = None
    ) -> bool:
        """Record that people were told about ``state``; True for exactly one caller.

        Callers notify first and claim after: a crash in between repeats the notification,
        which the outbox suppresses by its dedup key, instead of losing it.
        """
        now = now or utcnow()
        col = requests_table.c.announced_state
        with self.engine.begin() as conn:
            result = conn.execute(
                requests_table.update()
                .where(
                    requests_table.c.id == request_id,
                    requests_table.c.state == state.value,
                    sa.or_(col.is_(None), col != state.value),
                )
                .values(announced_state=state.value)
            )
            if result.rowcount != 1:
                return False
            self._append_audit(
                conn, request_id, "announced", None, None, "flowstone", None, now,
                {"state": state.value},
            )  # fmt: skip
        return True

    def unannounced(
        self, states: Sequence[State], asset: str | None = None
    ) -> builtins.list[ApprovalRequest]:
        """Requests in one of ``states`` whose current state nobody has been told about."""
        col = requests_table.c.announced_state
        query = sa.select(requests_table).where(
            requests_table.c.state.in_([s.value for s in states]),
            sa.or_(col.is_(None), col != requests_table.c.state),
        )
        if asset is not None:
            query = query.where(requests_table.c.asset == asset)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(requests_table.c.requested_at)).mappings().all()
        return [ApprovalRequest.from_row(r) for r in rows]

    def claim_run(self, request_id: str, now: datetime | None = None) -> bool:
        """True for exactly one caller: the one that should emit the RunRequest."""
        return self._claim(
            request_id, "run_requested_at", "run_requested", now, require=State.APPROVED
        )

    def record_run(self, request_id: str, run_id: str, now: datetime | None = None) -> bool:
        """Remember the Dagster run that acted on an approval (first writer wins)."""
        now = now or utcnow()
        with self.engine.begin() as conn:
            result = conn.execute(
                requests_table.update()
                .where(requests_table.c.id == request_id, requests_table.c.run_id.is_(None))
                .values(run_id=run_id)
            )
            if result.rowcount == 1:
                self._append_audit(
                    conn, request_id, "run_launched", None, None, "dagster", None, now,
                    {"run_id": run_id},
                )  # fmt: skip
                return True
        return False

    def approved_without_run(self, asset: str | None = None) -> builtins.list[ApprovalRequest]:
        query = sa.select(requests_table).where(
            requests_table.c.state == State.APPROVED.value, requests_table.c.run_id.is_(None)
        )
        if asset is not None:
            query = query.where(requests_table.c.asset == asset)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(requests_table.c.decided_at)).mappings().all()
        return [ApprovalRequest.from_row(r) for r in rows]

    # ----------------------------------------------------------------- internals

    def describe(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def _find(self, asset: str, partition: str, data_version: str) -> ApprovalRequest | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    sa.select(requests_table).where(
                        requests_table.c.asset == asset,
                        requests_table.c.partition == partition,
                        requests_table.c.data_version == data_version,
                    )
                )
                .mappings()
                .first()
            )
        return None if row is None else ApprovalRequest.from_row(row)

    def _claim(
        self,
        request_id: str,
        column: str,
        event: str,
        now: datetime | None,
        require: State | None = None,
    ) -> bool:
        now = now or utcnow()
        col = requests_table.c[column]
        query = requests_table.update().where(requests_table.c.id == request_id, col.is_(None))
        if require is not None:
            query = query.where(requests_table.c.state == require.value)
        with self.engine.begin() as conn:
            if conn.execute(query.values({column: now})).rowcount != 1:
                return False
            self._append_audit(conn, request_id, event, None, None, "flowstone", None, now, {})
        return True

    def _cas(
        self,
        conn: sa.Connection,
        request_id: str,
        current: State,
        target: State,
        actor: str,
        comment: str | None,
        now: datetime,
        values: Mapping[str, Any],
        detail: Mapping[str, Any],
    ) -> bool:
        check_transition(request_id, current, target)
        result = conn.execute(
            requests_table.update()
            .where(requests_table.c.id == request_id, requests_table.c.state == current.value)
            .values(state=target.value, **values)
        )
        if result.rowcount != 1:
            return False
        self._append_audit(
            conn, request_id, target.value, current, target, actor, comment, now, detail
        )
        return True

    @staticmethod
    def _append_audit(
        conn: sa.Connection,
        request_id: str,
        event: str,
        from_state: State | None,
        to_state: State | None,
        actor: str | None,
        comment: str | None,
        now: datetime,
        detail: Mapping[str, Any],
    ) -> None:
        conn.execute(
            audit_table.insert().values(
                request_id=request_id,
                event=event,
                from_state=None if from_state is None else from_state.value,
                to_state=None if to_state is None else to_state.value,
                actor=actor,
                comment=comment,
                detail=json.dumps(dict(detail), default=str, sort_keys=True),
                at=now,
            )
        )
