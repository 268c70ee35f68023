"""The approvals pages inside the viewer app: pending requests, approve and reject buttons.

GET never changes state (mail scanners and Slack unfurlers fetch links); only the POST behind
a button decides, through the store's ``decide``, the same door as the CLI and Slack.

Who decides is proven, never typed (a name in the form is ignored). In order:

1. a link signed for one approver (``?t=...`` naming them): the page says "You are X";
2. ``Authorization: Bearer <personal token>`` (``flowstone approvals token create NAME``);
3. the login cookie the page's token form sets (signed, HttpOnly, SameSite=Lax);
4. opt-in, the header an authenticating proxy sets (``$FLOWSTONE_APPROVALS_TRUSTED_HEADER``,
   e.g. oauth2-proxy's ``X-Auth-Request-User``); only safe when nothing but the proxy can
   reach the app.

A link naming nobody shows requests and asks for a login to decide. Cookie and header
identities travel with every request a browser makes, so their forms carry a signed form
token (CSRF). Input a signed link or a form never contains (non-ASCII tokens, a body that is
not UTF-8, an oversized body) is a 400, not a crash. The pages live under ``/approvals``
(``links.APPROVALS_PATH``); a link signed for the old server's root is redirected there.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from flowstone.approvals.links import (
    ALL_REQUESTS,
    FORM,
    SESSION,
    InvalidLink,
    LinkClaims,
    LinkSigner,
    MalformedLink,
)
from flowstone.approvals.machine import OPEN_STATES, ApprovalError, RequestNotFound
from flowstone.approvals.settings import TRUSTED_HEADER_ENV
from flowstone.approvals.store import ApprovalRequest, ApprovalStore, InvalidToken
from flowstone.web.links import APPROVALS_PATH
from flowstone.web.render import environment

# Links are capabilities: keep them out of caches and out of Referer headers.
_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
SESSION_COOKIE = "flowstone_approver"
SESSION_HOURS = 12.0
#: A decision form is a few hundred bytes; anything far larger is not one.
MAX_FORM_BYTES = 64 * 1024


class BadRequest(Exception):
    """Input no page or link produces: answered with 400."""


@dataclass(frozen=True)
class Identity:
    """A proven approver and how it was proven (kept in the audit log as ``via``)."""

    approver: str
    via: str
    ambient: bool  # sent by the browser on its own (cookie, proxy header): needs a form token


def trusted_header() -> str | None:
    """The proxy identity header, when the operator opted in; ``None`` otherwise."""
    name = os.environ.get(TRUSTED_HEADER_ENV, "").strip()
    return name or None


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

    def _root(self, request: Request) -> str:
        return f"{request.scope.get('root_path', '')}{APPROVALS_PATH}"

    def _html(
        self, request: Request, status: int, headers: dict[str, str] | None = None, **context: Any
    ) -> HTMLResponse:
        root = self._root(request)
        context.setdefault("requests", [])
        context.setdefault("approver", None)
        context.setdefault("token", "")
        context.setdefault("csrf", "")
        context.setdefault("login", False)
        body = (
            environment()
            .get_template("approvals.html")
            .render(
                decide_url=lambda rid: f"{root}/requests/{quote(rid, safe='')}/decide",
                login_url=f"{root}/login",
                logout_url=f"{root}/logout",
                next_url=request.url.path,
                viewer_url=f"{request.scope.get('root_path', '')}/",
                **context,
            )
        )
        return HTMLResponse(body, status_code=status, headers={**_HEADERS, **(headers or {})})

    def _refusal(self, request: Request, exc: Exception) -> HTMLResponse:
        """400 for input no page produces, 401 for a missing or unknown identity, 403 for a
        refused link (or a server without a signing secret)."""
        if isinstance(exc, BadRequest | MalformedLink):
            return self._html(request, 400, error=f"bad request: {exc}")
        if isinstance(exc, InvalidToken):
            return self._unauthorised(request, str(exc))
        if isinstance(exc, InvalidLink):
            return self._html(request, 403, error=str(exc))
        # No secret (MissingSecret): no link can be genuine here, so it is refused all the same.
        return self._html(request, 403, error=f"approvals are not configured: {exc}")

    def _unauthorised(self, request: Request, error: str) -> HTMLResponse:
        return self._html(
            request,
            401,
            headers={"WWW-Authenticate": 'Bearer realm="flowstone-approvals"'},
            error=error,
            login=True,
        )

    def _listing(
        self,
        request: Request,
        claims: LinkClaims | None,
        identity: Identity | None,
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
        csrf = ""
        if identity is not None and identity.ambient:
            csrf = self.backend.signer.sign(
                identity.approver, identity.approver, ttl_seconds=SESSION_HOURS * 3600, purpose=FORM
            )
        return self._html(
            request,
            status,
            requests=requests,
            token=token,
            approver=identity.approver if identity else None,
            via=identity.via if identity else None,
            csrf=csrf,
            login=identity is None,
            message=message,
            error=error,
        )

    # -- who is asking ------------------------------------------------------------------

    def _link(self, token: str, request_id: str | None) -> LinkClaims | None:
        """The link's claims (``None`` without a link); raises when it is refused."""
        if not token:
            return None
        claims = self.backend.signer.verify(token)
        if request_id is not None and not claims.allows(request_id):
            raise InvalidLink("this link is for a different request")
        return claims

    def _identity(self, request: Request, claims: LinkClaims | None) -> Identity | None:
        """Who is asking, proven (see the module docstring for the order); ``None``: nobody."""
        if claims is not None and claims.approver:
            return Identity(claims.approver, "web (link signed for the approver)", ambient=False)
        authorization = request.headers.get("authorization", "")
        if authorization:
            scheme, _, credential = authorization.partition(" ")
            if scheme.lower() != "bearer" or not credential.strip():
                raise BadRequest("Authorization must be 'Bearer <approval token>'")
            approver = self.backend.store.approver_for_token(credential.strip())
            return Identity(approver, "web (token)", ambient=False)
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            try:
                session = self.backend.signer.verify(cookie, purpose=SESSION)
            except InvalidLink:
                session = None  # expired or from another secret: log in again
            if session is not None and session.approver:
                return Identity(session.approver, "web (token login)", ambient=True)
        header = trusted_header()
        if header:
            user = request.headers.get(header, "").strip()
            if user:
                return Identity(user, f"web (proxy header {header})", ambient=True)
        return None

    def _check_form_token(self, identity: Identity, form: dict[str, str]) -> None:
        if not identity.ambient:
            return
        try:
            claims = self.backend.signer.verify(form.get("csrf", ""), purpose=FORM)
        except InvalidLink:
            claims = None
        if claims is None or claims.approver != identity.approver:
            raise InvalidLink(
                "this form was not issued to you by this page (missing or stale form token); "
                "reload the page and decide again."
            )

    # -- endpoints ----------------------------------------------------------------------

    def show(self, request: Request) -> Response:
        """GET the pending list or one request; never changes state."""
        request_id = request.path_params.get("request_id") or None
        token = request.query_params.get("t", "")
        try:
            claims = self._link(token, request_id)
            identity = self._identity(request, claims)
        except (ApprovalError, BadRequest) as exc:
            return self._refusal(request, exc)
        if claims is None and identity is None:
            return self._unauthorised(
                request, "log in with your approval token, or open a link from a notification"
            )
        if request_id is None and claims is not None and claims.scope != ALL_REQUESTS:
            request_id = claims.scope  # a one-request link opens that request, not the list
        try:
            return self._listing(
                request,
                claims,
                identity,
                token,
                request_id,
                message=request.query_params.get("msg"),
                error=request.query_params.get("err"),
            )
        except RequestNotFound as exc:
            return self._html(request, 404, error=str(exc))

    async def _form(self, request: Request) -> dict[str, str]:
        """The urlencoded body, capped and strictly UTF-8; :class:`BadRequest` otherwise."""
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_FORM_BYTES):
            raise BadRequest(f"a form is at most {MAX_FORM_BYTES} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise BadRequest(f"a form is at most {MAX_FORM_BYTES} bytes")
        try:
            raw = body.decode("utf-8")
            parsed = parse_qs(raw, max_num_fields=50, errors="strict")
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadRequest(f"the form is not UTF-8 urlencoded ({exc})") from exc
        return {k: v[0] for k, v in parsed.items() if v}

    async def decide(self, request: Request) -> Response:
        """POST a decision from a button: through the store's ``decide``, then back."""
        request_id = request.path_params["request_id"]
        try:
            form = await self._form(request)
            token = form.get("t", "")
            claims = self._link(token, request_id)
            identity = await run_in_threadpool(self._identity, request, claims)
            if identity is None:
                return self._unauthorised(
                    request,
                    "deciding needs a proven approver: open the link signed for you, or log in "
                    "with your approval token (a typed name is not accepted).",
                )
            self._check_form_token(identity, form)
        except ClientDisconnect:
            return Response(status_code=400)
        except (ApprovalError, BadRequest) as exc:
            return self._refusal(request, exc)
        try:
            decided = await run_in_threadpool(self._decide, identity, request_id, form)
        except ApprovalError as exc:
            status = 404 if isinstance(exc, RequestNotFound) else 409
            return await run_in_threadpool(
                self._listing, request, claims, identity, token, request_id, status, None, str(exc)
            )
        root = self._root(request)
        scope = claims.scope if claims is not None else ALL_REQUESTS
        back = (
            f"{root}/" if scope == ALL_REQUESTS else f"{root}/requests/{quote(request_id, safe='')}"
        )
        message = (
            f"{decided.asset} [{decided.partition}] {decided.state.value} by {decided.decided_by}"
        )
        link = f"t={quote(token, safe='')}&" if token else ""
        return RedirectResponse(
            f"{back}?{link}msg={quote(message, safe='')}", status_code=303, headers=_HEADERS
        )

    def _decide(self, identity: Identity, request_id: str, form: dict[str, str]) -> ApprovalRequest:
        action = form.get("action")
        if action not in ("approve", "reject"):
            raise ApprovalError(f"approval request {request_id}: unknown action {action!r}")
        return self.backend.store.decide(
            request_id,
            approve=action == "approve",
            by=identity.approver,
            comment=form.get("comment") or None,
            via=identity.via,
        )

    async def login(self, request: Request) -> Response:
        """POST a personal token from the login form: a signed session cookie, then back."""
        try:
            form = await self._form(request)
            approver = await run_in_threadpool(
                self.backend.store.approver_for_token, form.get("token", "").strip()
            )
            session = self.backend.signer.sign(
                "session", approver, ttl_seconds=SESSION_HOURS * 3600, purpose=SESSION
            )
        except ClientDisconnect:
            return Response(status_code=400)
        except (ApprovalError, BadRequest) as exc:
            return self._refusal(request, exc)
        root = self._root(request)
        target = form.get("next", "")
        if not target.startswith(f"{root}/") or target.startswith("//"):
            target = f"{root}/"  # only back into the approvals pages: no open redirect
        response = RedirectResponse(target, status_code=303, headers=_HEADERS)
        response.set_cookie(
            SESSION_COOKIE,
            session,
            max_age=int(SESSION_HOURS * 3600),
            path=f"{root}/",
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
        return response

    def logout(self, request: Request) -> Response:
        root = self._root(request)
        response = RedirectResponse(f"{root}/", status_code=303, headers=_HEADERS)
        response.delete_cookie(SESSION_COOKIE, path=f"{root}/")
        return response

    def routes(self) -> list[BaseRoute]:
        return [
            Route(f"{APPROVALS_PATH}/", self.show, methods=["GET"], name="approvals"),
            Route(APPROVALS_PATH, _to_slash, methods=["GET"]),
            Route(f"{APPROVALS_PATH}/login", self.login, methods=["POST"], name="approvals_login"),
            Route(f"{APPROVALS_PATH}/logout", self.logout, methods=["POST"]),
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
