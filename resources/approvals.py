"""The approvals resource: where the store lives, who may approve what, how links are signed."""

import logging
import os

import dagster as dg
from pydantic import Field

from flowstone.approvals.links import LinkSigner
from flowstone.approvals.machine import ApprovalPolicy
from flowstone.approvals.settings import (
    DEV_APPROVER,
    SECRET_ENV,
    MissingSecret,
    configured_secret,
    default_base_url,
    dev_mode,
    resolve_signing_secret,
    slack_users_from_env,
)
from flowstone.approvals.store import ApprovalRequest, ApprovalStore

log = logging.getLogger("flowstone.approvals")


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
    slack_users: dict[str, str] = Field(
        default_factory=dict,
        description="Slack user ID (U012AB3CD) -> approver name: who a click on the Approve or "
        "Reject button of a Slack message decides as. Default: $FLOWSTONE_SLACK_USERS "
        "('U012AB3CD=alice,U045EF6GH=bob'), which the viewer's /slack/actions reads too.",
    )
    os_users: dict[str, str] = Field(
        default_factory=dict,
        description="OS login name -> approver name: `flowstone approvals approve` run by that "
        "OS user decides as that approver without a token (snapshotted on each request).",
    )
    signing_secret: str | None = Field(
        default=None,
        description="HMAC secret for approval links; use dg.EnvVar('FLOWSTONE_APPROVAL_SECRET'). "
        "Unset: $FLOWSTONE_APPROVAL_SECRET; with neither, notifications carry no links (the "
        "public development secret signs them only with $FLOWSTONE_APPROVALS_DEV=1).",
    )
    base_url: str | None = Field(
        default=None,
        description="Public URL of the approvals pages in the viewer (`flowstone serve`); default "
        "$FLOWSTONE_APPROVALS_URL, else $FLOWSTONE_VIEWER_URL/approvals, else "
        "http://127.0.0.1:8765/approvals.",
    )
    link_ttl_hours: float = Field(default=72.0, description="How long a notification link works.")
    approver_links: bool = Field(
        default=True,
        description="Notifications carry one link per approver, each signed for them ('Decide "
        "as alice'). A message's readers can use any link in it, so post approval notifications "
        "where only approvers read; False: one link naming nobody, and deciding needs a login.",
    )

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
            slack_users=self.slack_users,
            os_users=self.os_users,
        )

    def signer(self) -> LinkSigner:
        return LinkSigner(
            resolve_signing_secret(self.signing_secret), ttl_seconds=self.link_ttl_hours * 3600
        )

    def uses_dev_secret(self) -> bool:
        """True when links would be signed with the public development secret (only in
        development mode; flag it loudly)."""
        return configured_secret(self.signing_secret) is None and dev_mode()

    def request_link(self, request_id: str, approver: str | None = None) -> str:
        """One signed link to ``request_id``'s page, naming ``approver`` (``None``: nobody)."""
        return self.signer().url(self.base_url or default_base_url(), request_id, approver)

    def request_links(self, request: ApprovalRequest) -> list[tuple[str, str]]:
        """The links a notification about ``request`` carries.

        One per approver allowed to decide now, each signed for that approver: the link is
        their proof of identity, the page says "You are X". A request anyone may decide (no
        approver list) gets one link naming nobody (the page asks for a login), or in
        development mode one for the fixed ``demo`` identity, never a requester-derived or
        typed name. No secret and no development mode: no links, and the text says how to
        decide instead (the signer refuses rather than sign with the public secret).
        """
        try:
            signer = self.signer()
        except MissingSecret as exc:
            log.warning("approval request %s: notification without links: %s", request.id, exc)
            return []
        base = self.base_url or default_base_url()
        approvers = request.allowed_approvers()
        if not self.approver_links:
            return [("Review (log in to decide)", signer.url(base, request.id))]
        if approvers is None:
            if self.uses_dev_secret():
                return [(f"Decide as {DEV_APPROVER}", signer.url(base, request.id, DEV_APPROVER))]
            return [("Review (log in to decide)", signer.url(base, request.id))]
        return [(f"Decide as {name}", signer.url(base, request.id, name)) for name in approvers]


def approvals_resource_from_env(**config) -> ApprovalsResource:
    """The resource with the signing secret as ``dg.EnvVar('FLOWSTONE_APPROVAL_SECRET')`` when
    that variable is set (an EnvVar of a missing variable would fail initialisation); unset,
    notifications carry no links (development mode: links signed with the public development
    secret, every use logged as INSECURE).
    ``config`` carries the rest (approvers, groups, timeout_hours, on_timeout...).
    ``slack_users`` defaults to ``$FLOWSTONE_SLACK_USERS``: the viewer process that receives
    Slack's button clicks has no Dagster resources and reads the same variable."""
    if os.environ.get(SECRET_ENV) and "signing_secret" not in config:
        config["signing_secret"] = dg.EnvVar(SECRET_ENV)
    if "slack_users" not in config:
        config["slack_users"] = slack_users_from_env()
    return ApprovalsResource(**config)
