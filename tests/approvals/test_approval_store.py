"""The approval store and state machine, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from flowstone.approvals.machine import (
    ApprovalError,
    ApprovalPolicy,
    IllegalTransition,
    State,
    UnauthorisedApprover,
)
from flowstone.approvals.store import ApprovalStore
from flowstone.storage.sql import utcnow

POLICY = ApprovalPolicy(
    approvers={"promoted_system": ["alice", "group:leads"]},
    groups={"leads": ["bob"]},
    allow_self_approval=False,
    escalation_approvers=["carol"],
)


def test_open_is_idempotent_per_version_and_supersedes_older(store_url: str) -> None:
    store = ApprovalStore(store_url)
    first = store.open_request("promoted_system", "qa|base", "v1", {"f1": 0.8}, POLICY)
    again = store.open_request("promoted_system", "qa|base", "v1", {"f1": 0.9}, POLICY)
    assert first.created and not again.created
    assert again.request.id == first.request.id
    assert again.request.summary == {"f1": 0.8}

    newer = store.open_request("promoted_system", "qa|base", "v2", {}, POLICY)
    assert newer.created
    assert [r.id for r in newer.superseded] == [first.request.id]
    assert store.get(first.request.id).state == State.SUPERSEDED
    # Another partition is untouched by the supersede.
    other = store.open_request("promoted_system", "qa|tuned", "v1", {}, POLICY)
    assert other.created and not other.superseded
    assert {r.partition for r in store.list(states=[State.PENDING])} == {"qa|base", "qa|tuned"}


def test_decisions_follow_the_state_machine(store_url: str) -> None:
    store = ApprovalStore(store_url)
    # POLICY forbids self-approval, so the request must know its requester to be decidable.
    opened = store.open_request("promoted_system", "p", "v1", {}, POLICY, requested_by="carol")
    request = opened.request
    decided = store.decide(request.id, approve=True, by="bob", comment="looks good")
    assert decided.state == State.APPROVED and decided.decided_by == "bob"
    assert decided.comment == "looks good" and decided.decided_at is not None
    with pytest.raises(IllegalTransition, match="already approved"):
        store.decide(request.id, approve=False, by="alice")
    with pytest.raises(IllegalTransition, match="cannot go from approved to expired"):
        store.transition(request.id, State.EXPIRED, actor="flowstone")
    events = [(e.event, e.from_state, e.to_state, e.actor) for e in store.audit(request.id)]
    assert events == [
        ("opened", None, "pending", "carol"),
        ("approved", "pending", "approved", "bob"),
    ]


def test_unlisted_approver_and_self_approval_are_refused(store_url: str) -> None:
    store = ApprovalStore(store_url)
    request = store.open_request(
        "promoted_system", "p", "v1", {}, POLICY, requested_by="alice"
    ).request
    assert request.approvers == ["alice", "bob"]  # group expanded at request time
    with pytest.raises(UnauthorisedApprover, match="'mallory' is not an approver"):
        store.decide(request.id, approve=True, by="mallory")
    with pytest.raises(UnauthorisedApprover, match="self-approval is disabled"):
        store.decide(request.id, approve=True, by="alice")
    assert store.get(request.id).state == State.PENDING
    assert [e.event for e in store.audit(request.id)] == ["opened"]


def test_unknown_group_is_a_config_error(store_url: str) -> None:
    store = ApprovalStore(store_url)
    policy = ApprovalPolicy(approvers={"*": ["group:nobody"]})
    with pytest.raises(ApprovalError, match="group 'nobody', which is not defined"):
        store.open_request("x", "", "v1", {}, policy)


def test_timeouts_expire_or_escalate_exactly_once(store_url: str) -> None:
    store = ApprovalStore(store_url)
    past = utcnow() - timedelta(hours=5)
    expire = ApprovalPolicy(timeout_hours=1, on_timeout="expire")
    escalate = ApprovalPolicy(
        approvers={"*": ["alice"]}, timeout_hours=1, on_timeout="escalate",
        escalation_approvers=["carol"],
    )  # fmt: skip
    a = store.open_request("a", "", "v1", {}, expire, now=past).request
    b = store.open_request("b", "", "v1", {}, escalate, now=past).request
    fresh = store.open_request("c", "", "v1", {}, expire).request
    moved = store.sweep_timeouts()
    assert {(r.asset, r.state) for r in moved} == {("a", State.EXPIRED), ("b", State.ESCALATED)}
    assert store.sweep_timeouts() == []  # nothing moves twice
    assert store.get(fresh.id).state == State.PENDING
    with pytest.raises(IllegalTransition, match="already expired"):
        store.decide(a.id, approve=True, by="alice")
    # Escalated requests stay decidable, now also by the escalation approver.
    assert store.get(b.id).allowed_approvers() == ["alice", "carol"]
    assert store.decide(b.id, approve=True, by="carol").state == State.APPROVED


def test_claims_are_won_once(store_url: str) -> None:
    store = ApprovalStore(store_url)
    request = store.open_request("a", "", "v1", {}, ApprovalPolicy()).request
    assert not store.claim_run(request.id)  # not approved yet
    store.decide(request.id, approve=True, by="anyone")
    assert store.claim_run(request.id)
    assert not ApprovalStore(store_url).claim_run(request.id)  # a second process loses
    assert store.claim_announcement(request.id, State.APPROVED)
    assert not store.claim_announcement(request.id, State.APPROVED)
    assert store.record_run(request.id, "run-1") and not store.record_run(request.id, "run-2")
    assert store.get(request.id).run_id == "run-1"


def _audit_is_append_only(store: ApprovalStore) -> None:
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE flowstone_approval_audit SET actor = 'forged'"))
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM flowstone_approval_audit"))


def test_audit_log_refuses_update_and_delete_sqlite(store_url: str) -> None:
    store = ApprovalStore(store_url)
    store.open_request("a", "", "v1", {}, ApprovalPolicy())
    _audit_is_append_only(store)
    assert len(store.audit()) == 1


def test_store_on_postgresql(postgres_url: str) -> None:
    store = ApprovalStore(postgres_url)
    assert store.engine.dialect.name == "postgresql"
    first = store.open_request(
        "promoted_system", "qa|base", "v1", {"f1": 0.5}, POLICY, requested_by="carol"
    )
    assert (
        not ApprovalStore(postgres_url)
        .open_request("promoted_system", "qa|base", "v1", {}, POLICY)
        .created
    )
    with pytest.raises(UnauthorisedApprover):
        store.decide(first.request.id, approve=True, by="mallory")
    store.decide(first.request.id, approve=False, by="bob", comment="f1 too low")
    got = store.get(first.request.id)
    assert got.state == State.REJECTED and got.comment == "f1 too low"
    assert got.decided_at is not None and got.decided_at.tzinfo is not None
    _audit_is_append_only(store)
    assert [e.event for e in store.audit(got.id)] == ["opened", "rejected"]
