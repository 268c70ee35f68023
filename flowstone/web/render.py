"""Templates and the number formats every page shares.

Why one environment: numbers read the same on every page (3 decimals, a dash for a missing
value, never ``nan``), and every template autoescapes, so a case's text or a system's output
can never inject markup into the page.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from flowstone.web.links import ViewerLinks
from flowstone.web.records import number_or_none

MISSING = "—"


def _shown(value: Any, spec: str) -> str:
    """``value`` formatted by ``spec``, a dash for None or NaN (an unset threshold is not a
    number); what counts as a figure is decided once, in ``records.number_or_none``."""
    figure = number_or_none(value)
    return MISSING if figure is None else format(figure, spec)


def number(value: Any, digits: int = 3) -> str:
    """``0.812`` for a figure."""
    return _shown(value, f".{digits}f")


def percent(value: Any) -> str:
    return _shown(value, ".1%")


def signed(value: Any) -> str:
    return _shown(value, "+.3f")


def when(value: Any) -> str:
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M:%S}"
    return MISSING if value is None else str(value)


def megabytes(value: Any) -> str:
    """Bytes as MB (kB under one MB: a tiny model is not "0.0 MB")."""
    if not value:
        return MISSING
    size = float(value)
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


@functools.cache
def environment() -> Environment:
    """Built on first use (no template is read at import time)."""
    env = Environment(
        loader=PackageLoader("flowstone.web", "templates"),
        autoescape=select_autoescape(("html",), default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=number, pct=percent, signed=signed, when=when, mb=megabytes)
    return env


def links_for(request: Request) -> ViewerLinks:
    """Links relative to where the app is mounted (``root_path`` behind a proxy)."""
    return ViewerLinks(request.scope.get("root_path", "") or "")


def page(
    request: Request,
    template: str,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    links = links_for(request)
    body = environment().get_template(template).render(links=links, request=request, **context)
    return HTMLResponse(body, status_code=status_code, headers=headers)
