"""``flowstone pool ...``: run a shared worker pool server, inspect it, stop it.

Also runnable alone: ``python -m flowstone.workers.cli serve --bridge metrics``.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

# Plain numbers, mirrored from flowstone.workers.server (kept import-free: `flowstone --help`
# must not import the pool); tests/workers checks that they agree.
DEFAULT_READ_TIMEOUT_S = 300.0
DEFAULT_MAX_CONNECTIONS = 256
app = typer.Typer(help="The warm Python worker pool (server mode).", no_args_is_help=True)

SocketOption = Annotated[
    Path | None,
    typer.Option(
        "--socket",
        "-s",
        help="Unix socket path (default: $DAGSTER_HOME/pool/metrics.sock, the host's shared "
        "pool, which runs find or start on demand).",
    ),
]


@app.command()
def serve(
    socket_path: SocketOption = None,
    bridge: Annotated[
        str, typer.Option(help="Bridge name (echo, metrics, inference) or module:Class.")
    ] = "metrics",
    workers: Annotated[int, typer.Option("--workers", "-n", min=1, help="Worker processes.")] = 2,
    options: Annotated[
        str, typer.Option(help="Bridge options as JSON, e.g. '{\"preload\": true}'.")
    ] = "{}",
    timeout: Annotated[float, typer.Option(help="Default per-call timeout, seconds.")] = 300.0,
    memory_limit_mb: Annotated[
        int | None, typer.Option(help="RLIMIT_AS cap per worker, MB.")
    ] = None,
    max_requests: Annotated[
        int | None, typer.Option(help="Recycle a worker after this many calls.")
    ] = None,
    max_age_s: Annotated[
        float | None, typer.Option(help="Recycle a worker older than this.")
    ] = None,
    max_rss_mb: Annotated[
        float | None, typer.Option(help="Recycle a worker above this resident memory.")
    ] = None,
    health_interval_s: Annotated[float, typer.Option(help="Seconds between health checks.")] = 10.0,
    queue_size: Annotated[int, typer.Option(help="Calls that may wait for a worker.")] = 1000,
    start_timeout_s: Annotated[
        float, typer.Option(help="How long a worker may take to start.")
    ] = 180.0,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Serve Prometheus metrics on this port at /metrics (0: any free port). "
            "Off by default.",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="Address the metrics endpoint listens on.")
    ] = "127.0.0.1",
    idle_timeout: Annotated[
        float,
        typer.Option(
            min=0,
            help="Stop (and remove the socket) after this many seconds with no calls and no "
            "calling client; 0: never. Servers that runs start on demand use "
            "$FLOWSTONE_POOL_IDLE_TIMEOUT (default 600).",
        ),
    ] = 0.0,
    read_timeout: Annotated[
        float,
        typer.Option(
            min=0,
            help="Close a client connection that sends no complete request (or takes no byte of "
            "a reply) for this many seconds; clients reconnect by themselves. 0: never.",
        ),
    ] = DEFAULT_READ_TIMEOUT_S,
    max_connections: Annotated[
        int,
        typer.Option(
            min=1,
            help="Client connections served at once (a thread each); one more is refused with "
            "a clear error.",
        ),
    ] = DEFAULT_MAX_CONNECTIONS,
) -> None:
    """Start a pool and serve it on a Unix socket until SIGTERM/Ctrl-C or `flowstone pool stop`."""
    from flowstone.workers.pool import PoolConfig, WorkerPool
    from flowstone.workers.server import PoolServer

    try:
        bridge_options = json.loads(options)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--options is not valid JSON: {exc}") from None
    config = PoolConfig(
        bridge=bridge,
        size=workers,
        bridge_options=bridge_options,
        default_timeout_s=timeout,
        memory_limit_mb=memory_limit_mb,
        max_requests=max_requests,
        max_age_s=max_age_s,
        max_rss_mb=max_rss_mb,
        health_interval_s=health_interval_s,
        queue_size=queue_size,
        start_timeout_s=start_timeout_s,
    )
    pool = WorkerPool(config)
    server = PoolServer(
        pool,
        socket_path,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        idle_timeout_s=idle_timeout or None,
        read_timeout_s=read_timeout or None,
        max_connections=max_connections,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server.start()
    except OSError as exc:  # a taken --metrics-port, an unwritable socket folder
        pool.close()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    except Exception:
        pool.close()
        raise
    metrics_note = (
        f"; metrics on {server.metrics_server.url}" if server.metrics_server is not None else ""
    )
    if server.idle_timeout_s:
        metrics_note += f"; stops after {server.idle_timeout_s:g}s idle"
    typer.echo(
        f"flowstone pool: {workers} '{pool.bridge.name}' workers ready on {server.socket_path} "
        f"(pids {', '.join(map(str, pool.worker_pids()))}){metrics_note}",
        err=True,
    )
    while not stop.is_set() and not server.wait(0.2):
        pass
    server.shutdown()
    reason = f" after {server.idle_timeout_s:g}s idle" if server.stop_reason == "idle" else ""
    typer.echo(f"flowstone pool: stopped{reason}", err=True)


def _client(socket_path: Path | None):
    from flowstone.workers.server import PoolClient

    return PoolClient(socket_path, connect_timeout_s=1.0)


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=1)


@app.command()
def status(socket_path: SocketOption = None) -> None:
    """Show the server's workers (pid, state, RSS, uptime, requests) and headline stats."""
    from rich.console import Console
    from rich.table import Table

    from flowstone.workers.errors import PoolError

    try:
        with _client(socket_path) as client:
            stats, rows = client.stats(), client.workers()
    except PoolError as exc:
        _fail(exc)
        return
    latency = stats["latency"]
    console = Console()
    console.print(
        f"[bold]{stats['bridge']}[/] pool on {stats['server']['socket']} (server pid {stats['server']['pid']}): "
        f"{stats['workers_alive']}/{stats['size']} workers, queue {stats['queue_depth']}, "
        f"{stats['requests']} requests, {stats['failed']} failed, {stats['timeouts']} timeouts, "
        f"{stats['crashes']} crashes, p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms"
    )
    table = Table("pid", "state", "RSS MB", "uptime s", "requests", "failures", "sessions")
    for row in rows:
        table.add_row(
            str(row["pid"]),
            row["state"],
            str(row["rss_mb"]),
            str(row["uptime_s"]),
            str(row["requests"]),
            str(row["failures"]),
            str(row["sessions"]),
        )
    console.print(table)


@app.command()
def stats(socket_path: SocketOption = None) -> None:
    """Print the server's full stats as JSON."""
    from flowstone.workers.errors import PoolError

    try:
        with _client(socket_path) as client:
            typer.echo(json.dumps({**client.stats(), "workers": client.workers()}, indent=2))
    except PoolError as exc:
        _fail(exc)


@app.command()
def stop(socket_path: SocketOption = None) -> None:
    """Ask the server to stop; its workers stop with it."""
    from flowstone.workers.errors import PoolError

    try:
        with _client(socket_path) as client:
            info = client.shutdown()
    except PoolError as exc:
        _fail(exc)
        return
    typer.echo(f"stopping pool server pid {info['pid']} on {info['socket']}")


@app.command()
def reap() -> None:
    """Terminate workers left behind by pools whose process died, with everything their handlers
    started (normally automatic: each worker's guard, and each new pool, does it)."""
    from flowstone.workers.registry import reap_orphans

    pids = reap_orphans()
    typer.echo(
        f"terminated {len(pids)} orphaned worker group(s)"
        f"{' (worker pids ' + ', '.join(map(str, pids)) + ')' if pids else ''}"
    )


if __name__ == "__main__":
    app()
