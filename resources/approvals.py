"""The approvals resource: where the store lives, who may approve what, how links are signed."""

import os

import dagster as dg
from pydantic import Field

from flowstone.approvals.links import LinkSigner
from flowstone.approvals.machine import ApprovalPolicy
from flowstone.approvals.settings import SECRET_ENV, default_base_url, resolve_signing_secret
from flowstone.approvals.store import ApprovalStore


class ApprovalsResource(dg.ConfigurableResource):
    """Configuration shared by the approval sensors and the gated assets.

    The CLI and the web page read the same store through ``$FLOWSTONE_APPROVALS_DB_URL`` (or
    the instance folder) and the same ``$FLOWSTONE_APPROVAL_SECRET``; each request carries a
    snapshot of its approver list, so they need no copy of this policy.
    """

    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the approval store (postgresql://... for shared "
        "deployments). Default: $FLOWSTONE_APPROVALS_DB_URL or SQLite in the instance folder.",
    )
    approvers: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Asset key string ('evaluation/report', '*' as fallback) -> names and "
        "'group:<name>' entries allowed to decide. No entry: anyone (logged as a warning).",
    )
    groups: dict[str, list[str]] = Field(
        default_factory=dict, description="Group name -> member names."
    )
    allow_self_approval: bool = Field(
        default=True, description="May the person who triggered the upstream run approve it?"
    )
    timeout_hours: float = Field(default=72.0, description="Hours a request waits for a decision.")
    on_timeout: str = Field(
        default="expire", description="'expire' (closed) or 'escalate' (stays open, widened)."
    )
    escalation_approvers: list[str] = Field(
        default_factory=list,
        description="Names or 'group:<name>' who are told, and may decide, once escalated.",
    )
    signing_secret: str | None = Field(
        default=None,
        description="HMAC secret for approval links; use dg.EnvVar('FLOWSTONE_APPROVAL_SECRET'). "
        "Unset: $FLOWSTONE_APPROVAL_SECRET, else an insecure dev secret (logged as a warning).",
    )
    base_url: str | None = Field(
        default=None,
        description="Public URL of the approvals pages in the viewer (`flowstone serve`); default "
        "$FLOWSTONE_APPROVALS_URL, else $FLOWSTONE_VIEWER_URL/approvals, else "
        "http://127.0.0.1:8765/approvals.",
    )
    link_ttl_hours: float = Field(default=72.0, description="How long a notification link works.")

    def store(self) -> ApprovalStore:
        return ApprovalStore(self.database_url)

    def policy(self) -> ApprovalPolicy:
        return ApprovalPolicy(
            approvers=self.approvers,
            groups=self.groups,
            allow_self_approval=self.allow_self_approval,
            timeout_hours=self.timeout_hours,
            on_timeout=self.on_timeout,
            escalation_approvers=self.escalation_approvers,
        )

    def signer(self) -> LinkSigner:
        return LinkSigner(
            resolve_signing_secret(self.signing_secret), ttl_seconds=self.link_ttl_hours * 3600
        )

    def uses_dev_secret(self) -> bool:
        """True when links are signed with the public development secret (flag it loudly)."""
        return not (self.signing_secret or os.environ.get(SECRET_ENV))

    def request_link(self, request_id: str) -> str:
        return self.signer().url(self.base_url or default_base_url(), request_id)


def approvals_resource_from_env(**config) -> ApprovalsResource:
    """The resource with the signing secret as ``dg.EnvVar('FLOWSTONE_APPROVAL_SECRET')`` when
    that variable is set (an EnvVar of a missing variable would fail initialisation); unset,
    links are signed with the development secret and every use logs an INSECURE warning.
    ``config`` carries the rest (approvers, groups, timeout_hours, on_timeout...)."""
    if os.environ.get(SECRET_ENV) and "signing_secret" not in config:
        config["signing_secret"] = dg.EnvVar(SECRET_ENV)
    return ApprovalsResource(**config)
