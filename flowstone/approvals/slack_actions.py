"""Slack interactive approvals: the Approve and Reject buttons of an approval message.

Why this exists: a button in Slack is the quickest way to decide, and Slack proves who clicked.
Slack posts every click to the app's Interactivity request URL (the viewer's
``/slack/actions``) as a form with one ``payload`` field, signed with the app's signing
secret (HMAC-SHA256 over ``v0:<timestamp>:<body>``). The click counts as a decision only when:

1. the signature verifies with ``$FLOWSTONE_SLACK_SIGNING_SECRET`` and the timestamp is within
   slack_sdk's window (5 minutes), checked by slack_sdk's ``SignatureVerifier``: a forged or
   replayed-later request is a 401 and records nothing. Without a secret the endpoint answers
   503 and never accepts unsigned requests;
2. the Slack user ID maps to an approver name in the policy's ``slack_users``
   (``$FLOWSTONE_SLACK_USERS``): an unmapped user is refused, nothing is recorded;
3. the store accepts the decision by that name (``ApprovalStore.decide(..., via="slack")``):
   not an approver, decided already, timed out... are refused with the store's own words.

The answer to Slack goes out at once (Slack gives up after 3 seconds); updating the message
(``chat.update``: the buttons become the outcome) and telling a refused user why
(``chat.postEphemeral``) run after the answer, with the bot token the notifications use
(``$SLACK_BOT_TOKEN``; ``$FLOWSTONE_SLACK_API_URL`` for another Web API base URL).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from flowstone.approvals.machine import ApprovalError, ApprovalPolicy
from flowstone.approvals.settings import SLACK_USERS_ENV, slack_users_from_env
from flowstone.approvals.store import ApprovalStore
from flowstone.notifications.channels import (
    APPROVE_ACTION_ID,
    DECISION_BLOCK_ID,
    REJECT_ACTION_ID,
)

if TYPE_CHECKING:
    from slack_sdk import WebClient

log = logging.getLogger("flowstone.approvals")

SIGNING_SECRET_ENV = "FLOWSTONE_SLACK_SIGNING_SECRET"
BOT_TOKEN_ENV = "SLACK_BOT_TOKEN"  # the notifications resource reads the same variable
API_URL_ENV = "FLOWSTONE_SLACK_API_URL"
DEFAULT_API_URL = "https://slack.com/api/"
ACTIONS_PATH = "/slack/actions"

#: Slack's interaction payloads carry the whole message; a megabyte is far above any of ours,
#: and the cap keeps an unauthenticated client from making us buffer more before verifying.
MAX_BODY_BYTES = 1 << 20
_DECISIONS = {APPROVE_ACTION_ID: True, REJECT_ACTION_ID: False}


class BadPayload(ValueError):
    """A signed request whose ``payload`` is not a block_actions click we can read."""


# --------------------------------------------------------------------------- configuration


def slack_client(token: str, base_url: str | None = None) -> WebClient:
    """A Web API client like the notifications resource's (same token, same base URL rule)."""
    from slack_sdk import WebClient

    return WebClient(token=token, base_url=base_url or DEFAULT_API_URL, timeout=10)


@dataclass(frozen=True)
class SlackActionsSettings:
    """What the endpoint needs: the signing secret, who is who, and a client to answer with.

    ``make_client`` is ``None`` when no bot token is configured: decisions are still recorded,
    but the message keeps its buttons and a refused user is told only by the HTTP answer.
    """

    signing_secret: str | None
    policy: ApprovalPolicy = field(default_factory=ApprovalPolicy)
    make_client: Callable[[], WebClient] | None = None

    @classmethod
    def from_env(cls) -> SlackActionsSettings:
        """Read per request, like the approvals backend: the viewer starts without Slack
        configured, and a variable set later (or rotated) takes effect without a restart of
        this code path."""
        token = os.environ.get(BOT_TOKEN_ENV, "").strip()
        base_url = os.environ.get(API_URL_ENV, "").strip() or None
        return cls(
            signing_secret=os.environ.get(SIGNING_SECRET_ENV, "").strip() or None,
            policy=ApprovalPolicy(slack_users=slack_users_from_env()),
            make_client=(lambda: slack_client(token, base_url)) if token else None,
        )


# --------------------------------------------------------------------------- the click


@dataclass(frozen=True)
class Click:
    """One press of Approve or Reject, as read from a verified ``block_actions`` payload."""

    request_id: str
    approve: bool
    user_id: str
    user_name: str
    channel_id: str | None
    message_ts: str | None
    message: Mapping[str, Any]


def parse_click(body: bytes) -> Click | None:
    """The click in a signed request body; ``None`` for interactions that are not ours (a
    link button, a shortcut), which Slack still expects a 200 for."""
    try:
        form = parse_qs(body.decode("utf-8"), strict_parsing=True)
        payload = json.loads(form["payload"][0])
    except (UnicodeDecodeError, ValueError, KeyError, IndexError) as exc:
        raise BadPayload(
            "expected a form with a JSON 'payload' field, as Slack sends interactions"
        ) from exc
    if not isinstance(payload, dict) or payload.get("type") != "block_actions":
        return None
    actions = payload.get("actions")
    ours = [
        a
        for a in (actions if isinstance(actions, list) else [])
        if isinstance(a, dict) and a.get("action_id") in _DECISIONS
    ]
    if not ours:
        return None
    action = ours[0]
    user, container = _object(payload, "user"), _object(payload, "container")
    channel, message = _object(payload, "channel"), _object(payload, "message")
    request_id, user_id = action.get("value"), user.get("id")
    if not isinstance(request_id, str) or not request_id:
        raise BadPayload(f"action {action.get('action_id')} carries no request id")
    if not isinstance(user_id, str) or not user_id:
        raise BadPayload("block_actions payload without user.id")
    return Click(
        request_id=request_id,
        approve=_DECISIONS[action["action_id"]],
        user_id=user_id,
        user_name=str(user.get("username") or user.get("name") or user_id),
        channel_id=container.get("channel_id") or channel.get("id"),
        message_ts=container.get("message_ts") or message.get("ts"),
        message=message,
    )


def _object(payload: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = payload.get(key)
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Outcome:
    """What became of a click: ``text`` is what the clicking user is shown."""

    recorded: bool
    text: str


def outcome_blocks(message: Mapping[str, Any], text: str) -> list[dict[str, Any]]:
    """The message's blocks with the Approve/Reject block replaced by ``text``; the rest
    (title, fields, the link to the page) stays as posted."""
    blocks = message.get("blocks")
    kept: list[dict[str, Any]] = []
    replaced = False
    for block in blocks if isinstance(blocks, list) else []:
        if isinstance(block, dict) and block.get("block_id") == DECISION_BLOCK_ID:
            kept.append(_outcome_block(text))
            replaced = True
        elif isinstance(block, dict):
            kept.append(block)
    if not replaced:
        kept.append(_outcome_block(text))
    return kept


def _outcome_block(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


# --------------------------------------------------------------------------- the endpoint


class SlackActions:
    """``POST /slack/actions``: verify, map, decide, answer, then update the message."""

    def __init__(
        self,
        make_store: Callable[[], ApprovalStore],
        settings: SlackActionsSettings | Callable[[], SlackActionsSettings] | None = None,
    ):
        self.make_store = make_store
        self._settings = settings

    def settings(self) -> SlackActionsSettings:
        if self._settings is None:
            return SlackActionsSettings.from_env()
        if isinstance(self._settings, SlackActionsSettings):
            return self._settings
        return self._settings()

    async def endpoint(self, request: Request) -> Response:
        try:
            settings = self.settings()
        except ApprovalError as exc:  # a malformed FLOWSTONE_SLACK_USERS
            return PlainTextResponse(f"Slack actions are misconfigured: {exc}", status_code=503)
        if not settings.signing_secret:
            return PlainTextResponse(
                f"Slack actions are off: set {SIGNING_SECRET_ENV} to the Slack app's Signing "
                "Secret (Basic Information > App Credentials). Unsigned requests are never "
                "accepted.",
                status_code=503,
            )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return PlainTextResponse("request body too large", status_code=413)
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return PlainTextResponse("request body too large", status_code=413)
        refusal = verify_signature(settings.signing_secret, body, request.headers)
        if refusal:
            log.warning("slack actions: refused a request from %s: %s", _peer(request), refusal)
            return PlainTextResponse(refusal, status_code=401)
        try:
            click = parse_click(body)
        except BadPayload as exc:
            return PlainTextResponse(f"malformed Slack interaction: {exc}", status_code=400)
        if click is None:
            return Response(status_code=200)  # acknowledged; not a decision button
        outcome = await run_in_threadpool(self.decide, click, settings)
        follow_up = self.update_message if outcome.recorded else self.tell_user
        return JSONResponse(
            {"response_type": "ephemeral", "replace_original": False, "text": outcome.text},
            background=BackgroundTask(follow_up, click, outcome, settings),
        )

    def decide(self, click: Click, settings: SlackActionsSettings) -> Outcome:
        """Record the click as a decision by the mapped approver, or say why it is not one."""
        verb = "approve" if click.approve else "reject"
        store = self.make_store()
        approver = settings.policy.slack_users.get(click.user_id)
        if approver is None:
            log.warning(
                "slack actions: Slack user %s (%s) tried to %s request %s but is not in "
                "slack_users; nothing recorded",
                click.user_id, click.user_name, verb, click.request_id,
            )  # fmt: skip
            return Outcome(False, self._unmapped_text(store, click))
        try:
            decided = store.decide(click.request_id, click.approve, by=approver, via="slack")
        except ApprovalError as exc:
            log.info(
                "slack actions: %s (Slack %s) could not %s request %s: %s",
                approver, click.user_id, verb, click.request_id, exc,
            )  # fmt: skip
            return Outcome(False, f":no_entry: Not recorded: {exc}")
        log.info(
            "slack actions: request %s %s by %s (Slack user %s)",
            decided.id, decided.state.value, approver, click.user_id,
        )  # fmt: skip
        verdict = "Approved" if click.approve else "Rejected"
        emoji = ":white_check_mark:" if click.approve else ":x:"
        return Outcome(True, f"{emoji} {verdict} by {approver} via Slack")

    @staticmethod
    def _unmapped_text(store: ApprovalStore, click: Click) -> str:
        """Who to ask: the request's approvers when it can be read, and the mapping to fix."""
        try:
            allowed = store.get(click.request_id).allowed_approvers()
        except ApprovalError:
            allowed = None
        ask = f" or ask one of its approvers ({', '.join(allowed)})" if allowed else ""
        return (
            f":no_entry: Not recorded: your Slack account ({click.user_id}) is not mapped to a "
            f"FlowStone approver. Ask a FlowStone admin to add {click.user_id}=<your approver "
            f"name> to slack_users ({SLACK_USERS_ENV}){ask}."
        )

    def update_message(
        self, click: Click, outcome: Outcome, settings: SlackActionsSettings
    ) -> None:
        """Swap the buttons for the outcome (runs after Slack got its answer)."""
        channel, ts = click.channel_id, click.message_ts
        if settings.make_client is None or not channel or not ts:
            log.warning(
                "slack actions: request %s decided, but the Slack message keeps its buttons: %s",
                click.request_id,
                f"set {BOT_TOKEN_ENV} for the viewer"
                if settings.make_client is None
                else "the click carried no channel or message ts",
            )
            return
        text = f"{click.message.get('text') or 'Approval'}: {outcome.text}"[:3000]
        self._call(
            settings,
            "chat.update",
            lambda client: client.chat_update(
                channel=channel,
                ts=ts,
                text=text,
                blocks=outcome_blocks(click.message, outcome.text),
            ),
        )

    def tell_user(self, click: Click, outcome: Outcome, settings: SlackActionsSettings) -> None:
        """Show the refusal to the person who clicked, and only to them."""
        channel = click.channel_id
        if settings.make_client is None or not channel:
            return
        self._call(
            settings,
            "chat.postEphemeral",
            lambda client: client.chat_postEphemeral(
                channel=channel, user=click.user_id, text=outcome.text
            ),
        )

    @staticmethod
    def _call(
        settings: SlackActionsSettings, method: str, call: Callable[[WebClient], Any]
    ) -> None:
        """One Web API call; a failure is logged, never raised: the decision (or refusal) is
        already final, and the approval_decided notification follows through the outbox."""
        from slack_sdk.errors import SlackApiError

        assert settings.make_client is not None
        try:
            call(settings.make_client())
        except SlackApiError as exc:
            log.warning(
                "slack actions: %s failed: %s", method, exc.response.get("error", exc.response)
            )
        except OSError as exc:
            log.warning("slack actions: %s failed, Slack unreachable: %s", method, exc)


def verify_signature(secret: str, body: bytes, headers: Mapping[str, str]) -> str | None:
    """``None`` when Slack signed ``body``, else why not (for the 401 and the log).

    slack_sdk's ``SignatureVerifier`` decides; the checks around it only turn input it would
    crash on (a non-numeric timestamp, a non-ASCII signature, a body that is not UTF-8) into
    a refusal, and name the stale-timestamp case so a skewed clock is easy to spot.
    """
    from slack_sdk.signature import SignatureVerifier

    timestamp = headers.get("x-slack-request-timestamp")
    signature = headers.get("x-slack-signature")
    if not timestamp or not signature:
        return "missing X-Slack-Request-Timestamp or X-Slack-Signature"
    verifier = SignatureVerifier(secret)
    try:
        stale = abs(verifier.clock.now() - int(timestamp)) > 60 * 5
        valid = verifier.is_valid(body=body, timestamp=timestamp, signature=signature)
    except (ValueError, TypeError):  # int(), non-ASCII compare_digest, non-UTF-8 body
        return "malformed Slack signature headers or body"
    if valid:
        return None
    if stale:
        return "X-Slack-Request-Timestamp is outside the 5 minute window (replay or clock skew)"
    return "X-Slack-Signature does not match: wrong signing secret or altered body"


def _peer(request: Request) -> str:
    return request.client.host if request.client else "unknown"
