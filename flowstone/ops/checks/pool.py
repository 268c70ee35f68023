"""Doctor check: the shared worker-pool server named by $FLOWSTONE_POOL_SOCKET answers.

Why: with the variable set, every step sends its calls to that server; one that is not
running fails them all, so the doctor pings it and reports its size and queue.
"""

from __future__ import annotations

import os

from flowstone.ops.checks.result import FAIL, OK, CheckResult, first_line

POOL_SOCKET_ENV = "FLOWSTONE_POOL_SOCKET"


def check_pool_server(socket_path: str | None = None) -> CheckResult:
    """When $FLOWSTONE_POOL_SOCKET is set, the shared pool server answers a ping."""
    name = "pool server"
    socket_path = socket_path or os.environ.get(POOL_SOCKET_ENV)
    if not socket_path:
        return CheckResult(name, OK, f"{POOL_SOCKET_ENV} not set: each run starts its own pool")
    from flowstone.workers.server import PoolClient

    try:
        with PoolClient(socket_path, connect_timeout_s=1.0) as client:
            client.ping()
            stats = client.stats()
    except Exception as exc:
        return CheckResult(
            name,
            FAIL,
            f"{socket_path}: {first_line(exc)}",
            f"start it: flowstone pool serve --socket {socket_path} (or unset {POOL_SOCKET_ENV})",
        )
    server = stats.get("server", {})
    return CheckResult(
        name,
        OK,
        f"{socket_path}: '{stats.get('bridge')}' pool, {stats.get('workers_alive')}/"
        f"{stats.get('size')} workers, queue {stats.get('queue_depth')}, server pid "
        f"{server.get('pid')}",
    )
