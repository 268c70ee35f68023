"""Redis for tests and benchmarks: the server already running on loopback, or a throwaway one.

The server on 127.0.0.1:$FLOWSTONE_TEST_REDIS_PORT (default 6379) is used when it answers;
otherwise ``redis-server`` is found on PATH (installed with apt-get when missing, as root; a
pytest caller skips otherwise, the way support.postgres does) and started on a free loopback
port without persistence, and stopped afterwards. Callers isolate themselves with a key prefix
of their own (``?prefix=...`` in FLOWSTONE_LLM_STATE) rather than claiming a database, so any
number of them can share the machine's server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator

from support.apt import apt_install
from support.net import free_port, reachable

PORT_ENV = "FLOWSTONE_TEST_REDIS_PORT"


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """``redis://127.0.0.1:<port>/0`` of a Redis that answers, for the block's duration.

    Raises :class:`support.apt.CannotInstall` when there is none and it cannot be installed."""
    shared_port = int(os.environ.get(PORT_ENV, "6379"))
    if reachable("127.0.0.1", shared_port):
        yield f"redis://127.0.0.1:{shared_port}/0"
        return
    server = shutil.which("redis-server")
    if server is None:
        apt_install("redis-server")
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not reachable("127.0.0.1", port):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
