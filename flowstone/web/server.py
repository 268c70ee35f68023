"""Serving the app with uvicorn: in the foreground (``flowstone serve``) or in a thread.

Why we bind the socket ourselves: a caller asking for port 0 (tests, a second viewer) learns
the port the kernel chose before the first request, with no race between picking a free port
and listening on it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from flowstone.web.links import local_url


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0``: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(
            f"cannot listen on {host}:{port} ({exc.strerror}); is another viewer running? "
            "Pick another port with --port or FLOWSTONE_VIEWER_PORT."
        ) from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _server(app: Any, log_level: str, root_path: str = "") -> Any:
    import uvicorn

    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=log_level == "info",
        lifespan="off",
        root_path=root_path,
    )
    return uvicorn.Server(config)


def serve(
    app: Any,
    host: str,
    port: int,
    log_level: str = "info",
    root_path: str = "",
    on_listening: Callable[[], None] | None = None,
) -> None:
    """Serve ``app`` until interrupted (Ctrl-C stops it cleanly); ``root_path`` is the path
    of the public URL when a proxy serves the app under a prefix (``/flowstone``);
    ``on_listening`` runs once the socket is bound (to announce the address)."""
    sock = bind(host, port)
    if on_listening is not None:
        on_listening()
    try:
        _server(app, log_level, root_path).run(sockets=[sock])
    finally:
        sock.close()


class ServerThread:
    """The app served from a daemon thread on ``host`` and a free port; ``stop()`` ends it."""

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
    ):
        self._sock = bind(host, port)
        self.host = host
        self.port = int(self._sock.getsockname()[1])
        self._server = _server(app, log_level)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name="flowstone-viewer",
            daemon=True,
        )

    @property
    def url(self) -> str:
        return local_url(self.host, self.port)

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the viewer did not start on {self.url} within {timeout:.0f}s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
