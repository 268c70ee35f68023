"""The approval state machine: which transitions are legal and who may decide.

The rules live here, apart from persistence, so that the CLI, the web page and the sensors all
refuse the same things with the same words. The store calls :func:`check_transition` inside
its compare-and-set update, so an illegal transition cannot be written by any path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from flowstone.errors import FlowStoneError

GROUP_PREFIX = "group:"


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
    """

    approvers: Mapping[str, Sequence[str]] = field(default_factory=dict)
    groups: Mapping[str, Sequence[str]] = field(default_factory=dict)
    allow_self_approval: bool = True
    timeout_hours: float = 72.0
    on_timeout: str = "expire"  # "expire" or "escalate"
    escalation_approvers: Sequence[str] = ()

    def __post_init__(self) -> None:
        if self.on_timeout not in ("expire", "escalate"):
            raise ApprovalError(
                f"approval policy: on_timeout must be 'expire' or 'escalate', got {self.on_timeout!r}"
            )
        if self.timeout_hours <= 0:
            raise ApprovalError(
                f"approval policy: timeout_hours must be positive, got {self.timeout_hours}"
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
            f"approval request {request_id}: a decision needs the approver's name (--by NAME)."
        )
    if allowed is not None and approver not in allowed:
        raise UnauthorisedApprover(
            f"approval request {request_id} for {asset}: {approver!r} is not an approver; "
            f"allowed: {', '.join(allowed) or 'nobody (the approver list is empty)'}. "
            f"Ask one of them, or change the approvers for {asset} in the approvals resource."
        )
    if not allow_self_approval and requested_by and approver == requested_by:
        raise UnauthorisedApprover(
            f"approval request {request_id} for {asset}: {approver!r} requested it and "
            f"self-approval is disabled; another approver must decide."
        )
