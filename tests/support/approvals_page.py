"""The approvals page (flowstone.approvals.web) served on a free loopback port, in a thread.

The approval tests and the UI browser test both serve it the way `flowstone approvals serve`
does and each had its own copy of the start and shutdown.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from flowstone.approvals.links import LinkSigner
from flowstone.approvals.store import ApprovalStore
from flowstone.approvals.web import make_server, serve_in_thread


@contextlib.contextmanager
def serve_approvals_page(store: ApprovalStore, signer: LinkSigner) -> Iterator[str]:
    """``make_server`` on 127.0.0.1 and a free port, served in a thread; yields its base URL
    (``http://127.0.0.1:<port>``) and shuts the server down on exit."""
    server = make_server(store, signer, "127.0.0.1", 0)
    serve_in_thread(server)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
