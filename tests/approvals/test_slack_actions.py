"""Slack interactive approvals over real HTTP: the viewer app on loopback receives clicks signed
exactly the way Slack signs them, and answers through a loopback Slack Web API (FakeSlack).

The signing here is written out (HMAC-SHA256 of ``v0:<timestamp>:<body>``, hex, ``v0=``
prefix) rather than borrowed from slack_sdk, so the endpoint's verifier is checked against
Slack's documented scheme and not against itself.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx
import pytest
from slack_sdk import WebClient
from support.approvals_page import _empty_sources, serve_viewer_app
from support.polling import wait_for

from flowstone.approvals.links import LinkSigner
from flowstone.approvals.machine import ApprovalError, ApprovalPolicy, State
from flowstone.approvals.settings import parse_slack_users
from flowstone.approvals.store import ApprovalRequest, ApprovalStore
from flowstone.notifications import events
from flowstone.notifications.channels import (
    APPROVE_ACTION_ID,
    DECISION_BLOCK_ID,
    REJECT_ACTION_ID,
    SlackChannel,
)

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
POLICY = ApprovalPolicy(approvers={"*": ["alice", "bob"]})
# alice and bob approve; carol is known to Slack mapping but approves nothing; U0MALLORY is
# a Slack user nobody mapped.
SLACK_USERS = "U0ALICE01=alice, U0BOB0001=bob, U0CAROL01=carol"


def slack_signed(body: str, secret: str = SIGNING_SECRET, at: float | None = None) -> dict:
    """The headers Slack sends with an interaction: timestamp and v0 signature of the body."""
    timestamp = str(int(time.time() if at is None else at))
    base = f"v0:{timestamp}:{body}".encode()
    digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": f"v0={digest}",
        "Content-Type": "application/x-www-form-urlencoded",
    }


def click_body(message: dict, action_id: str, user_id: str, request_id: str) -> str:
    """A ``block_actions`` payload as Slack posts it for a button in ``message``."""
    payload = {
        "type": "block_actions",
        "user": {"id": user_id, "username": user_id.lower(), "team_id": "T0FLOWST1"},
        "api_app_id": "A0FLOWST1",
        "token": "legacy-verification-token",
        "team": {"id": "T0FLOWST1", "domain": "flowstone-test"},
        "container": {
            "type": "message",
            "message_ts": message["ts"],
            "channel_id": message["channel_id"],
            "is_ephemeral": False,
        },
        "trigger_id": "1234.5678.abcdef",
        "channel": {"id": message["channel_id"], "name": "approvals"},
        "message": {
            "type": "message",
            "bot_id": "B0FLOWST1",
            "ts": message["ts"],
            "text": message["text"],
            "blocks": message["blocks"],
        },
        "response_url": "https://hooks.slack.com/actions/T0FLOWST1/1/abc",
        "actions": [
            {
                "action_id": action_id,
                "block_id": DECISION_BLOCK_ID,
                "text": {"type": "plain_text", "text": "Approve"},
                "value": request_id,
                "type": "button",
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }
    return urlencode({"payload": json.dumps(payload)})


@dataclass
class Rig:
    http: httpx.Client
    store: ApprovalStore
    slack: object  # FakeSlack
    request: ApprovalRequest
    message: dict  # FakeSlack's copy: chat.update edits it, as Slack's own copy changes
    posted_blocks: list  # the blocks as first posted

    def click(
        self,
        action_id: str = APPROVE_ACTION_ID,
        user_id: str = "U0ALICE01",
        secret: str = SIGNING_SECRET,
        at: float | None = None,
    ) -> httpx.Response:
        body = click_body(self.message, action_id, user_id, self.request.id)
        return self.http.post(
            "/slack/actions", content=body, headers=slack_signed(body, secret, at)
        )

    def decisions(self) -> list:
        return [
            e for e in self.store.audit(self.request.id) if e.to_state in ("approved", "rejected")
        ]


def post_approval_message(fake_slack, request: ApprovalRequest) -> dict:
    """Post the approval_required notification the way the outbox does; the message Slack keeps."""
    client = WebClient(token=fake_slack.token, base_url=fake_slack.base_url)
    notification = events.approval_required(
        request.id,
        request.asset,
        request.partition,
        request.data_version,
        request.summary,
        f"http://viewer.test/approvals/requests/{request.id}?t=x",
        request.approvers,
        request.timeout_at.isoformat(),
    )
    receipt = SlackChannel(client, "#approvals").send(notification, "flowstone-outbox-1")
    (message,) = fake_slack.messages
    assert SlackChannel.parse_receipt(receipt) == (message["channel_id"], message["ts"])
    return message


@pytest.fixture
def rig(store_url: str, fake_slack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    monkeypatch.setenv("FLOWSTONE_SLACK_SIGNING_SECRET", SIGNING_SECRET)
    monkeypatch.setenv("FLOWSTONE_SLACK_USERS", SLACK_USERS)
    monkeypatch.setenv("SLACK_BOT_TOKEN", fake_slack.token)
    monkeypatch.setenv("FLOWSTONE_SLACK_API_URL", fake_slack.base_url)
    store = ApprovalStore(store_url)
    request = store.open_request("promoted_system", "qa|base", "v1", {"f1": 0.91}, POLICY).request
    message = post_approval_message(fake_slack, request)
    signer = LinkSigner("link-secret-0123456789")
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(serve_viewer_app(store, signer, sources=_empty_sources()))
        http = stack.enter_context(httpx.Client(base_url=base, timeout=10))
        yield Rig(http, store, fake_slack, request, message, copy.deepcopy(message["blocks"]))


def test_approval_message_has_approve_and_reject_buttons(rig: Rig) -> None:
    blocks = rig.message["blocks"]
    (decision,) = [b for b in blocks if b.get("block_id") == DECISION_BLOCK_ID]
    approve, reject = decision["elements"]
    assert (approve["action_id"], approve["style"], approve["value"]) == (
        APPROVE_ACTION_ID, "primary", rig.request.id,
    )  # fmt: skip
    assert (reject["action_id"], reject["style"], reject["value"]) == (
        REJECT_ACTION_ID, "danger", rig.request.id,
    )  # fmt: skip
    assert [e["text"]["text"] for e in decision["elements"]] == ["Approve", "Reject"]
    # The link to the page is still there, last, as before.
    assert blocks[-1]["elements"][0]["url"].startswith("http://viewer.test/approvals/requests/")
    # Only messages about something still decidable carry buttons.
    decided = events.approval_decided(rig.request.id, "a", None, True, "alice", None)
    from flowstone.notifications.channels import slack_blocks

    assert not [b for b in slack_blocks(decided)[1] if b.get("block_id") == DECISION_BLOCK_ID]
    escalated = events.approval_timed_out(
        rig.request.id, "a", None, "escalated", escalate_to=["carol"]
    )
    assert [b for b in slack_blocks(escalated)[1] if b.get("block_id") == DECISION_BLOCK_ID]


def test_approve_by_mapped_approver_is_recorded_and_message_updated(rig: Rig) -> None:
    response = rig.click(APPROVE_ACTION_ID, "U0ALICE01")
    assert response.status_code == 200, response.text
    assert response.json()["text"].endswith("Approved by alice via Slack")

    request = rig.store.get(rig.request.id)
    assert (request.state, request.decided_by) == (State.APPROVED, "alice")
    (entry,) = rig.decisions()
    assert (entry.actor, entry.detail.get("via")) == ("alice", "slack")

    assert wait_for(lambda: rig.slack.updates, timeout=10)
    (update,) = rig.slack.updates
    assert (update["channel"], update["ts"]) == (rig.message["channel_id"], rig.message["ts"])
    assert "Approved by alice via Slack" in update["text"]
    texts = json.dumps(update["blocks"])
    assert "Approved by alice via Slack" in texts
    assert APPROVE_ACTION_ID not in texts and REJECT_ACTION_ID not in texts  # buttons gone
    header, *_, link = rig.posted_blocks  # the rest of the message is kept as posted
    assert update["blocks"][0] == header and update["blocks"][-1] == link
    assert not rig.slack.ephemerals


def test_reject_by_mapped_approver(rig: Rig) -> None:
    response = rig.click(REJECT_ACTION_ID, "U0BOB0001")
    assert response.status_code == 200, response.text
    request = rig.store.get(rig.request.id)
    assert (request.state, request.decided_by) == (State.REJECTED, "bob")
    assert rig.decisions()[0].detail.get("via") == "slack"
    assert wait_for(lambda: rig.slack.updates, timeout=10)
    assert "Rejected by bob via Slack" in rig.slack.updates[0]["text"]


def test_wrong_secret_is_refused_and_records_nothing(rig: Rig) -> None:
    response = rig.click(secret="not-the-signing-secret")
    assert response.status_code == 401
    assert "does not match" in response.text
    assert rig.store.get(rig.request.id).state == State.PENDING
    assert not rig.decisions() and not rig.slack.updates and not rig.slack.ephemerals


def test_old_timestamp_is_refused_even_when_correctly_signed(rig: Rig) -> None:
    response = rig.click(at=time.time() - 6 * 60)  # a captured request replayed 6 minutes on
    assert response.status_code == 401
    assert "5 minute window" in response.text
    future = rig.click(at=time.time() + 6 * 60)
    assert future.status_code == 401
    assert rig.store.get(rig.request.id).state == State.PENDING and not rig.decisions()


def test_unsigned_altered_and_malformed_requests_are_refused(rig: Rig) -> None:
    body = click_body(rig.message, APPROVE_ACTION_ID, "U0ALICE01", rig.request.id)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    assert rig.http.post("/slack/actions", content=body, headers=headers).status_code == 401
    # Signed for alice's click, then the user swapped for bob's: the signature no longer fits.
    signed = slack_signed(body)
    altered = body.replace("U0ALICE01", "U0BOB0001")
    assert rig.http.post("/slack/actions", content=altered, headers=signed).status_code == 401
    bad = {**signed, "X-Slack-Request-Timestamp": "yesterday"}
    assert rig.http.post("/slack/actions", content=body, headers=bad).status_code == 401
    non_ascii = {**signed, "X-Slack-Signature": "v0=é".encode()}  # raw UTF-8 bytes
    assert rig.http.post("/slack/actions", content=body, headers=non_ascii).status_code == 401
    garbage = "payload=%7Bnot-json"
    response = rig.http.post("/slack/actions", content=garbage, headers=slack_signed(garbage))
    assert response.status_code == 400
    assert rig.store.get(rig.request.id).state == State.PENDING and not rig.decisions()


def test_unmapped_slack_user_is_refused_with_who_to_ask(rig: Rig) -> None:
    response = rig.click(APPROVE_ACTION_ID, "U0MALLORY")
    assert response.status_code == 200  # Slack's convention: refusals are ephemeral messages
    text = response.json()["text"]
    assert "U0MALLORY" in text and "FLOWSTONE_SLACK_USERS" in text and "alice, bob" in text
    assert rig.store.get(rig.request.id).state == State.PENDING and not rig.decisions()
    assert wait_for(lambda: rig.slack.ephemerals, timeout=10)
    (ephemeral,) = rig.slack.ephemerals
    assert (ephemeral["user"], ephemeral["channel"]) == ("U0MALLORY", rig.message["channel_id"])
    assert "not mapped" in ephemeral["text"]
    assert not rig.slack.updates


def test_mapped_user_who_is_not_an_approver_is_refused(rig: Rig) -> None:
    response = rig.click(APPROVE_ACTION_ID, "U0CAROL01")
    assert response.status_code == 200
    assert "'carol' is not an approver" in response.json()["text"]
    assert rig.store.get(rig.request.id).state == State.PENDING and not rig.decisions()
    assert wait_for(lambda: rig.slack.ephemerals, timeout=10)
    assert rig.slack.ephemerals[0]["user"] == "U0CAROL01"
    assert not rig.slack.updates


def test_second_click_after_a_decision_is_refused_with_the_reason(rig: Rig) -> None:
    assert rig.click(APPROVE_ACTION_ID, "U0ALICE01").status_code == 200
    assert wait_for(lambda: rig.slack.updates, timeout=10)
    response = rig.click(REJECT_ACTION_ID, "U0BOB0001")
    assert response.status_code == 200
    assert "already approved" in response.json()["text"]
    request = rig.store.get(rig.request.id)
    assert (request.state, request.decided_by) == (State.APPROVED, "alice")
    assert len(rig.decisions()) == 1
    assert wait_for(lambda: rig.slack.ephemerals, timeout=10)
    assert "already approved" in rig.slack.ephemerals[0]["text"]
    assert len(rig.slack.updates) == 1  # the message still says approved by alice


def test_other_interactions_are_acknowledged_without_a_decision(rig: Rig) -> None:
    # Slack posts a click on the link button too, and wants a 200 for it.
    body = click_body(rig.message, "link_button", "U0ALICE01", rig.request.id)
    response = rig.http.post("/slack/actions", content=body, headers=slack_signed(body))
    assert response.status_code == 200 and response.content == b""
    assert rig.store.get(rig.request.id).state == State.PENDING


def test_without_a_signing_secret_the_endpoint_is_off(rig: Rig, monkeypatch) -> None:
    monkeypatch.delenv("FLOWSTONE_SLACK_SIGNING_SECRET")
    response = rig.click()
    assert response.status_code == 503
    assert "FLOWSTONE_SLACK_SIGNING_SECRET" in response.text
    assert rig.store.get(rig.request.id).state == State.PENDING and not rig.decisions()


def test_slack_users_parsing_and_validation() -> None:
    assert parse_slack_users("U0ALICE01=alice, W0GRID001 = bob ,") == {
        "U0ALICE01": "alice",
        "W0GRID001": "bob",
    }
    assert parse_slack_users("") == {}
    for bad in ("U0ALICE01", "U0ALICE01=", "U0A=a,U0A=b"):
        with pytest.raises(ApprovalError, match="FLOWSTONE_SLACK_USERS"):
            parse_slack_users(bad)
    with pytest.raises(ApprovalError, match="not a Slack user ID"):
        ApprovalPolicy(slack_users={"alice": "alice"})
    with pytest.raises(ApprovalError, match="one approver's name"):
        ApprovalPolicy(slack_users={"U0ALICE01": "group:admins"})


def test_resource_policy_reads_slack_users_from_env(monkeypatch) -> None:
    from resources.approvals import approvals_resource_from_env

    monkeypatch.setenv("FLOWSTONE_SLACK_USERS", SLACK_USERS)
    policy = approvals_resource_from_env(approvers={"*": ["alice"]}).policy()
    assert policy.slack_users["U0CAROL01"] == "carol"


def test_click_after_the_timeout_is_refused(rig: Rig) -> None:
    from datetime import timedelta

    from flowstone.storage.sql import utcnow

    policy = ApprovalPolicy(approvers={"*": ["alice"]}, timeout_hours=1)
    late = rig.store.open_request(
        "promoted_system", "qa|late", "v1", {}, policy, now=utcnow() - timedelta(hours=2)
    ).request
    body = click_body(rig.message, APPROVE_ACTION_ID, "U0ALICE01", late.id)
    response = rig.http.post("/slack/actions", content=body, headers=slack_signed(body))
    assert response.status_code == 200
    assert "Not recorded" in response.json()["text"]
    assert rig.store.get(late.id).state != State.APPROVED
    assert not [e for e in rig.store.audit(late.id) if e.to_state == "approved"]
    assert not rig.slack.updates
