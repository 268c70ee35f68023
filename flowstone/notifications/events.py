"""The things FlowStone tells people about, as channel-neutral notifications.

One :class:`Notification` is rendered by every channel (Slack blocks, an email, a log line),
so an approval request reads the same in Slack and in a mailbox. ``dedup_key`` names the fact
a notification is about; the outbox uses it to send a repeated failure of the same partition
once per window instead of once per retry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


class Kind:
    """Notification kinds (strings so that stored rows stay readable)."""

    APPROVAL_REQUIRED = "approval_required"
    APPROVAL_DECIDED = "approval_decided"
    APPROVAL_TIMED_OUT = "approval_timed_out"
    MATERIALIZATION_FAILED = "materialization_failed"
    CHECK_FAILED = "asset_check_failed"
    EVALUATION_REGRESSION = "evaluation_regression"
    BAKE_READY = "bake_ready"


@dataclass(frozen=True)
class Notification:
    kind: str
    title: str
    text: str
    fields: dict[str, str] = field(default_factory=dict)
    links: list[tuple[str, str]] = field(default_factory=list)
    severity: str = "info"  # info | warning | error
    dedup_key: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Notification:
        data = json.loads(text)
        data["links"] = [tuple(link) for link in data.get("links", [])]
        return cls(**data)


def _where(asset: str, partition: str | None) -> str:
    return f"{asset} [{partition}]" if partition else asset


def _flat(summary: Mapping[str, Any], limit: int = 12) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in list(summary.items())[:limit]:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out[str(key)] = text if len(text) <= 200 else text[:197] + "..."
    return out


def approval_required(
    request_id: str,
    asset: str,
    partition: str | None,
    data_version: str,
    summary: Mapping[str, Any],
    links: str | Sequence[tuple[str, str]],
    approvers: Sequence[str] | None,
    timeout_at: str,
) -> Notification:
    """``links``: ``(label, url)`` pairs, one signed for each approver ("Decide as alice"),
    or one that names nobody (the page then asks for a login); none when links cannot be
    signed (no secret), and the text says how to decide instead. A plain URL (the older
    single-link form) is labelled "Review and decide"."""
    if isinstance(links, str):
        links = [("Review and decide", links)]
    text = (
        f"Data version {data_version} of {_where(asset, partition)} waits for a decision "
        f"by {timeout_at}. Approvers: {', '.join(approvers) if approvers else 'anyone'}."
    )
    if not links:
        text += f" Decide with `flowstone approvals approve|reject {request_id} --token ...`."
    return Notification(
        kind=Kind.APPROVAL_REQUIRED,
        title=f"Approval required: {_where(asset, partition)}",
        text=text,
        fields={"request": request_id, **_flat(summary)},
        links=list(links),
        dedup_key=f"approval_required:{request_id}",
    )


def approval_decided(
    request_id: str,
    asset: str,
    partition: str | None,
    approved: bool,
    by: str | None,
    comment: str | None,
) -> Notification:
    verdict = "approved" if approved else "rejected"
    return Notification(
        kind=Kind.APPROVAL_DECIDED,
        title=f"{verdict.capitalize()}: {_where(asset, partition)}",
        text=f"{by or 'someone'} {verdict} request {request_id}"
        + (f": {comment}" if comment else "."),
        fields={"request": request_id, "decision": verdict, "by": by or ""},
        severity="info" if approved else "warning",
        dedup_key=f"approval_decided:{request_id}",
    )


def approval_timed_out(
    request_id: str,
    asset: str,
    partition: str | None,
    outcome: str,
    links: Sequence[tuple[str, str]] = (),
    escalate_to: Sequence[str] = (),
) -> Notification:
    text = f"Nobody decided request {request_id} in time; it is now {outcome}."
    if outcome == "escalated" and escalate_to:
        text += f" Escalated to {', '.join(escalate_to)}."
    return Notification(
        kind=Kind.APPROVAL_TIMED_OUT,
        title=f"Approval {outcome}: {_where(asset, partition)}",
        text=text,
        fields={"request": request_id, "state": outcome},
        links=list(links),
        severity="warning",
        dedup_key=f"approval_timed_out:{request_id}",
    )


def materialization_failed(
    asset: str, partition: str | None, error: str, run_id: str, run_url: str | None
) -> Notification:
    return Notification(
        kind=Kind.MATERIALIZATION_FAILED,
        title=f"Materialization failed: {_where(asset, partition)}",
        text=error if len(error) <= 1500 else error[:1497] + "...",
        fields={"asset": asset, "partition": partition or "", "run": run_id},
        links=[("Open the run", run_url)] if run_url else [],
        severity="error",
        # Same asset and partition failing again: one message per suppression window.
        dedup_key=f"materialization_failed:{asset}:{partition or ''}",
    )


def check_failed(
    asset: str,
    partition: str | None,
    check_name: str,
    description: str | None,
    metadata: Mapping[str, Any],
    run_id: str,
    run_url: str | None,
) -> Notification:
    regression = "regression" in check_name.lower()
    return Notification(
        kind=Kind.EVALUATION_REGRESSION if regression else Kind.CHECK_FAILED,
        title=(
            f"Evaluation regression: {_where(asset, partition)}"
            if regression
            else f"Check {check_name} failed: {_where(asset, partition)}"
        ),
        text=description or f"asset check {check_name} did not pass",
        fields={"check": check_name, "run": run_id, **_flat(metadata, limit=8)},
        links=[("Open the run", run_url)] if run_url else [],
        severity="warning",
        dedup_key=f"check_failed:{asset}:{partition or ''}:{check_name}",
    )


def evaluation_regression(
    asset: str,
    partition: str | None,
    regressions: Mapping[str, Any],
    link: str | None = None,
) -> Notification:
    return Notification(
        kind=Kind.EVALUATION_REGRESSION,
        title=f"Evaluation regression: {_where(asset, partition)}",
        text="Metrics fell below the previous materialization of this partition.",
        fields=_flat(regressions),
        links=[("Open the report", link)] if link else [],
        severity="warning",
        dedup_key=f"evaluation_regression:{asset}:{partition or ''}",
    )


def bake_ready(
    model: str, figures: Mapping[str, Any], link: str | None = None, version: str | None = None
) -> Notification:
    return Notification(
        kind=Kind.BAKE_READY,
        title=f"Bake ready: {model}",
        text=f"The baked artifact for {model} is packaged and waits for deployment.",
        fields=_flat(figures),
        links=[("Review", link)] if link else [],
        dedup_key=f"bake_ready:{model}:{version or ''}",
    )
