"""The approvals page: pending requests, their summaries, approve and reject buttons.

Served by ``flowstone approvals serve`` with the standard library's threading HTTP server, so
it needs nothing beyond the store and the signing secret. Every page needs a signed link
(``?t=...``); GET never changes state (mail scanners and Slack unfurlers fetch links), only
the POST behind a button decides, and the decision goes through the same store and state
machine as the CLI.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

from jinja2 import Environment

from flowstone.approvals.links import ALL_REQUESTS, InvalidLink, LinkClaims, LinkSigner
from flowstone.approvals.machine import OPEN_STATES, ApprovalError, RequestNotFound
from flowstone.approvals.store import ApprovalRequest, ApprovalStore

log = logging.getLogger("flowstone.approvals.web")

_PAGE = Environment(autoescape=True).from_string(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>FlowStone approvals</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem;max-width:60rem}
.req{border:1px solid #ccc;border-radius:6px;padding:1rem;margin:1rem 0}
.state{font-weight:bold}.msg{padding:.5rem;background:#eef}.err{padding:.5rem;background:#fdd}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left}
</style></head><body>
<h1>FlowStone approvals</h1>
{% if message %}<p class="msg" id="message">{{ message }}</p>{% endif %}
{% if error %}<p class="err" id="error">{{ error }}</p>{% endif %}
{% if not requests %}<p id="empty">Nothing is waiting for a decision.</p>{% endif %}
{% for r in requests %}
<div class="req" id="request-{{ r.id }}">
  <h2>{{ r.asset }}{% if r.partition %} [{{ r.partition }}]{% endif %}</h2>
  <p>Request <code>{{ r.id }}</code> &middot; data version <code>{{ r.data_version }}</code>
  &middot; <span class="state">{{ r.state.value }}</span> &middot; requested {{ r.requested_at.strftime('%Y-%m-%d %H:%M UTC') }}
  {% if r.requested_by %}by {{ r.requested_by }}{% endif %} &middot; times out {{ r.timeout_at.strftime('%Y-%m-%d %H:%M UTC') }}</p>
  <p>Approvers: {{ r.allowed_approvers()|join(', ') if r.allowed_approvers() is not none else 'anyone (none configured)' }}</p>
  {% if r.summary %}<table>{% for k, v in r.summary.items() %}
  <tr><th>{{ k }}</th><td>{{ v if v is string else v|tojson }}</td></tr>{% endfor %}</table>{% endif %}
  {% if r.is_open %}
  <form method="post" action="/requests/{{ r.id }}/decide">
    <input type="hidden" name="t" value="{{ token }}">
    {% if approver %}<p>Deciding as <b>{{ approver }}</b></p>
    {% else %}<label>Your name <input name="by" id="by-{{ r.id }}" required></label>{% endif %}
    <label>Comment <input name="comment" id="comment-{{ r.id }}"></label>
    <button type="submit" name="action" value="approve" id="approve-{{ r.id }}">Approve</button>
    <button type="submit" name="action" value="reject" id="reject-{{ r.id }}">Reject</button>
  </form>
  {% else %}<p>Decided by {{ r.decided_by or 'flowstone' }}{% if r.comment %}: {{ r.comment }}{% endif %}</p>{% endif %}
</div>
{% endfor %}
</body></html>"""
)


class ApprovalsPage:
    """Routes and rendering, independent of the socket server so it is easy to reason about."""

    def __init__(self, store: ApprovalStore, signer: LinkSigner):
        self.store = store
        self.signer = signer

    def render(
        self,
        claims: LinkClaims,
        token: str,
        request_id: str | None,
        message: str | None = None,
        error: str | None = None,
    ) -> str:
        if request_id is None:
            requests = self.store.list(states=sorted(OPEN_STATES))
        else:
            requests = [self.store.get(request_id)]
        return _PAGE.render(
            requests=requests,
            token=token,
            approver=claims.approver,
            message=message,
            error=error,
        )

    def decide(self, claims: LinkClaims, request_id: str, form: dict[str, str]) -> ApprovalRequest:
        action = form.get("action")
        if action not in ("approve", "reject"):
            raise ApprovalError(f"approval request {request_id}: unknown action {action!r}")
        by = claims.approver or form.get("by", "").strip()
        return self.store.decide(
            request_id,
            approve=action == "approve",
            by=by,
            comment=form.get("comment") or None,
            via="web (signed link bound to approver)" if claims.approver else "web",
        )


def _handler_for(page: ApprovalsPage) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "FlowStoneApprovals/1"

        def log_message(self, fmt: str, *args) -> None:  # route access logs to logging
            log.info("%s %s", self.address_string(), fmt % args)

        def _send(self, status: int, body: str, content_type: str = "text/html") -> None:
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", f"{content_type}; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Referrer-Policy", "no-referrer")
            self.end_headers()
            self.wfile.write(data)

        def _claims(self, token: str, request_id: str | None) -> LinkClaims | None:
            try:
                claims = page.signer.verify(token)
            except InvalidLink as exc:
                self._send(HTTPStatus.FORBIDDEN, _PAGE.render(requests=[], error=str(exc)))
                return None
            if request_id is None and claims.scope != ALL_REQUESTS:
                # A single-request link opens that request's page, not the list.
                request_id = claims.scope
            if request_id is not None and not claims.allows(request_id):
                self._send(
                    HTTPStatus.FORBIDDEN,
                    _PAGE.render(requests=[], error="this link is for a different request"),
                )
                return None
            return claims

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/healthz":
                self._send(HTTPStatus.OK, json.dumps({"ok": True}), "application/json")
                return
            token = parse_qs(parts.query).get("t", [""])[0]
            request_id = None
            if parts.path.startswith("/requests/"):
                request_id = parts.path[len("/requests/") :].strip("/") or None
            elif parts.path != "/":
                self._send(HTTPStatus.NOT_FOUND, _PAGE.render(requests=[], error="no such page"))
                return
            claims = self._claims(token, request_id)
            if claims is None:
                return
            if request_id is None and claims.scope != ALL_REQUESTS:
                request_id = claims.scope
            params = parse_qs(parts.query)
            try:
                body = page.render(
                    claims,
                    token,
                    request_id,
                    message=params.get("msg", [None])[0],
                    error=params.get("err", [None])[0],
                )
            except RequestNotFound as exc:
                self._send(HTTPStatus.NOT_FOUND, _PAGE.render(requests=[], error=str(exc)))
                return
            self._send(HTTPStatus.OK, body)

        def do_POST(self) -> None:
            parts = urlsplit(self.path)
            segments = parts.path.strip("/").split("/")
            if len(segments) != 3 or segments[0] != "requests" or segments[2] != "decide":
                self._send(HTTPStatus.NOT_FOUND, _PAGE.render(requests=[], error="no such page"))
                return
            request_id = segments[1]
            length = int(self.headers.get("Content-Length") or 0)
            form = {
                k: v[0] for k, v in parse_qs(self.rfile.read(length).decode("utf-8")).items() if v
            }
            token = form.get("t", "")
            claims = self._claims(token, request_id)
            if claims is None:
                return
            back = "/" if claims.scope == ALL_REQUESTS else f"/requests/{request_id}"
            try:
                decided = page.decide(claims, request_id, form)
            except ApprovalError as exc:
                status = (
                    HTTPStatus.NOT_FOUND
                    if isinstance(exc, RequestNotFound)
                    else HTTPStatus.CONFLICT
                )
                self._send(status, page.render(claims, token, request_id, error=str(exc)))
                return
            message = f"{decided.asset} [{decided.partition}] {decided.state.value} by {decided.decided_by}"
            self.send_response(HTTPStatus.SEE_OTHER)
            self.send_header(
                "Location", f"{back}?t={quote(token, safe='')}&msg={quote(message, safe='')}"
            )
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


def make_server(
    store: ApprovalStore, signer: LinkSigner, host: str = "127.0.0.1", port: int = 3100
) -> ThreadingHTTPServer:
    """A ready-to-serve HTTP server (``port=0`` picks a free port: see ``server_address``)."""
    server = ThreadingHTTPServer((host, port), _handler_for(ApprovalsPage(store, signer)))
    server.daemon_threads = True
    return server


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="flowstone-approvals", daemon=True)
    thread.start()
    return thread
