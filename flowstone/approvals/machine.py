"""The approval state machine: which transitions are legal and who may decide.

The rules live here, apart from persistence, so that the CLI, the web page and the sensors all
refuse the same things with the same words. The store calls :func:`check_transition` inside
its compare-and-set update, so an illegal transition cannot be written by any path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from flowstone.errors import FlowStoneError

GROUP_PREFIX = "group:"
#: Slack member IDs: U... for users, W... for Enterprise Grid users.
_SLACK_USER_ID = re.compile(r"[UW][A-Z0-9]{2,}")


class State(StrEnum):
    """Where an approval request stands.

    ``superseded`` is not a decision: it marks a pending request whose upstream data version was
    replaced by a newer materialization before anyone decided.
    """

    PENDING = "pending"
    ESCALATED = "escalated"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"


#: States in which a request still waits for a human. Escalated requests stay decidable: the
#: escalation widens who is told (and, optionally, who may decide), it does not close the request.
OPEN_STATES: frozenset[State] = frozenset({State.PENDING, State.ESCALATED})

TRANSITIONS: Mapping[State, frozenset[State]] = {
    State.PENDING: frozenset(
        {State.APPROVED, State.REJECTED, State.EXPIRED, State.ESCALATED, State.SUPERSEDED}
    ),
    State.ESCALATED: frozenset({State.APPROVED, State.REJECTED, State.SUPERSEDED}),
    State.APPROVED: frozenset(),
    State.REJECTED: frozenset(),
    State.EXPIRED: frozenset(),
    State.SUPERSEDED: frozenset(),
}


class ApprovalError(FlowStoneError):
    """Base class for approval refusals a person can act on."""


class IllegalTransition(ApprovalError):
    """A transition the state machine does not allow (for example deciding twice)."""


class UnauthorisedApprover(ApprovalError):
    """Someone who is not on the request's approver list tried to decide."""


class RequestNotFound(ApprovalError):
    """No request with that id in the store."""


def check_transition(request_id: str, current: State | str, target: State | str) -> None:
    """Raise :class:`IllegalTransition` unless ``current -> target`` is allowed."""
    current, target = State(current), State(target)
    if target in TRANSITIONS[current]:
        return
    if current not in OPEN_STATES and target in (State.APPROVED, State.REJECTED):
        raise IllegalTransition(
            f"approval request {request_id} is already {current.value}; only a pending or "
            f"escalated request can be {target.value}. Run `flowstone approvals show "
            f"{request_id}` to see who decided and when."
        )
    raise IllegalTransition(
        f"approval request {request_id}: cannot go from {current.value} to {target.value} "
        f"(allowed from {current.value}: "
        f"{', '.join(sorted(s.value for s in TRANSITIONS[current])) or 'nothing, it is final'})."
    )


@dataclass(frozen=True)
class ApprovalPolicy:
    """Who may approve which asset, and what happens when nobody does in time.

    ``approvers`` maps an asset key string (``"evaluation/report"``; ``"*"`` is the fallback) to
    names and ``group:<name>`` entries; ``groups`` maps group names to members. With no entry
    for an asset and no ``"*"``, anyone with a name may decide: convenient for the offline demo,
    and flagged on the request (``approvers`` is ``None``) so a page and the log say so.

    ``slack_users`` maps Slack user IDs (``U012AB3CD``) to approver names: a click on the
    Approve or Reject button of a Slack message is a decision by the mapped name, proven by
    Slack's request signature (``flowstone.approvals.slack_actions``). A Slack user who is not
    in it cannot decide from Slack; being in it grants nothing the approver lists do not.
    """

    approvers: Mapping[str, Sequence[str]] = field(default_factory=dict)
    groups: Mapping[str, Sequence[str]] = field(default_factory=dict)
    allow_self_approval: bool = True
    timeout_hours: float = 72.0
    on_timeout: str = "expire"  # "expire" or "escalate"
    escalation_approvers: Sequence[str] = ()
    slack_users: Mapping[str, str] = field(default_factory=dict)
    #: OS login name -> approver name: ``flowstone approvals approve`` run by that OS user (as
    #: the kernel reports it, not $USER) decides as that approver, without a token.
    os_users: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.on_timeout not in ("expire", "escalate"):
            raise ApprovalError(
                f"approval policy: on_timeout must be 'expire' or 'escalate', got {self.on_timeout!r}"
            )
        if self.timeout_hours <= 0:
            raise ApprovalError(
                f"approval policy: timeout_hours must be positive, got {self.timeout_hours}"
            )
        for user_id, name in self.slack_users.items():
            if not _SLACK_USER_ID.fullmatch(str(user_id)):
                raise ApprovalError(
                    f"approval policy: slack_users key {user_id!r} is not a Slack user ID (like "
                    "U012AB3CD: the member ID under 'Copy member ID' in the user's Slack profile)."
                )
            if not isinstance(name, str) or not name.strip() or name.startswith(GROUP_PREFIX):
                raise ApprovalError(
                    f"approval policy: slack_users[{user_id!r}] must be one approver's name, "
                    f"got {name!r}."
                )

    def _expand(self, entries: Iterable[str]) -> list[str]:
        names: set[str] = set()
        for entry in entries:
            if entry.startswith(GROUP_PREFIX):
                group = entry[len(GROUP_PREFIX) :]
                if group not in self.groups:
                    raise ApprovalError(
                        f"approval policy: approver entry {entry!r} names group {group!r}, which "
                        f"is not defined (known groups: {sorted(self.groups) or 'none'})."
                    )
                names.update(self.groups[group])
            else:
                names.add(entry)
        return sorted(names)

    def approvers_for(self, asset: str) -> list[str] | None:
        """The expanded list of names allowed to decide on ``asset`` (``None``: anyone)."""
        entries = self.approvers.get(asset, self.approvers.get("*"))
        return None if entries is None else self._expand(entries)

    def escalation_names(self) -> list[str]:
        return self._expand(self.escalation_approvers)


def check_approver(
    request_id: str,
    asset: str,
    approver: str,
    allowed: Sequence[str] | None,
    requested_by: str | None,
    allow_self_approval: bool,
) -> None:
    """Raise :class:`UnauthorisedApprover` unless ``approver`` may decide this request."""
    if not approver or not approver.strip():
        raise UnauthorisedApprover(
            f"approval request {request_id}: a decision needs a proven approver (a link signed "
            "for them, a personal token, a trusted proxy login or a mapped Slack or OS user)."
        )
    if allowed is not None and approver not in allowed:
        raise UnauthorisedApprover(
            f"approval request {request_id} for {asset}: {approver!r} is not an approver; "
            f"allowed: {', '.join(allowed) or 'nobody (the approver list is empty)'}. "
            f"Ask one of them, or change the approvers for {asset} in the approvals resource."
        )
    if not allow_self_approval and not requested_by:
        # Unknown is not "someone else": letting it through would make self-approval a matter
        # of launching the run without a requester.
        raise UnauthorisedApprover(
            f"approval request {request_id} for {asset}: self-approval is disabled and the "
            "request does not record who requested it, so nobody can be shown to be someone "
            "else. Rematerialize the upstream from a launcher that records the requester "
            "(the dagster/user run tag), or allow self-approval for this asset."
        )
    if not allow_self_approval and approver == requested_by:
        raise UnauthorisedApprover(
            f"approval request {request_id} for {asset}: {approver!r} requested it and "
            f"self-approval is disabled; another approver must decide."
        )
