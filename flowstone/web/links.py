"""Viewer URLs, built from the viewer's public base URL.

Why a module of its own: asset metadata links into the viewer (``dg.MetadataValue.url``), so
the wiring needs these URLs while the code location loads, without starlette, uvicorn or any
page code. This module imports nothing beyond the standard library, and the app builds its own
links with the same :class:`ViewerLinks`, so a link in the Dagster UI and a link on a page can
never disagree about a path.

The address comes from the environment (``.env.example``): ``FLOWSTONE_VIEWER_URL`` is the
public base URL (behind a proxy, or on another host); unset, it is
``http://$FLOWSTONE_VIEWER_HOST:$FLOWSTONE_VIEWER_PORT`` (default ``http://127.0.0.1:8765``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import quote, urlencode

HOST_ENV = "FLOWSTONE_VIEWER_HOST"
PORT_ENV = "FLOWSTONE_VIEWER_PORT"
URL_ENV = "FLOWSTONE_VIEWER_URL"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
APPROVALS_PATH = "/approvals"
_ANY_INTERFACE = {"0.0.0.0", "::", ""}


def viewer_host() -> str:
    """The interface ``flowstone serve`` binds by default (loopback unless told otherwise)."""
    return os.environ.get(HOST_ENV, "").strip() or DEFAULT_HOST


def viewer_port() -> int:
    """The port ``flowstone serve`` listens on by default."""
    raw = os.environ.get(PORT_ENV, "").strip()
    if not raw:
        return DEFAULT_PORT
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"{PORT_ENV}={raw!r} is not a port number (1-65535)") from None
    if not 0 < port < 65536:
        raise ValueError(f"{PORT_ENV}={raw!r} is not a port number (1-65535)")
    return port


def local_url(host: str, port: int) -> str:
    """The URL a browser on this machine uses for a server bound to ``host:port``."""
    shown = "127.0.0.1" if host in _ANY_INTERFACE else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"  # an IPv6 literal
    return f"http://{shown}:{port}"


def public_base_url() -> str:
    """``$FLOWSTONE_VIEWER_URL``, else the URL of the default host and port."""
    configured = os.environ.get(URL_ENV, "").strip()
    if configured:
        return configured.rstrip("/")
    return local_url(viewer_host(), viewer_port())


def _segment(value: str) -> str:
    """One path segment: a ``/`` inside a name (``org/model``) must not start a new one."""
    return quote(str(value), safe="")


@dataclass(frozen=True)
class ViewerLinks:
    """Every viewer page's URL under ``base`` (a public URL, or a page's root path: "")."""

    base: str = ""

    def _url(self, path: str, query: dict[str, str] | None = None) -> str:
        url = f"{self.base.rstrip('/')}{path}"
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v not in ("", None)})
        return url

    def index(self) -> str:
        return self._url("/")

    def suite(self, suite: str) -> str:
        return self._url(f"/suites/{_segment(suite)}")

    def cases(self, suite: str, **filters: str) -> str:
        """The case list; ``filters`` are its query parameters (tag, metric, failing, ...)."""
        return self._url(f"/suites/{_segment(suite)}/cases", filters)

    def case(self, suite: str, case_id: str) -> str:
        return self._url(f"/suites/{_segment(suite)}/cases/{_segment(case_id)}")

    def partition(self, suite: str, system: str) -> str:
        return self._url(f"/suites/{_segment(suite)}/systems/{_segment(system)}")

    def diff(self, suite: str, system: str, **query: str) -> str:
        path = f"/suites/{_segment(suite)}/systems/{_segment(system)}/diff"
        return self._url(path, query or None)

    def html_report(self, suite: str, system: str) -> str:
        return self._url(f"/suites/{_segment(suite)}/systems/{_segment(system)}/report.html")

    def model(self, model: str) -> str:
        return self._url(f"/models/{_segment(model)}")

    def model_chart(self, model: str) -> str:
        return self._url(f"/models/{_segment(model)}/chart.png")

    def approvals(self) -> str:
        return self._url(f"{APPROVALS_PATH}/")


def _links(base_url: str | None) -> ViewerLinks:
    return ViewerLinks(public_base_url() if base_url is None else base_url)


def index_url(base_url: str | None = None) -> str:
    return _links(base_url).index()


def suite_url(suite: str, base_url: str | None = None) -> str:
    """The suite's comparison page: every system side by side."""
    return _links(base_url).suite(suite)


def cases_url(suite: str, base_url: str | None = None, **filters: str) -> str:
    return _links(base_url).cases(suite, **filters)


def case_url(suite: str, case_id: str, base_url: str | None = None) -> str:
    """One case: input, context, expected answer and every system's output with its scores."""
    return _links(base_url).case(suite, case_id)


def partition_url(suite: str, system: str, base_url: str | None = None) -> str:
    """One suite x system partition: its report, checks and cases."""
    return _links(base_url).partition(suite, system)


def diff_url(suite: str, system: str, base_url: str | None = None) -> str:
    """The partition against its previous materialization."""
    return _links(base_url).diff(suite, system)


def model_url(model: str, base_url: str | None = None) -> str:
    """One model's bake history, quality, profile and chart."""
    return _links(base_url).model(model)
