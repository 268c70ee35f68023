"""Where the approval store lives and which secret signs links, shared by CLI, web and Dagster.

The Dagster resource, ``flowstone approvals ...`` and the web page run in different processes;
they agree through the same environment variables and the same instance-folder defaults.
"""

from __future__ import annotations

import logging
import os

from flowstone.approvals.machine import ApprovalError
from flowstone.paths import instance_dir

DB_URL_ENV = "FLOWSTONE_APPROVALS_DB_URL"
SECRET_ENV = "FLOWSTONE_APPROVAL_SECRET"
BASE_URL_ENV = "FLOWSTONE_APPROVALS_URL"
# The viewer's public URL (flowstone.web.links reads the same variable); the approvals pages
# live under /approvals in the viewer app that `flowstone serve` starts.
VIEWER_URL_ENV = "FLOWSTONE_VIEWER_URL"
# Slack user ID -> approver name, read by the code location and the viewer alike
SLACK_USERS_ENV = "FLOWSTONE_SLACK_USERS"

#: Signs links only in development mode (``--dev`` or ``$FLOWSTONE_APPROVALS_DEV=1``): anyone
#: who reads this file can forge links signed with it, so nothing else ever uses it.
DEV_SIGNING_SECRET = "flowstone-dev-signing-secret-NOT-FOR-PRODUCTION"
#: ``1`` allows the development secret (set by ``--dev``; the offline demo's Dagster process may
#: set it too). A server started with ``--dev`` binds 127.0.0.1 only.
DEV_ENV = "FLOWSTONE_APPROVALS_DEV"
#: The approver a development link names when a request has no approver list (anyone may
#: decide): a fixed identity, never the requester's or a typed name.
DEV_APPROVER = "demo"
#: A personal approval token (``flowstone approvals token create NAME``) for the CLI.
TOKEN_ENV = "FLOWSTONE_APPROVAL_TOKEN"
#: Opt-in: the request header an authenticating proxy (oauth2-proxy) sets to the signed-in
#: user, e.g. ``X-Forwarded-User`` (oauth2-proxy as the reverse proxy). Unset, no header is ever
#: trusted as an identity.
TRUSTED_HEADER_ENV = "FLOWSTONE_APPROVALS_TRUSTED_HEADER"
DEFAULT_BASE_URL = "http://127.0.0.1:8765/approvals"

log = logging.getLogger("flowstone.approvals")
_warned_dev_secret = False  # once per process is enough to be seen, not to drown the log


class MissingSecret(ApprovalError):
    """No signing secret is configured and development mode is off."""


def default_database_url() -> str:
    """``$FLOWSTONE_APPROVALS_DB_URL`` or a SQLite file in the Dagster instance folder."""
    url = os.environ.get(DB_URL_ENV)
    if url:
        return url
    folder = instance_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'flowstone_approvals.db'}"


def dev_mode() -> bool:
    """True when ``$FLOWSTONE_APPROVALS_DEV`` is ``1``/``true``/``yes`` (``--dev`` sets it)."""
    return os.environ.get(DEV_ENV, "").strip().lower() in ("1", "true", "yes")


def enable_dev_mode() -> None:
    """What ``--dev`` does for this process (and the threads it serves from)."""
    os.environ[DEV_ENV] = "1"


def configured_secret(configured: str | None = None) -> str | None:
    """The configured secret or ``$FLOWSTONE_APPROVAL_SECRET``; ``None`` when neither is set."""
    return configured or os.environ.get(SECRET_ENV) or None


def resolve_signing_secret(configured: str | None = None, *, dev: bool | None = None) -> str:
    """The configured secret, else ``$FLOWSTONE_APPROVAL_SECRET``; the public development
    secret only in development mode (``dev``, default :func:`dev_mode`).

    Why refuse instead of falling back: a server or a signer running on the public secret
    accepts links anyone can forge, and the fallback used to be silent enough to ship.
    """
    secret = configured_secret(configured)
    if secret:
        return secret
    if not (dev_mode() if dev is None else dev):
        raise MissingSecret(
            f"approval links: no signing secret. Set {SECRET_ENV} (for example to the output "
            "of `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), or pass --dev "
            f"(or set {DEV_ENV}=1) for a local, loopback-only development setup."
        )
    global _warned_dev_secret
    if not _warned_dev_secret:
        _warned_dev_secret = True
        log.warning(
            "INSECURE (development mode): approval links are signed with FlowStone's built-in "
            "development secret; anyone can forge them. Set %s before real use.",
            SECRET_ENV,
        )
    return DEV_SIGNING_SECRET


def default_base_url() -> str:
    """Public URL of the approvals pages: ``$FLOWSTONE_APPROVALS_URL``, else
    ``$FLOWSTONE_VIEWER_URL/approvals``, else the viewer's default address + ``/approvals``."""
    configured = os.environ.get(BASE_URL_ENV, "").strip()
    if configured:
        return configured.rstrip("/")
    viewer = os.environ.get(VIEWER_URL_ENV, "").strip()
    if viewer:
        return f"{viewer.rstrip('/')}/approvals"
    return DEFAULT_BASE_URL


def parse_slack_users(text: str, source: str = SLACK_USERS_ENV) -> dict[str, str]:
    """``"U012AB3CD=alice, U045EF6GH=bob"`` -> ``{"U012AB3CD": "alice", ...}``.

    One flat variable rather than a file: the viewer and the Dagster code location both read
    it, on whatever host they run. The IDs are checked by :class:`ApprovalPolicy`.
    """
    users: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        user_id, sep, name = item.partition("=")
        if not sep or not user_id.strip() or not name.strip():
            raise ApprovalError(
                f"{source}: {item!r} is not SLACK_USER_ID=approver "
                "(example: U012AB3CD=alice,U045EF6GH=bob)."
            )
        if user_id.strip() in users:
            raise ApprovalError(f"{source}: Slack user {user_id.strip()} is mapped twice.")
        users[user_id.strip()] = name.strip()
    return users


def slack_users_from_env() -> dict[str, str]:
    """The Slack user mapping of ``$FLOWSTONE_SLACK_USERS`` (empty when unset)."""
    return parse_slack_users(os.environ.get(SLACK_USERS_ENV, ""))
