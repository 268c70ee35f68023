"""HMAC-signed, expiring links from a notification to the approvals page.

A link is a capability: whoever holds it may open the page for one request (or the whole
pending list, scope ``*``). A link that names an approver is also that approver's proof of
identity: the page decides as the named person and never asks for a name. A link naming nobody
only shows requests; deciding then needs a login (a personal token, or a trusted proxy header).
The signature covers every field, so a changed request id, approver or expiry is refused, and
so is a link past its expiry.

The same secret signs the page's login cookie and its form tokens, each under its own derived
key (``purpose``), so a cookie can never be replayed as a link or the other way round.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from urllib.parse import quote

from flowstone.approvals.machine import ApprovalError

ALL_REQUESTS = "*"


class InvalidLink(ApprovalError):
    """A link whose signature does not match or whose time is up."""


class MalformedLink(InvalidLink):
    """A token that is not even shaped like a link (non-ASCII, bad base64, no signature): the
    page answers 400, a bad request, rather than 403, a refused one."""


#: Purposes with their own derived keys: a signed value for one never verifies for another.
LINK, SESSION, FORM = "link", "session", "form"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class LinkClaims:
    """What a verified link allows: which request (or ``*``), as whom, until when."""

    scope: str
    approver: str | None
    expires_at: float

    def allows(self, request_id: str) -> bool:
        return self.scope in (ALL_REQUESTS, request_id)


class LinkSigner:
    """Signs and verifies link tokens with HMAC-SHA256 over a shared secret."""

    def __init__(self, secret: str, ttl_seconds: float = 72 * 3600):
        if not secret:
            raise ApprovalError("approval links: the signing secret is empty")
        self._key = secret.encode("utf-8")
        self.ttl_seconds = ttl_seconds

    def _mac(self, payload: str, purpose: str = LINK) -> str:
        # Links keep the plain key (links already sent stay valid); every other purpose signs
        # with HMAC(secret, purpose), so its values are useless as links.
        key = (
            self._key
            if purpose == LINK
            else hmac.new(self._key, f"flowstone:{purpose}".encode(), hashlib.sha256).digest()
        )
        return _b64(hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest())

    def sign(
        self,
        scope: str,
        approver: str | None = None,
        ttl_seconds: float | None = None,
        now: float | None = None,
        purpose: str = LINK,
    ) -> str:
        expires = (now if now is not None else time.time()) + (
            self.ttl_seconds if ttl_seconds is None else ttl_seconds
        )
        body = {"s": scope, "a": approver, "e": int(expires)}
        payload = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
        return f"{payload}.{self._mac(payload, purpose)}"

    def verify(self, token: str, now: float | None = None, purpose: str = LINK) -> LinkClaims:
        """Return the claims of a genuine, unexpired token; raise :class:`InvalidLink` if not
        (:class:`MalformedLink` when it is not shaped like a token at all)."""
        payload, _, signature = (token or "").partition(".")
        if not payload or not signature:
            raise MalformedLink("approval link is malformed (no signature); ask for a fresh link.")
        if not (payload.isascii() and signature.isascii()):
            # hmac.compare_digest raises TypeError on non-ASCII str: refuse before it does.
            raise MalformedLink(
                "approval link is malformed (characters a signed link never has); ask for a "
                "fresh link."
            )
        if not hmac.compare_digest(signature, self._mac(payload, purpose)):
            raise InvalidLink(
                "approval link signature does not match: the link was altered or signed with a "
                "different secret; ask for a fresh link."
            )
        try:
            body = json.loads(_unb64(payload))
            approver = body.get("a")
            if approver is not None and not isinstance(approver, str):
                raise TypeError(f"approver is {type(approver).__name__}")
            claims = LinkClaims(
                scope=str(body["s"]), approver=approver, expires_at=float(body["e"])
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MalformedLink(f"approval link payload is unreadable ({exc})") from exc
        if (now if now is not None else time.time()) > claims.expires_at:
            raise InvalidLink(
                f"approval link expired at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(claims.expires_at))}; "
                "run `flowstone approvals link` for a fresh one."
            )
        return claims

    def url(
        self,
        base_url: str,
        scope: str,
        approver: str | None = None,
        ttl_seconds: float | None = None,
        now: float | None = None,
    ) -> str:
        """The page URL for ``scope``: one request's page, or the pending list for ``*``."""
        token = quote(self.sign(scope, approver, ttl_seconds=ttl_seconds, now=now), safe="")
        base = base_url.rstrip("/")
        if scope == ALL_REQUESTS:
            return f"{base}/?t={token}"
        return f"{base}/requests/{quote(scope, safe='')}?t={token}"
