"""``flowstone pool ...``: run a shared worker pool server, inspect it, stop it.

Also runnable alone: ``python -m flowstone.workers.cli serve --bridge metrics``.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

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
        str | None,
        typer.Option(
            help="Bridge name (echo, metrics, inference) or module:Class (default: metrics)."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Serve every bridge of this pools.yaml, each with its own workers and limits, "
            "behind the one socket (not with --bridge); e.g. the project's pools.yaml.",
        ),
    ] = None,
    only: Annotated[
        str | None,
        typer.Option(
            "--only",
            help="With --config: serve only these bridges of the file (comma-separated); with "
            "one, --workers and --options override its entry (the on-demand pool uses this).",
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", "-n", min=1, help="Worker processes (default 2).")
    ] = None,
    options: Annotated[
        str | None, typer.Option(help="Bridge options as JSON, e.g. '{\"preload\": true}'.")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Default per-call timeout, seconds (default 300).")
    ] = None,
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
    from flowstone.workers.server import PoolServer

    per_bridge = {
        "--workers": workers,
        "--options": options,
        "--timeout": timeout,
        "--memory-limit-mb": memory_limit_mb,
        "--max-requests": max_requests,
        "--max-age-s": max_age_s,
        "--max-rss-mb": max_rss_mb,
    }
    if only is not None and config is None:
        raise typer.BadParameter("--only picks bridges of a --config file")
    if config is not None:
        names = [n.strip() for n in (only or "").split(",") if n.strip()]
        one = len(names) == 1
        allowed = {"--workers", "--options"} if one else set()
        given = [f for f, value in per_bridge.items() if value is not None and f not in allowed]
        if bridge is not None or given:
            raise typer.BadParameter(
                f"--config sets every bridge and its limits; drop {', '.join(given or ['--bridge'])}"
                " (set them per bridge in the file)"
            )
        pool: Any = _bridge_pools(
            config, health_interval_s, queue_size, start_timeout_s,
            only=names, workers=workers, options=options,
        )  # fmt: skip
    else:
        pool = _single_pool(
            bridge or "metrics",
            workers or 2,
            options or "{}",
            300.0 if timeout is None else timeout,
            memory_limit_mb,
            max_requests,
            max_age_s,
            max_rss_mb,
            health_interval_s,
            queue_size,
            start_timeout_s,
        )
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
    if config is not None:
        _announce_bridges(pool, server, metrics_note)
    else:
        typer.echo(
            f"flowstone pool: {pool.config.size} '{pool.bridge.name}' workers ready on "
            f"{server.socket_path} (pids {', '.join(map(str, pool.worker_pids()))}){metrics_note}",
            err=True,
        )
    while not stop.is_set() and not server.wait(0.2):
        pass
    server.shutdown()
    reason = f" after {server.idle_timeout_s:g}s idle" if server.stop_reason == "idle" else ""
    typer.echo(f"flowstone pool: stopped{reason}", err=True)


def _single_pool(
    bridge: str,
    workers: int,
    options: str,
    timeout: float,
    memory_limit_mb: int | None,
    max_requests: int | None,
    max_age_s: float | None,
    max_rss_mb: float | None,
    health_interval_s: float,
    queue_size: int,
    start_timeout_s: float,
) -> Any:
    """One WorkerPool of one bridge, from the command line's options."""
    from flowstone.workers.pool import PoolConfig, WorkerPool

    try:
        bridge_options = json.loads(options)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--options is not valid JSON: {exc}") from None
    return WorkerPool(
        PoolConfig(
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
    )


def _bridge_pools(
    config: Path,
    health_interval_s: float,
    queue_size: int,
    start_timeout_s: float,
    *,
    only: list[str] | None = None,
    workers: int | None = None,
    options: str | None = None,
) -> Any:
    """A BridgePools from pools.yaml (``only``: a subset of its bridges; with one, ``workers``
    and ``options`` override its entry); a bad file stops here, naming the file and the key."""
    from flowstone.errors import ConfigError
    from flowstone.workers.pools_config import load_pools_config
    from flowstone.workers.supervisor import BridgePools

    try:
        parsed = load_pools_config(config)
        if only:
            parsed = parsed.only(
                only, workers=workers, options=json.loads(options) if options else None
            )
        return BridgePools(
            parsed,
            health_interval_s=health_interval_s,
            queue_size=queue_size,
            start_timeout_s=start_timeout_s,
        )
    except json.JSONDecodeError as exc:
        typer.echo(f"error: --options is not JSON: {exc}", err=True)
        raise typer.Exit(code=1) from None
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None


def _announce_bridges(pool: Any, server: Any, note: str) -> None:
    """One line "workers ready" (what scripts wait for), then a line per bridge not running."""
    running = [
        f"{name} ({len(pids)} worker{'s' if len(pids) != 1 else ''}, pids "
        f"{', '.join(map(str, pids))})"
        for name, pids in pool.worker_pids().items()
    ]
    if not running:
        for name, reason in pool.unavailable.items():
            typer.echo(f"flowstone pool: bridge '{name}' not running: {reason}", err=True)
        server.shutdown()
        typer.echo("error: no bridge of the config could start; nothing to serve", err=True)
        raise typer.Exit(code=1)
    typer.echo(
        f"flowstone pool: workers ready on {server.socket_path} for {'; '.join(running)}{note}",
        err=True,
    )
    for name, reason in pool.unavailable.items():
        typer.echo(f"flowstone pool: bridge '{name}' not running: {reason}", err=True)


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

    from flowstone.workers.errors import PoolError

    try:
        with _client(socket_path) as client:
            stats, rows = client.stats(), client.workers()
    except PoolError as exc:
        _fail(exc)
        return
    console = Console()
    if "bridges" in stats:
        _print_bridges(stats, console)
        _print_workers(rows, console, with_bridge=True)
        return
    latency = stats["latency"]
    console.print(
        f"[bold]{stats['bridge']}[/] pool on {stats['server']['socket']} (server pid {stats['server']['pid']}): "
        f"{stats['workers_alive']}/{stats['size']} workers, queue {stats['queue_depth']}, "
        f"{stats['requests']} requests, {stats['failed']} failed, {stats['timeouts']} timeouts, "
        f"{stats['crashes']} crashes, p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms"
    )
    _print_workers(rows, console)


def _print_workers(rows: list[dict[str, Any]], console: Any, with_bridge: bool = False) -> None:
    from rich.table import Table

    columns = ["pid", "state", "RSS MB", "uptime s", "requests", "failures", "sessions"]
    table = Table(*(["bridge", *columns] if with_bridge else columns))
    for row in rows:
        cells = [
            str(row["pid"]),
            row["state"],
            str(row["rss_mb"]),
            str(row["uptime_s"]),
            str(row["requests"]),
            str(row["failures"]),
            str(row["sessions"]),
        ]
        table.add_row(*([row.get("bridge", "")] + cells if with_bridge else cells))
    console.print(table)


def _framework(bridge: dict[str, Any]) -> str:
    name, version = bridge.get("framework"), bridge.get("framework_version")
    if not name:
        return "-"
    return f"{name} {version}" if version else f"{name} (not installed)"


def _print_bridges(stats: dict[str, Any], console: Any) -> None:
    """A multi-bridge server (``serve --config``): a line per bridge, then the ones not running.

    Plain lines, not a table: a reason is a sentence (a missing variable, an import error) that
    must reach the reader whole, not cut to a column's width.
    """
    from rich.markup import escape

    server = stats["server"]
    bridges, unavailable = stats["bridges"], stats["unavailable"]
    console.print(
        f"pool server on {server['socket']} (pid {server['pid']}): {len(bridges)} bridge(s) "
        f"running, {len(unavailable)} not running",
        soft_wrap=True,
    )
    for name, bridge in bridges.items():
        latency = bridge["latency"]
        console.print(
            f"[bold]{escape(name)}[/]: {bridge['workers_alive']}/{bridge['size']} workers, queue "
            f"{bridge['queue_depth']}, {bridge['requests']} requests, {bridge['failed']} failed, "
            f"p50 {latency['p50_ms']} ms, p95 {latency['p95_ms']} ms, {bridge['restarts']} "
            f"restarts, framework {_framework(bridge)}",
            soft_wrap=True,
        )
        console.print(f"  commands: {escape(', '.join(bridge['commands']))}", soft_wrap=True)
    for name, entry in unavailable.items():
        console.print(
            f"[bold]{escape(name)}[/]: not running: {escape(entry['reason'])}", soft_wrap=True
        )


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
def info(socket_path: SocketOption = None) -> None:
    """Show what each bridge runs: framework and version, commands, limits; and each bridge
    that is not running, with the reason."""
    from flowstone.workers.errors import PoolError

    try:
        with _client(socket_path) as client:
            stats = client.stats()
            if "bridges" not in stats:  # a one-bridge server: ask the bridge itself
                described = client.execute(f"{stats['bridge']}:info", timeout=30.0)
                stats = {
                    "server": stats["server"],
                    "bridges": {
                        stats["bridge"]: {
                            **stats,
                            "commands": [
                                f"{stats['bridge']}:{c['name']}" for c in described["commands"]
                            ],
                        }
                    },
                    "unavailable": {},
                }
    except PoolError as exc:
        _fail(exc)
        return
    for name, bridge in stats["bridges"].items():
        latency = bridge["latency"]
        typer.echo(f"{name}: running, framework {_framework(bridge)}")
        typer.echo(
            f"  workers {bridge['workers_alive']}/{bridge['size']}, queue {bridge['queue_depth']}, "
            f"p50 {latency['p50_ms']} ms, p95 {latency['p95_ms']} ms, "
            f"restarts {bridge.get('restarts', '-')}"
        )
        if bridge.get("limits"):
            limits = ", ".join(f"{k} {v}" for k, v in bridge["limits"].items() if v is not None)
            typer.echo(f"  limits: {limits}")
        typer.echo(f"  commands: {', '.join(bridge['commands'])}")
    for name, entry in stats["unavailable"].items():
        typer.echo(f"{name}: not running: {entry['reason']}")


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
