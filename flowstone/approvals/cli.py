"""``flowstone approvals ...``: list, inspect and decide approval requests, print links.

The CLI talks to the same store as the sensors (``$FLOWSTONE_APPROVALS_DB_URL`` or the SQLite
file in the instance folder), so a decision here is picked up by the next sensor tick.
"""

from __future__ import annotations

import json

import typer

from flowstone.approvals.links import ALL_REQUESTS, LinkSigner
from flowstone.approvals.machine import OPEN_STATES, ApprovalError, State
from flowstone.approvals.settings import default_base_url, resolve_signing_secret
from flowstone.approvals.store import ApprovalRequest, ApprovalStore

app = typer.Typer(help="Human approval gates: list, show, approve, reject, serve.")

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


def _decide(request_id: str, approve: bool, by: str, comment: str | None, db: str | None) -> None:
    try:
        request = _store(db).decide(request_id, approve=approve, by=by, comment=comment)
    except ApprovalError as exc:
        _fail(exc)
    typer.echo(_line(request))


@app.command()
def approve(
    request_id: str,
    by: str = typer.Option(..., "--by", help="Your name, as listed among the approvers."),
    comment: str | None = typer.Option(None, "--comment", help="Why (kept in the audit log)."),
    db: str | None = typer.Option(None, help=_DB_HELP),
) -> None:
    """Approve a pending request; the next sensor tick launches the gated run."""
    _decide(request_id, True, by, comment, db)


@app.command()
def reject(
    request_id: str,
    by: str = typer.Option(..., "--by", help="Your name, as listed among the approvers."),
    comment: str | None = typer.Option(None, "--comment", help="Why (recorded on the asset)."),
    db: str | None = typer.Option(None, help=_DB_HELP),
) -> None:
    """Reject a pending request; the rejection is recorded on the gated asset and announced."""
    _decide(request_id, False, by, comment, db)


@app.command()
def link(
    request_id: str = typer.Argument(ALL_REQUESTS, help="A request id, or * for the list page."),
    by: str | None = typer.Option(None, "--by", help="Bind the link to one approver."),
    ttl_hours: float = typer.Option(72.0, help="Hours until the link stops working."),
    base_url: str | None = typer.Option(None, help="Page URL (default $FLOWSTONE_APPROVALS_URL)."),
) -> None:
    """Print a signed link to the approvals page."""
    signer = LinkSigner(resolve_signing_secret())
    typer.echo(
        signer.url(base_url or default_base_url(), request_id, by, ttl_seconds=ttl_hours * 3600)
    )


# `flowstone approvals serve` starts the viewer app, which hosts the approvals pages; it is
# mounted by flowstone/cli.py (flowstone.web imports this package, not the other way round).
