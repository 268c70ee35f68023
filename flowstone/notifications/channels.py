"""Delivery channels: Slack (slack_sdk), email (smtplib) and the log.

A channel turns a :class:`Notification` into one message and either delivers it or raises
:class:`DeliveryError`; it never retries by itself. Retrying, backoff and "never twice" are
the outbox's job, so every channel gets the same durable behaviour.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, Protocol

from flowstone.notifications.events import Kind, Notification

log = logging.getLogger("flowstone.notifications")

_SEVERITY_EMOJI = {"info": ":white_check_mark:", "warning": ":warning:", "error": ":x:"}

#: The Approve / Reject buttons of an approval message. Slack posts a click on them to the
#: viewer's ``/slack/actions`` (``flowstone.approvals.slack_actions``) with the request id as
#: the button's value; the block id lets that endpoint find and replace them in the message.
APPROVE_ACTION_ID = "flowstone_approve"
REJECT_ACTION_ID = "flowstone_reject"
DECISION_BLOCK_ID = "flowstone_decision"


class DeliveryError(Exception):
    """A channel could not deliver; ``retry_after`` carries the server's hint in seconds."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Channel(Protocol):
    name: str

    def send(self, notification: Notification, message_key: str) -> str:
        """Deliver once; return a receipt (Slack ts, Message-ID...) or raise DeliveryError."""


def slack_blocks(n: Notification) -> tuple[str, list[dict[str, Any]]]:
    """Fallback text and Block Kit blocks for one notification."""
    emoji = _SEVERITY_EMOJI.get(n.severity, "")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": n.title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{emoji} {n.text}"[:3000]}},
    ]
    if n.fields:
        items = list(n.fields.items())[:10]  # Slack allows at most 10 fields per section
        blocks.append(
            {
                "type": "section",
                "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"[:2000]} for k, v in items],
            }
        )
    request_id = _decidable_request(n)
    if request_id:
        blocks.append(decision_buttons(request_id))
    if n.links:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": label[:75]},
                        "url": url,
                    }
                    for label, url in n.links[:5]
                ],
            }
        )
    return f"{n.title}: {n.text}"[:3000], blocks


def _decidable_request(n: Notification) -> str | None:
    """The request a person can still decide from this message: a new request, or one that
    timed out into ``escalated`` (which stays open). Other kinds get no buttons."""
    request_id = n.fields.get("request")
    if not request_id:
        return None
    if n.kind == Kind.APPROVAL_REQUIRED:
        return request_id
    if n.kind == Kind.APPROVAL_TIMED_OUT and n.fields.get("state") == "escalated":
        return request_id
    return None


def decision_buttons(request_id: str) -> dict[str, Any]:
    """An actions block with Approve and Reject, each carrying the request id.

    A block of its own (before the link buttons) so that the action endpoint can swap exactly
    this block for the outcome and leave the rest of the message as it was.
    """
    return {
        "type": "actions",
        "block_id": DECISION_BLOCK_ID,
        "elements": [
            {
                "type": "button",
                "action_id": APPROVE_ACTION_ID,
                "text": {"type": "plain_text", "text": "Approve"},
                "style": "primary",
                "value": request_id,
            },
            {
                "type": "button",
                "action_id": REJECT_ACTION_ID,
                "text": {"type": "plain_text", "text": "Reject"},
                "style": "danger",
                "value": request_id,
            },
        ],
    }


class SlackChannel:
    """Posts Block Kit messages with ``chat.postMessage`` through a ``slack_sdk.WebClient``.

    Pass the client of a dagster-slack ``SlackResource`` (``resource.get_client()``) or one
    built with a custom ``base_url``. slack_sdk's own retry handlers are removed so that a
    failure surfaces at once and the outbox owns the (durable) retry.

    The receipt is ``<channel id>:<ts>``, the address ``chat.update`` needs: the configured
    channel may be a name (``#approvals``), and only the ID Slack answers with, plus the
    message's ts, names the message for good (see :meth:`parse_receipt`).
    """

    name = "slack"

    def __init__(self, client, channel: str):
        self.client = client
        self.channel = channel
        if hasattr(client, "retry_handlers"):
            client.retry_handlers = []

    def send(self, notification: Notification, message_key: str) -> str:
        from slack_sdk.errors import SlackApiError

        text, blocks = slack_blocks(notification)
        try:
            response = self.client.chat_postMessage(
                channel=self.channel,
                text=text,
                blocks=blocks,
                metadata={
                    "event_type": "flowstone_notification",
                    "event_payload": {"key": message_key},
                },
            )
        except SlackApiError as exc:
            headers = exc.response.headers or {}
            retry_after = headers.get("Retry-After") or headers.get("retry-after")
            raise DeliveryError(
                f"Slack chat.postMessage to {self.channel} failed: HTTP {exc.response.status_code} "
                f"{exc.response.get('error', '')}",
                retry_after=float(retry_after) if retry_after else None,
            ) from exc
        except OSError as exc:  # connection refused, timeouts, DNS: urllib raises OSError kinds
            raise DeliveryError(f"Slack unreachable ({self.client.base_url}): {exc}") from exc
        return self.receipt(
            str(response.get("channel") or self.channel), str(response.get("ts", ""))
        )

    @staticmethod
    def receipt(channel_id: str, ts: str) -> str:
        """The outbox receipt of a posted message: ``<channel id>:<ts>``."""
        return f"{channel_id}:{ts}"

    @staticmethod
    def parse_receipt(receipt: str) -> tuple[str | None, str]:
        """``(channel id, ts)`` of a receipt; rows written before the channel was recorded
        hold the ts alone, and give ``(None, ts)``."""
        channel, sep, ts = receipt.rpartition(":")
        return (channel, ts) if sep else (None, receipt)


class EmailChannel:
    """Sends a plain-text email with smtplib (STARTTLS or SSL when configured)."""

    name = "email"

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        recipients: Sequence[str],
        user: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        use_ssl: bool = False,
        timeout: float = 15.0,
    ):
        if not recipients:
            raise ValueError("email channel: no recipients (set smtp_to)")
        self.host, self.port, self.sender, self.recipients = host, port, sender, list(recipients)
        self.user, self.password = user, password
        self.starttls, self.use_ssl, self.timeout = starttls, use_ssl, timeout

    def message(self, n: Notification, message_key: str) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = f"[FlowStone] {n.title}"
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["Date"] = formatdate(localtime=False)
        # Stable per outbox row: a resend after a crash carries the same id, so mail systems
        # that de-duplicate by Message-ID show it once.
        msg["Message-ID"] = f"<{message_key}@flowstone>"
        lines = [n.text, ""]
        lines += [f"{k}: {v}" for k, v in n.fields.items()]
        if n.links:
            lines.append("")
            lines += [f"{label}: {url}" for label, url in n.links]
        msg.set_content("\n".join(lines))
        return msg

    def send(self, notification: Notification, message_key: str) -> str:
        msg = self.message(notification, message_key)
        smtp: smtplib.SMTP  # or its subclass SMTP_SSL
        try:
            if self.use_ssl:
                smtp = smtplib.SMTP_SSL(
                    self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
                )
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            with smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.user:
                    smtp.login(self.user, self.password or "")
                refused = smtp.send_message(msg)
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(f"SMTP {self.host}:{self.port} failed: {exc}") from exc
        if refused:
            raise DeliveryError(f"SMTP {self.host}:{self.port} refused recipients: {refused}")
        return msg["Message-ID"]


class LogChannel:
    """Writes notifications to the log: the default when no Slack or SMTP is configured."""

    name = "log"

    def __init__(self, logger: logging.Logger | None = None):
        self.logger = logger or log

    def send(self, notification: Notification, message_key: str) -> str:
        level = logging.ERROR if notification.severity == "error" else logging.WARNING
        if notification.severity == "info":
            level = logging.INFO
        fields = " ".join(f"{k}={v}" for k, v in notification.fields.items())
        links = " ".join(url for _, url in notification.links)
        self.logger.log(
            level, "[%s] %s: %s %s %s", notification.kind, notification.title, notification.text,
            fields, links,
        )  # fmt: skip
        return message_key
