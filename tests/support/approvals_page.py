"""The approvals pages served the way `flowstone serve` serves them: the viewer app (uvicorn)
on a free loopback port, in a thread.

The approval tests and the UI browser test both need it; the base URL yielded is the pages'
own (``http://127.0.0.1:<port>/approvals``), what ``FLOWSTONE_APPROVALS_URL`` points at.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from flowstone.approvals.links import LinkSigner
from flowstone.approvals.store import ApprovalStore


@contextlib.contextmanager
def serve_viewer_app(
    store: ApprovalStore | None = None,
    signer: LinkSigner | None = None,
    sources=None,
) -> Iterator[str]:
    """The whole app (viewer and approvals pages) on 127.0.0.1 and a free port; yields its
    base URL and stops the server on exit. ``sources`` (a ``ViewerSources``) defaults to the
    environment's; ``store``/``signer`` to the approvals defaults."""
    from flowstone.web.app import AppSettings, create_app
    from flowstone.web.server import ServerThread

    settings = AppSettings(
        sources=sources,
        approvals_store=store,
        make_signer=(lambda: signer) if signer is not None else None,
    )
    with ServerThread(create_app(settings)) as server:
        yield server.url


@contextlib.contextmanager
def serve_approvals_page(store: ApprovalStore, signer: LinkSigner) -> Iterator[str]:
    """The app with ``store`` and ``signer``; yields the approvals pages' base URL."""
    with serve_viewer_app(store, signer, sources=_empty_sources()) as base:
        yield f"{base}/approvals"


def _empty_sources():
    """Viewer sources under a fresh temp folder: these tests look at approvals only."""
    import tempfile

    from flowstone.storage.location import parse_object_store_url
    from flowstone.web.sources import ViewerSources

    root = Path(tempfile.mkdtemp(prefix="flowstone-approvals-viewer-"))
    return ViewerSources(
        object_store=parse_object_store_url(str(root / "objects"), "test"),
        warehouse=root / "warehouse.duckdb",
        reports_dir=root / "reports",
        suites_dir=root / "suites",
        bake_workspace=root / "baking",
        deployments_dir=root / "deployments",
    )
