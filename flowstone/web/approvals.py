"""The approvals pages inside the viewer app: pending requests, approve and reject buttons.

Moved here from the standard library server ``flowstone approvals serve`` used to run; the
rules did not change. Every page needs a signed link (``?t=...``); GET never changes state
(mail scanners and Slack unfurlers fetch links), only the POST behind a button decides, and
the decision goes through the same store and state machine as the CLI. The pages live under
``/approvals`` (``links.APPROVALS_PATH``); a link signed for the old server's root
(``/?t=...``, ``/requests/<id>``) is redirected there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from flowstone.approvals.links import ALL_REQUESTS, InvalidLink, LinkClaims, LinkSigner
from flowstone.approvals.machine import OPEN_STATES, ApprovalError, RequestNotFound
from flowstone.approvals.store import ApprovalRequest, ApprovalStore
from flowstone.web.links import APPROVALS_PATH
from flowstone.web.render import environment

# Links are capabilities: keep them out of caches and out of Referer headers.
_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


@dataclass
class ApprovalsBackend:
    """The store and the signer, built on the first approvals request: the viewer must start
    (and show results) even when the approval database is unreachable."""

    make_store: Callable[[], ApprovalStore]
    make_signer: Callable[[], LinkSigner]

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._store: ApprovalStore | None = None
        self._signer: LinkSigner | None = None

    @property
    def store(self) -> ApprovalStore:
        with self._lock:
            if self._store is None:
                self._store = self.make_store()
            return self._store

    @property
    def signer(self) -> LinkSigner:
        with self._lock:
            if self._signer is None:
                self._signer = self.make_signer()
            return self._signer


class ApprovalsPages:
    """Routes and rendering of the approvals pages."""

    def __init__(self, backend: ApprovalsBackend):
        self.backend = backend

    # -- rendering ----------------------------------------------------------------------

    def _html(self, request: Request, status: int, **context) -> HTMLResponse:
        root = f"{request.scope.get('root_path', '')}{APPROVALS_PATH}"
        context.setdefault("requests", [])
        body = (
            environment()
            .get_template("approvals.html")
            .render(
                decide_url=lambda rid: f"{root}/requests/{quote(rid, safe='')}/decide",
                viewer_url=f"{request.scope.get('root_path', '')}/",
                **context,
            )
        )
        return HTMLResponse(body, status_code=status, headers=_HEADERS)

    def _listing(
        self,
        request: Request,
        claims: LinkClaims,
        token: str,
        request_id: str | None,
        status: int = 200,
        message: str | None = None,
        error: str | None = None,
    ) -> HTMLResponse:
        store = self.backend.store
        if request_id is None:
            requests = store.list(states=sorted(OPEN_STATES))
        else:
            requests = [store.get(request_id)]
        return self._html(
            request,
            status,
            requests=requests,
            token=token,
            approver=claims.approver,
            message=message,
            error=error,
        )

    def _claims(self, token: str, request_id: str | None) -> LinkClaims | str:
        """The link's claims, or why it is refused."""
        try:
            claims = self.backend.signer.verify(token)
        except InvalidLink as exc:
            return str(exc)
        if request_id is not None and not claims.allows(request_id):
            return "this link is for a different request"
        return claims

    # -- endpoints ----------------------------------------------------------------------

    def show(self, request: Request) -> Response:
        """GET the pending list or one request; never changes state."""
        token = request.query_params.get("t", "")
        request_id = request.path_params.get("request_id") or None
        claims = self._claims(token, request_id)
        if isinstance(claims, str):
            return self._html(request, 403, error=claims)
        if request_id is None and claims.scope != ALL_REQUESTS:
            request_id = claims.scope  # a one-request link opens that request, not the list
        try:
            return self._listing(
                request,
                claims,
                token,
                request_id,
                message=request.query_params.get("msg"),
                error=request.query_params.get("err"),
            )
        except RequestNotFound as exc:
            return self._html(request, 404, error=str(exc))

    async def decide(self, request: Request) -> Response:
        """POST a decision from a button: through the store's state machine, then back."""
        request_id = request.path_params["request_id"]
        raw = (await request.body()).decode("utf-8")
        form = {k: v[0] for k, v in parse_qs(raw).items() if v}
        token = form.get("t", "")
        claims = self._claims(token, request_id)
        if isinstance(claims, str):
            return self._html(request, 403, error=claims)
        try:
            decided = await run_in_threadpool(self._decide, claims, request_id, form)
        except ApprovalError as exc:
            status = 404 if isinstance(exc, RequestNotFound) else 409
            return await run_in_threadpool(
                self._listing, request, claims, token, request_id, status, None, str(exc)
            )
        root = f"{request.scope.get('root_path', '')}{APPROVALS_PATH}"
        back = (
            f"{root}/"
            if claims.scope == ALL_REQUESTS
            else f"{root}/requests/{quote(request_id, safe='')}"
        )
        message = (
            f"{decided.asset} [{decided.partition}] {decided.state.value} by {decided.decided_by}"
        )
        return RedirectResponse(
            f"{back}?t={quote(token, safe='')}&msg={quote(message, safe='')}",
            status_code=303,
            headers=_HEADERS,
        )

    def _decide(self, claims: LinkClaims, request_id: str, form: dict[str, str]) -> ApprovalRequest:
        action = form.get("action")
        if action not in ("approve", "reject"):
            raise ApprovalError(f"approval request {request_id}: unknown action {action!r}")
        by = claims.approver or form.get("by", "").strip()
        return self.backend.store.decide(
            request_id,
            approve=action == "approve",
            by=by,
            comment=form.get("comment") or None,
            via="web (signed link bound to approver)" if claims.approver else "web",
        )

    def routes(self) -> list[BaseRoute]:
        return [
            Route(f"{APPROVALS_PATH}/", self.show, methods=["GET"], name="approvals"),
            Route(APPROVALS_PATH, _to_slash, methods=["GET"]),
            Route(
                f"{APPROVALS_PATH}/requests/{{request_id}}",
                self.show,
                methods=["GET"],
                name="approvals_request",
            ),
            Route(
                f"{APPROVALS_PATH}/requests/{{request_id}}/decide",
                self.decide,
                methods=["POST"],
                name="approvals_decide",
            ),
            # Links signed for the page's old home at the server root.
            Route("/requests/{request_id}", _old_request_link, methods=["GET"]),
        ]


def old_list_link(request: Request) -> Response | None:
    """``/?t=...``: a list link signed for the old approvals server, now under /approvals."""
    if "t" not in request.query_params:
        return None
    root = request.scope.get("root_path", "")
    return RedirectResponse(f"{root}{APPROVALS_PATH}/?{request.url.query}", status_code=307)


def _old_request_link(request: Request) -> Response:
    root = request.scope.get("root_path", "")
    rid = quote(request.path_params["request_id"], safe="")
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(f"{root}{APPROVALS_PATH}/requests/{rid}{query}", status_code=307)


def _to_slash(request: Request) -> Response:
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(
        f"{request.scope.get('root_path', '')}{APPROVALS_PATH}/{query}", status_code=307
    )


def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True})
