"""The one web app for people: the viewer and the approvals pages (``flowstone serve``).

Why one app: a person follows a link from the Dagster UI, a notification or another page,
and every link lands on the same server, with one address to configure
(``flowstone.web.links``). Building the app reads nothing; each request reads what the assets
stored, so a freshly materialized partition shows on the next page load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from flowstone.approvals.links import LinkSigner
from flowstone.approvals.settings import resolve_signing_secret
from flowstone.approvals.slack_actions import ACTIONS_PATH, SlackActions
from flowstone.approvals.store import ApprovalStore
from flowstone.storage.errors import StorageError
from flowstone.web.approvals import ApprovalsBackend, ApprovalsPages, healthz
from flowstone.web.errors import ViewerError
from flowstone.web.pages import Viewer
from flowstone.web.render import page
from flowstone.web.sources import ViewerSources
from flowstone.web.warehouse import WarehouseBusy

# A held warehouse is released within seconds (a dbt build, a step's write): ask for a reload.
_RETRY = {"Retry-After": "5"}


@dataclass(frozen=True)
class AppSettings:
    """What the app is built from; every field defaults to the code location's settings."""

    sources: ViewerSources | None = None
    approvals_db_url: str | None = None  # default: $FLOWSTONE_APPROVALS_DB_URL or the instance's
    approvals_store: ApprovalStore | None = None  # an open store instead of the URL
    make_signer: Callable[[], LinkSigner] | None = None  # default: $FLOWSTONE_APPROVAL_SECRET


def _error_page(
    request: Request,
    status: int,
    title: str,
    message: str,
    nav: list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return page(
        request,
        "error.html",
        status_code=status,
        headers=headers,
        title=title,
        message=message,
        status=status,
        nav_suites=nav or [],
    )


def create_app(settings: AppSettings | None = None) -> Starlette:
    """The viewer and the approvals pages over ``settings`` (default: the environment)."""
    settings = settings or AppSettings()
    sources = settings.sources or ViewerSources.from_env()
    viewer = Viewer(sources)
    approvals = ApprovalsPages(
        ApprovalsBackend(
            make_store=lambda: settings.approvals_store or ApprovalStore(settings.approvals_db_url),
            make_signer=settings.make_signer or (lambda: LinkSigner(resolve_signing_secret())),
        )
    )

    async def viewer_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ViewerError)
        return _error_page(request, exc.status, exc.title, exc.message, exc.nav)

    async def warehouse_busy(request: Request, exc: Exception) -> Response:
        return _error_page(request, 503, "Warehouse busy", str(exc), headers=_RETRY)

    async def storage_error(request: Request, exc: Exception) -> Response:
        return _error_page(
            request,
            503,
            "Stored values unreadable",
            f"reading the stored asset values failed: {exc}",
            headers=_RETRY,
        )

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error_page(request, 404, "Not found", f"no page at {request.url.path}")

    routes: list[BaseRoute] = [
        Route("/", viewer.index, name="index"),
        Route("/healthz", healthz),
        Route("/suites/{suite}", viewer.suite, name="suite"),
        Route("/suites/{suite}/cases", viewer.cases, name="cases"),
        Route("/suites/{suite}/cases/{case_id:path}", viewer.case, name="case"),
        Route("/suites/{suite}/systems/{system}", viewer.partition, name="partition"),
        Route("/suites/{suite}/systems/{system}/diff", viewer.diff, name="diff"),
        Route("/suites/{suite}/systems/{system}/report.html", viewer.html_report),
        Route("/models/{model:path}/chart.png", viewer.model_chart, name="model_chart"),
        Route("/models/{model:path}", viewer.model, name="model"),
        *approvals.routes(),
        # Slack's Interactivity request URL: the Approve/Reject buttons of approval messages,
        # verified by Slack's request signature (flowstone.approvals.slack_actions).
        Route(
            ACTIONS_PATH,
            SlackActions(lambda: approvals.backend.store).endpoint,
            methods=["POST"],
            name="slack_actions",
        ),
        Mount("/static", app=StaticFiles(packages=[("flowstone.web", "static")]), name="static"),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={
            ViewerError: viewer_error,  # NotFound, BadRequest
            WarehouseBusy: warehouse_busy,
            StorageError: storage_error,
            404: not_found,
        },
    )
