"""``flowstone approvals ...``: list, inspect and decide approval requests, print links,
manage personal approval tokens.

The CLI talks to the same store as the sensors (``$FLOWSTONE_APPROVALS_DB_URL`` or the SQLite
file in the instance folder), so a decision here is picked up by the next sensor tick.

Who decides is proven, never typed: a personal token (``--token`` or
``$FLOWSTONE_APPROVAL_TOKEN``), or the OS user running the command when the request's policy
maps it (``os_users``). ``--dev`` (a local setup with no secret configured) decides as the OS
login name. Whoever runs the CLI holds the store's database credentials, which can write
anything: the proof keeps honest people honest and the audit log right; it is not a wall
against the database's own administrators.
"""

from __future__ import annotations

import json
import os

import typer

from flowstone.approvals.links import ALL_REQUESTS, LinkSigner
from flowstone.approvals.machine import OPEN_STATES, ApprovalError, State
from flowstone.approvals.settings import (
    SECRET_ENV,
    TOKEN_ENV,
    configured_secret,
    default_base_url,
    enable_dev_mode,
    resolve_signing_secret,
)
from flowstone.approvals.store import ApprovalRequest, ApprovalStore

app = typer.Typer(help="Human approval gates: list, show, approve, reject, link, token, serve.")
token_app = typer.Typer(help="Personal approval tokens: create, list, revoke.")
app.add_typer(token_app, name="token")

_DB_HELP = "Database URL (default: $FLOWSTONE_APPROVALS_DB_URL or the instance folder's SQLite)."


def _store(db: str | None) -> ApprovalStore:
    return ApprovalStore(db)


def _line(r: ApprovalRequest) -> str:
    partition = f" [{r.partition}]" if r.partition else ""
    who = f" by {r.decided_by}" if r.decided_by else ""
    return (
        f"{r.id}  {r.state.value:<10} {r.asset}{partition}  version={r.data_version}  "
        f"requested={r.requested_at:%Y-%m-%d %H:%M}{who}"
    )


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=1)


@app.command("list")
def list_requests(
    state: str = typer.Option(
        "open",
        help="open (pending+escalated), all, or one state: " + ", ".join(s.value for s in State),
    ),
    asset: str | None = typer.Option(None, help="Only this asset key, e.g. evaluation/report."),
    db: str | None = typer.Option(None, help=_DB_HELP),
) -> None:
    """List approval requests, newest first."""
    if state == "open":
        states = sorted(OPEN_STATES)
    elif state == "all":
        states = None
    else:
        try:
            states = [State(state)]
        except ValueError:
            _fail(
                ValueError(
                    f"--state {state!r} is not open, all or one of {[s.value for s in State]}"
                )
            )
    requests = _store(db).list(states=states, asset=asset)
    if not requests:
        typer.echo("no approval requests match")
    for request in requests:
        typer.echo(_line(request))


@app.command()
def show(request_id: str, db: str | None = typer.Option(None, help=_DB_HELP)) -> None:
    """Show one request with its summary and audit trail."""
    store = _store(db)
    try:
        request = store.get(request_id)
    except ApprovalError as exc:
        _fail(exc)
    typer.echo(_line(request))
    approvers = request.allowed_approvers()
    typer.echo(f"approvers: {', '.join(approvers) if approvers is not None else 'anyone'}")
    typer.echo(f"timeout:   {request.timeout_at:%Y-%m-%d %H:%M} UTC -> {request.on_timeout}")
    if request.comment:
        typer.echo(f"comment:   {request.comment}")
    if request.run_id:
        typer.echo(f"run:       {request.run_id}")
    typer.echo("summary:")
    typer.echo(json.dumps(request.summary, indent=2, sort_keys=True))
    typer.echo("audit:")
    for entry in store.audit(request_id):
        arrow = f" {entry.from_state or '-'} -> {entry.to_state}" if entry.to_state else ""
        note = f"  ({entry.comment})" if entry.comment else ""
        typer.echo(f"  {entry.at:%Y-%m-%d %H:%M:%S} {entry.event}{arrow} by {entry.actor}{note}")


def os_login() -> str | None:
    """The login name of the real user id, as the kernel reports it: ``$USER`` and
    ``$LOGNAME`` (which ``getpass.getuser`` prefers) are whatever the caller sets."""
    try:
        import pwd
    except ImportError:  # not a POSIX system: no OS-user identity
        return None
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid with no passwd entry (some containers)
        return None


def cli_identity(
    store: ApprovalStore, request: ApprovalRequest, token: str | None, dev: bool
) -> tuple[str, str]:
    """``(approver, via)`` for a CLI decision: a token, else the mapped OS user, else (only
    with ``--dev``) the OS login name; :class:`ApprovalError` with the way out otherwise."""
    token = token or os.environ.get(TOKEN_ENV) or None
    if token:
        return store.approver_for_token(token), "cli (token)"
    login = os_login()
    if login and login in request.os_users:
        return request.os_users[login], f"cli (OS user {login})"
    if dev and login:
        return login, "cli (--dev, OS user)"
    raise ApprovalError(
        f"approval request {request.id}: who is deciding? Pass --token (or set {TOKEN_ENV}) "
        "with your personal token (an administrator creates it with `flowstone approvals token "
        f"create NAME`), or ask for OS user {login or '(unknown)'} to be mapped to you in the "
        "approvals policy's os_users."
    )


def _check_dev(dev: bool) -> None:
    """``--dev`` is for a local setup without a secret; a configured one means it is not."""
    if dev and configured_secret():
        _fail(
            ApprovalError(
                f"--dev is for a local setup without {SECRET_ENV}; this one has it set. Decide "
                "with --token (or a mapped OS user) instead."
            )
        )


def _decide(
    request_id: str,
    approve: bool,
    token: str | None,
    dev: bool,
    comment: str | None,
    db: str | None,
) -> None:
    _check_dev(dev)
    store = _store(db)
    try:
        by, via = cli_identity(store, store.get(request_id), token, dev)
        request = store.decide(request_id, approve=approve, by=by, comment=comment, via=via)
    except ApprovalError as exc:
        _fail(exc)
    typer.echo(_line(request))


_TOKEN_HELP = f"Your personal approval token (default ${TOKEN_ENV})."
_DEV_HELP = (
    "Local setup without a secret: decide as your OS login name (refused when "
    f"{SECRET_ENV} is set)."
)


@app.command()
def approve(
    request_id: str,
    token: str | None = typer.Option(None, "--token", help=_TOKEN_HELP),
    dev: bool = typer.Option(False, "--dev", help=_DEV_HELP),
    comment: str | None = typer.Option(None, "--comment", help="Why (kept in the audit log)."),
    db: str | None = typer.Option(None, help=_DB_HELP),
) -> None:
    """Approve a pending request; the next sensor tick launches the gated run."""
    _decide(request_id, True, token, dev, comment, db)


@app.command()
def reject(
    request_id: str,
    token: str | None = typer.Option(None, "--token", help=_TOKEN_HELP),
    dev: bool = typer.Option(False, "--dev", help=_DEV_HELP),
    comment: str | None = typer.Option(None, "--comment", help="Why (recorded on the asset)."),
    db: str | None = typer.Option(None, help=_DB_HELP),
) -> None:
    """Reject a pending request; the rejection is recorded on the gated asset and announced."""
    _decide(request_id, False, token, dev, comment, db)


@app.command()
def link(
    request_id: str = typer.Argument(ALL_REQUESTS, help="A request id, or * for the list page."),
    approver: str | None = typer.Option(
        None,
        "--approver",
        "--by",
        help="Sign the link for one approver: it decides as them. Without: the page shows "
        "the request and asks for a login to decide.",
    ),
    ttl_hours: float = typer.Option(72.0, help="Hours until the link stops working."),
    base_url: str | None = typer.Option(None, help="Page URL (default $FLOWSTONE_APPROVALS_URL)."),
    dev: bool = typer.Option(
        False, "--dev", help=f"Sign with the public development secret when {SECRET_ENV} is unset."
    ),
) -> None:
    """Print a signed link to the approvals page (needs the signing secret: holding it is
    what lets an administrator vouch for an approver)."""
    if dev:
        enable_dev_mode()
    try:
        signer = LinkSigner(resolve_signing_secret())
    except ApprovalError as exc:
        _fail(exc)
    typer.echo(
        signer.url(
            base_url or default_base_url(), request_id, approver, ttl_seconds=ttl_hours * 3600
        )
    )


@token_app.command("create")
def token_create(
    approver: str = typer.Argument(..., help="The approver the token proves, as in the policy."),
    db: str | None = typer.Option(None, help=_DB_HELP),
) -> None:
    """Create a personal token for APPROVER and print it once (only its hash is stored)."""
    try:
        token_id, token = _store(db).create_token(approver)
    except ApprovalError as exc:
        _fail(exc)
    typer.echo(token)
    typer.secho(
        f"token {token_id} for {approver}: shown once, stored hashed. Give it to {approver} "
        f"only; they pass it as --token, ${TOKEN_ENV} or on the approvals page's login. "
        f"Revoke with `flowstone approvals token revoke {token_id}`.",
        err=True,
    )


@token_app.command("list")
def token_list(
    approver: str | None = typer.Option(None, help="Only this approver's tokens."),
    db: str | None = typer.Option(None, help=_DB_HELP),
) -> None:
    """List tokens (ids, owners, dates; never the tokens)."""
    tokens = _store(db).tokens(approver)
    if not tokens:
        typer.echo("no approval tokens")
    for t in tokens:
        status = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "active"
        used = f"last used {t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never used"
        typer.echo(
            f"{t.id}  {t.approver:<20} created {t.created_at:%Y-%m-%d %H:%M}  {status}, {used}"
        )


@token_app.command("revoke")
def token_revoke(
    token_id: str = typer.Argument(..., help="The token's id, from `token list`."),
    db: str | None = typer.Option(None, help=_DB_HELP),
) -> None:
    """Revoke a token: every front end refuses it from now on."""
    try:
        token = _store(db).revoke_token(token_id)
    except ApprovalError as exc:
        _fail(exc)
    typer.echo(f"token {token.id} of {token.approver} revoked")


# `flowstone approvals serve` starts the viewer app, which hosts the approvals pages; it is
# mounted by flowstone/cli.py (flowstone.web imports this package, not the other way round).
