"""Doctor check: the shared worker-pool server, named or started on demand, and its state.

Why: with ``$FLOWSTONE_POOL_SOCKET`` set, every step sends its calls to that server; one that is
not running fails them all, so the doctor pings it and reports its size and queue. Without it,
the host's shared pool is started by the first run that needs the encoder
(:mod:`flowstone.workers.autostart`): the doctor says whether it is running (pid, workers, idle
time left), that it is not yet (which is fine), that its last start failed, or that it is off.
"""

from __future__ import annotations

import os

from flowstone.ops.checks.result import FAIL, OK, WARN, CheckResult, first_line

POOL_SOCKET_ENV = "FLOWSTONE_POOL_SOCKET"
NAME = "pool server"


def check_pool_server(socket_path: str | None = None) -> CheckResult:
    """The named server answers, or the state of the host's shared pool."""
    socket_path = socket_path or os.environ.get(POOL_SOCKET_ENV)
    if not socket_path:
        return check_auto_pool()
    from flowstone.workers.server import PoolClient

    try:
        with PoolClient(socket_path, connect_timeout_s=1.0) as client:
            client.ping()
            stats = client.stats()
    except Exception as exc:
        return CheckResult(
            NAME,
            FAIL,
            f"{socket_path}: {first_line(exc)}",
            f"start it: flowstone pool serve --socket {socket_path} (or unset {POOL_SOCKET_ENV})",
        )
    server = stats.get("server", {})
    return CheckResult(
        NAME,
        OK,
        f"{socket_path}: '{stats.get('bridge')}' pool, {stats.get('workers_alive')}/"
        f"{stats.get('size')} workers, queue {stats.get('queue_depth')}, server pid "
        f"{server.get('pid')}",
    )


def check_auto_pool() -> CheckResult:
    """The host's shared pool: off, running, not running yet, or failing to start. Only looks:
    never starts a server, and does not keep a running one from its idle stop."""
    from flowstone.errors import ConfigError
    from flowstone.workers.autostart import POOL_ENV, AutoPool, auto_pool_setting

    try:
        setting = auto_pool_setting()
        auto = AutoPool.from_env()
    except ConfigError as exc:
        return CheckResult(NAME, FAIL, first_line(exc), f"set {POOL_ENV} to on or off, or unset it")
    if not setting.enabled:
        return CheckResult(
            NAME, OK, f"shared pool {setting.detail}: each step scores in its own process"
        )
    stats = auto.status()
    if stats is not None:
        server = stats.get("server", {})
        remaining = server.get("idle_remaining_s")
        idle = (
            f", stops after {remaining:.0f}s more idle (of {server.get('idle_timeout_s'):g}s)"
            if remaining is not None
            else ", no idle stop"
        )
        detail = (
            f"running on {auto.socket_path}: pid {server.get('pid')}, '{stats.get('bridge')}' "
            f"pool, {stats.get('workers_alive')}/{stats.get('size')} workers, queue "
            f"{stats.get('queue_depth')}, {stats.get('requests')} requests{idle}"
        )
        if stats.get("bridge") != "metrics":
            return CheckResult(
                NAME,
                WARN,
                detail,
                f"runs cannot score on a '{stats.get('bridge')}' pool: flowstone pool stop "
                f"--socket {auto.socket_path}",
            )
        return CheckResult(NAME, OK, detail)
    failure = auto.last_failure()
    if failure is not None:
        return CheckResult(
            NAME,
            WARN,
            f"not running; its last start failed ({first_line(Exception(failure.get('error')))}); "
            f"runs score in their own process and try again in {failure['retry_in_s']:.0f}s",
            f"see {auto.log_path}; or {POOL_ENV}=off",
        )
    stops = f"stops after {auto.idle_timeout_s:g}s idle" if auto.idle_timeout_s else "no idle stop"
    return CheckResult(
        NAME,
        OK,
        f"not running; the first run that needs it starts it (on {auto.socket_path}, {stops})",
    )
