"""The approval flow the sensors drive, as plain functions over the store.

The sensors only translate: Dagster events in, RunRequests and observations out. Everything
that must hold across repeated ticks and daemon restarts (one request per data version, one
notification per state, one launch per approval) is decided here against the durable store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flowstone.approvals.machine import ApprovalPolicy, State
from flowstone.approvals.store import ApprovalRequest, ApprovalStore, OpenResult
from flowstone.notifications import events
from flowstone.notifications.events import Notification
from flowstone.storage.sql import utcnow

#: The run tag that carries the approval request id into the gated run.
APPROVAL_REQUEST_TAG = "flowstone/approval_request"
APPROVED_BY_TAG = "flowstone/approved_by"

Notify = Callable[[Notification], Any]
#: The signed ``(label, url)`` links a notification about a request carries: one per approver
#: allowed to decide it now (each names its approver), see ``ApprovalsResource.request_links``.
LinkFor = Callable[[ApprovalRequest], list[tuple[str, str]]]


def run_key(request_id: str) -> str:
    """Dagster drops a second RunRequest with the same key for the same sensor."""
    return f"approval-{request_id}"


def open_for_version(
    store: ApprovalStore,
    policy: ApprovalPolicy,
    asset: str,
    partition: str | None,
    data_version: str,
    summary: Mapping[str, Any],
    requested_by: str | None = None,
    now: datetime | None = None,
) -> OpenResult:
    """Open the request for one upstream data version (idempotent per version)."""
    return store.open_request(
        asset, partition, data_version, summary, policy, requested_by=requested_by, now=now
    )


def announce_requests(
    store: ApprovalStore, asset: str, notify: Notify, link_for: LinkFor
) -> list[ApprovalRequest]:
    """Tell approvers about every pending request they have not heard of yet."""
    announced = []
    for request in store.unannounced([State.PENDING], asset=asset):
        notify(
            events.approval_required(
                request.id,
                request.asset,
                request.partition,
                request.data_version,
                request.summary,
                link_for(request),
                request.allowed_approvers(),
                f"{request.timeout_at:%Y-%m-%d %H:%M} UTC",
            )
        )
        if store.claim_announcement(request.id, State.PENDING):
            announced.append(request)
    return announced


@dataclass(frozen=True)
class Launch:
    request: ApprovalRequest
    relaunch: bool  # True: an earlier RunRequest never became a run; same run_key again


@dataclass
class DecisionOutcome:
    launches: list[Launch]
    rejected: list[ApprovalRequest]
    timed_out: list[ApprovalRequest]
    approved: list[ApprovalRequest]


def process_decisions(
    store: ApprovalStore,
    asset: str,
    notify: Notify,
    link_for: LinkFor,
    has_run: Callable[[ApprovalRequest], str | None],
    now: datetime | None = None,
    relaunch_after: timedelta = timedelta(minutes=10),
) -> DecisionOutcome:
    """Sweep timeouts, announce decisions, and pick the approvals that need a run.

    ``has_run`` looks a request up among the instance's runs (by the request tag) and returns
    the run id, so an approval whose run exists is never launched again; an approval whose
    RunRequest was emitted but produced no run within ``relaunch_after`` (daemon died between
    tick and launch) is emitted again with the same run key, which Dagster de-duplicates.
    """
    now = now or utcnow()
    store.sweep_timeouts(now=now, asset=asset)

    outcome = DecisionOutcome(launches=[], rejected=[], timed_out=[], approved=[])
    for request in store.unannounced(
        [State.APPROVED, State.REJECTED, State.EXPIRED, State.ESCALATED], asset=asset
    ):
        if request.state in (State.APPROVED, State.REJECTED):
            notify(
                events.approval_decided(
                    request.id,
                    request.asset,
                    request.partition,
                    request.state == State.APPROVED,
                    request.decided_by,
                    request.comment,
                )
            )
        else:
            notify(
                events.approval_timed_out(
                    request.id,
                    request.asset,
                    request.partition,
                    request.state.value,
                    link_for(request) if request.state == State.ESCALATED else [],
                    request.escalation_approvers,
                )
            )
        if not store.claim_announcement(request.id, request.state, now=now):
            continue
        if request.state == State.REJECTED:
            outcome.rejected.append(request)
        elif request.state == State.APPROVED:
            outcome.approved.append(request)
        else:
            outcome.timed_out.append(request)

    for request in store.approved_without_run(asset=asset):
        run_id = has_run(request)
        if run_id:
            store.record_run(request.id, run_id, now=now)
            continue
        if request.run_requested_at is None:
            if store.claim_run(request.id, now=now):
                outcome.launches.append(Launch(request, relaunch=False))
        elif now - request.run_requested_at >= relaunch_after:
            outcome.launches.append(Launch(request, relaunch=True))
    return outcome
