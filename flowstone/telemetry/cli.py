"""``flowstone metrics serve``: a standalone Prometheus exporter.

Why a separate process: the notification outbox lives in a database, and Dagster's step
processes come and go between scrapes. This exporter serves the outbox gauges read from that
database at each scrape, plus (with ``PROMETHEUS_MULTIPROC_DIR`` set to the same folder in
every FlowStone process) the counters and histograms of all of them summed; without it, only
its own process's metrics. ``flowstone pool serve --metrics-port`` covers the pool server.

The outbox gauges come from the outbox's public backlog read, which this module cannot import
(the outbox calls telemetry's hooks, so telemetry stays below it): the ``flowstone`` command
registers it with :func:`register_outbox_gauges`. Run alone (``python -m flowstone.telemetry.cli
serve``), the exporter serves the process metrics only; ``python -m flowstone.cli metrics
serve`` has both.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from flowstone.telemetry.metrics import OutboxCollector

app = typer.Typer(help="Prometheus metrics: a standalone exporter.", no_args_is_help=True)

_outbox_gauges: Callable[[str | None], OutboxCollector] | None = None


def register_outbox_gauges(build: Callable[[str | None], OutboxCollector]) -> None:
    """Let ``serve`` read the outbox: ``build(url)`` returns the collector of the outbox gauges
    for that database (``None``: the default one), e.g.
    ``flowstone.notifications.outbox.backlog_gauges``."""
    global _outbox_gauges
    _outbox_gauges = build


@app.callback()
def main() -> None:
    """FlowStone's Prometheus exporter; see `serve --help`."""


@app.command()
def serve(
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port for /metrics (0: any free port).")
    ] = 9464,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    outbox_url: Annotated[
        str | None,
        typer.Option(
            help="SQLAlchemy URL of the notification outbox "
            "(default: $FLOWSTONE_NOTIFICATIONS_DB_URL, else SQLite in DAGSTER_HOME)."
        ),
    ] = None,
    outbox: Annotated[
        bool, typer.Option(help="Read the outbox gauges from its database at each scrape.")
    ] = True,
) -> None:
    """Serve /metrics until SIGTERM or Ctrl-C."""
    from flowstone.telemetry.metrics import MULTIPROC_ENV, exporter_registry, serve_metrics

    if outbox and _outbox_gauges is None:
        typer.echo(
            "flowstone metrics: no outbox reader is registered in this process, so no outbox "
            "gauges (`flowstone metrics serve` registers one)",
            err=True,
        )
    gauges = _outbox_gauges(outbox_url) if outbox and _outbox_gauges is not None else None
    try:
        server = serve_metrics(port, host, exporter_registry(gauges))
    except OSError as exc:
        typer.echo(f"error: {exc.strerror or exc}", err=True)
        raise typer.Exit(code=1) from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    source = (
        f"every process writing to {os.environ[MULTIPROC_ENV]}"
        if os.environ.get(MULTIPROC_ENV)
        else "this process"
    )
    typer.echo(f"flowstone metrics: serving {server.url} ({source})", err=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.close()
    typer.echo("flowstone metrics: stopped", err=True)


if __name__ == "__main__":
    app()
