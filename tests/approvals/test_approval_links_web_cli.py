"""Signed links, the approvals page over real HTTP, and the `flowstone approvals` CLI."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from support.approvals_page import serve_approvals_page
from typer.testing import CliRunner

from flowstone.approvals.cli import app
from flowstone.approvals.links import ALL_REQUESTS, InvalidLink, LinkSigner
from flowstone.approvals.machine import ApprovalPolicy, State
from flowstone.approvals.store import ApprovalStore

SECRET = "test-secret-0123456789"
POLICY = ApprovalPolicy(approvers={"*": ["alice", "bob"]})


def test_link_round_trip_tamper_and_expiry() -> None:
    signer = LinkSigner(SECRET, ttl_seconds=60)
    token = signer.sign("req1", approver="alice", now=1000)
    claims = signer.verify(token, now=1030)
    assert (claims.scope, claims.approver, claims.expires_at) == ("req1", "alice", 1060)
    assert claims.allows("req1") and not claims.allows("req2")

    with pytest.raises(InvalidLink, match="expired"):
        signer.verify(token, now=1061)
    payload, signature = token.split(".")
    forged = LinkSigner("other-secret").sign("req1", approver="alice", now=1000)
    with pytest.raises(InvalidLink, match="does not match"):
        signer.verify(f"{forged.split('.')[0]}.{signature[::-1]}", now=1030)
    with pytest.raises(InvalidLink, match="does not match"):
        signer.verify(forged, now=1030)
    # Swap the payload for one naming another approver, keep the signature.
    other = signer.sign("req1", approver="mallory", now=1000).split(".")[0]
    with pytest.raises(InvalidLink, match="does not match"):
        signer.verify(f"{other}.{signature}", now=1030)
    with pytest.raises(InvalidLink, match="malformed"):
        signer.verify(payload, now=1030)


@pytest.fixture
def page(store_url: str) -> Iterator[tuple[str, ApprovalStore, LinkSigner]]:
    store = ApprovalStore(store_url)
    signer = LinkSigner(SECRET, ttl_seconds=3600)
    with serve_approvals_page(store, signer) as base:
        yield base, store, signer


def test_page_refuses_missing_tampered_and_expired_links(page) -> None:
    base, store, signer = page
    request = store.open_request("promoted_system", "qa|base", "v1", {"f1": 0.91}, POLICY).request
    with httpx.Client(base_url=base) as http:
        assert http.get("/").status_code == 401  # no link, no login: the login form
        good = signer.sign(ALL_REQUESTS)
        tampered = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
        refused = http.get("/", params={"t": tampered})
        assert refused.status_code == 403 and "does not match" in refused.text
        expired = signer.sign(ALL_REQUESTS, ttl_seconds=-1)
        refused = http.get("/", params={"t": expired})
        assert refused.status_code == 403 and "expired" in refused.text
        # A link for another request cannot be used to decide this one.
        other = signer.sign("some-other-request")
        post = http.post(
            f"/requests/{request.id}/decide",
            data={"t": other, "action": "approve", "by": "alice"},
        )
        assert post.status_code == 403
        # A tampered token on the POST is refused too, and nothing changed.
        post = http.post(
            f"/requests/{request.id}/decide",
            data={"t": tampered, "action": "approve", "by": "alice"},
        )
        assert post.status_code == 403
    assert store.get(request.id).state == State.PENDING


def test_page_lists_and_decides_through_the_state_machine(page) -> None:
    base, store, signer = page
    request = store.open_request("promoted_system", "qa|base", "v1", {"f1": 0.91}, POLICY).request
    token = signer.sign(ALL_REQUESTS)  # names nobody: shows, and asks for a login to decide
    with httpx.Client(base_url=base) as http:
        listing = http.get(f"/?t={quote(token)}")
        assert listing.status_code == 200
        assert request.id in listing.text and "0.91" in listing.text
        assert "<script>" not in listing.text and 'id="login"' in listing.text
        mallory = signer.sign(ALL_REQUESTS, approver="mallory")
        refused = http.post(
            f"/requests/{request.id}/decide", data={"t": mallory, "action": "approve"}
        )
        assert refused.status_code == 409 and "not an approver" in refused.text
        alice = signer.sign(ALL_REQUESTS, approver="alice")
        done = http.post(
            f"/requests/{request.id}/decide",
            data={"t": alice, "action": "approve", "comment": "ship it"},
        )
        assert done.status_code == 303
        assert store.get(request.id).state == State.APPROVED
        bob = signer.sign(ALL_REQUESTS, approver="bob")
        again = http.post(f"/requests/{request.id}/decide", data={"t": bob, "action": "reject"})
        assert again.status_code == 409 and "already approved" in again.text
    audit = store.audit(request.id)
    assert audit[-1].actor == "alice"
    assert audit[-1].detail == {"via": "web (link signed for the approver)"}


def test_link_bound_to_an_approver_decides_as_that_approver(page) -> None:
    base, store, signer = page
    request = store.open_request("promoted_system", "p", "v1", {}, POLICY).request
    token = signer.sign(request.id, approver="bob")
    with httpx.Client(base_url=base) as http:
        shown = http.get(f"/requests/{request.id}", params={"t": token})
        assert shown.status_code == 200 and "Deciding as <b>bob</b>" in shown.text
        assert "You are <b>bob</b>" in shown.text
        done = http.post(
            f"/requests/{request.id}/decide",
            data={"t": token, "action": "reject", "by": "alice", "comment": "no"},
        )
        assert done.status_code == 303
    got = store.get(request.id)
    assert got.state == State.REJECTED and got.decided_by == "bob"


def test_cli_list_show_approve_reject(store_url: str) -> None:
    store = ApprovalStore(store_url)
    policy = ApprovalPolicy(approvers={"*": ["alice"]})
    first = store.open_request("promoted_system", "qa|base", "v1", {"f1": 0.7}, policy).request
    second = store.open_request("promoted_system", "qa|tuned", "v1", {}, policy).request
    runner = CliRunner()
    _, alice = store.create_token("alice")
    _, mallory = store.create_token("mallory")

    listed = runner.invoke(app, ["list", "--db", store_url])
    assert listed.exit_code == 0, listed.output
    assert first.id in listed.output and second.id in listed.output

    refused = runner.invoke(app, ["approve", first.id, "--token", mallory, "--db", store_url])
    assert refused.exit_code == 1 and "not an approver" in refused.output

    ok = runner.invoke(
        app, ["approve", first.id, "--token", alice, "--comment", "good", "--db", store_url]
    )
    assert ok.exit_code == 0 and "approved" in ok.output
    twice = runner.invoke(app, ["reject", first.id, "--token", alice, "--db", store_url])
    assert twice.exit_code == 1 and "already approved" in twice.output

    rejected = runner.invoke(
        app,
        ["reject", second.id, "--comment", "regressed", "--db", store_url],
        env={"FLOWSTONE_APPROVAL_TOKEN": alice},
    )
    assert rejected.exit_code == 0
    assert store.get(second.id).comment == "regressed"

    shown = runner.invoke(app, ["show", first.id, "--db", store_url])
    assert shown.exit_code == 0
    assert "pending -> approved by alice  (good)" in shown.output and '"f1": 0.7' in shown.output
    assert (
        runner.invoke(app, ["list", "--db", store_url]).output.strip()
        == "no approval requests match"
    )
    missing = runner.invoke(app, ["show", "nope", "--db", store_url])
    assert missing.exit_code == 1 and "no approval request 'nope'" in missing.output


def test_cli_link_is_verifiable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWSTONE_APPROVAL_SECRET", SECRET)
    result = CliRunner().invoke(app, ["link", "abc", "--by", "alice", "--base-url", "http://h:1"])
    assert result.exit_code == 0
    url = result.output.strip()
    assert url.startswith("http://h:1/requests/abc?t=")
    from urllib.parse import parse_qs, urlsplit

    token = parse_qs(urlsplit(url).query)["t"][0]
    claims = LinkSigner(SECRET).verify(token, now=time.time())
    assert claims.scope == "abc" and claims.approver == "alice"
