"""Where the approval store lives and which secret signs links, shared by CLI, web and Dagster.

The Dagster resource, ``flowstone approvals ...`` and the web page run in different processes;
they agree through the same environment variables and the same instance-folder defaults.
"""

from __future__ import annotations

import logging
import os

from flowstone.paths import instance_dir

DB_URL_ENV = "FLOWSTONE_APPROVALS_DB_URL"
SECRET_ENV = "FLOWSTONE_APPROVAL_SECRET"
BASE_URL_ENV = "FLOWSTONE_APPROVALS_URL"
# The viewer's public URL (flowstone.web.links reads the same variable); the approvals pages
# live under /approvals in the viewer app that `flowstone serve` starts.
VIEWER_URL_ENV = "FLOWSTONE_VIEWER_URL"

#: Used only when no secret is configured, so the offline demo works. Anyone who reads this
#: file can forge links signed with it; every use is logged as a warning.
DEV_SIGNING_SECRET = "flowstone-dev-signing-secret-NOT-FOR-PRODUCTION"
DEFAULT_BASE_URL = "http://127.0.0.1:8765/approvals"

log = logging.getLogger("flowstone.approvals")
_warned_dev_secret = False  # once per process is enough to be seen, not to drown the log


def default_database_url() -> str:
    """``$FLOWSTONE_APPROVALS_DB_URL`` or a SQLite file in the Dagster instance folder."""
    url = os.environ.get(DB_URL_ENV)
    if url:
        return url
    folder = instance_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'flowstone_approvals.db'}"


def resolve_signing_secret(configured: str | None = None) -> str:
    """The configured secret, else ``$FLOWSTONE_APPROVAL_SECRET``, else the flagged dev secret."""
    secret = configured or os.environ.get(SECRET_ENV)
    if secret:
        return secret
    global _warned_dev_secret
    if _warned_dev_secret:
        return DEV_SIGNING_SECRET
    _warned_dev_secret = True
    log.warning(
        "INSECURE: approval links are signed with FlowStone's built-in development secret. "
        "Anyone can forge them. Set %s (or ApprovalsResource.signing_secret) before real use.",
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
