"""Loopback networking for tests: a free port to listen on and whether a port answers.

Every test folder that starts a server (moto, Slack and SMTP fakes, PostgreSQL, Redis, dagster
dev, metrics endpoints) needed these two functions and had its own copy of them.
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts a TCP connection on ``host:port`` within ``timeout``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
