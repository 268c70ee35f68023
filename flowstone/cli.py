"""The `flowstone` command: the demo, and the sub-commands later packages mount.

Runs happen in this process against the instance under DAGSTER_HOME, so everything the demo
materializes is there when the Dagster UI opens on the same folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from assets.instance_check import check_instance
from flowstone import paths
from flowstone import progress as case_progress
from flowstone.approvals import cli as approvals_cli
from flowstone.baking import cli as models_cli
from flowstone.evaluation import cli as eval_cli
from flowstone.notifications.outbox import backlog_gauges
from flowstone.ops.checks.runner import register_check
from flowstone.ops.doctor import app as doctor_app
from flowstone.telemetry.cli import app as metrics_app
from flowstone.telemetry.cli import register_outbox_gauges
from flowstone.workers import cli as pool_cli

app = typer.Typer(
    help="FlowStone: evaluation, model baking and approvals on Dagster.", no_args_is_help=True
)
console = Console(width=None if sys.stdout.isatty() else 160)


app.add_typer(
    pool_cli.app, name="pool", help="The warm Python worker pool: serve, status, stats, stop, reap."
)
app.add_typer(
    approvals_cli.app,
    name="approvals",
    help="Approval requests: list, show, approve, reject, serve.",
)
app.add_typer(
    doctor_app,
    name="doctor",
    help="Check the instance, warehouse, object store, credentials, pool and dbt.",
)
app.add_typer(metrics_app, name="metrics", help="Prometheus metrics: a standalone exporter.")
app.command("eval")(eval_cli.run)
app.add_typer(
    models_cli.app,
    name="models",
    help="Model baking: add, bake, list, deployments, rollback.",
)

# The wiring adds what the core cannot know without Dagster: the instance check, and the
# outbox backlog the exporter serves.
register_check("instance", check_instance, before="warehouse")
register_outbox_gauges(backlog_gauges)


@app.callback()
def main() -> None:
    """FlowStone's command line; see each sub-command's --help."""


def ensure_instance() -> Path:
    """Point DAGSTER_HOME at the repo-local instance (SQLite) unless the user chose another."""
    home = paths.instance_dir()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    config = home / "dagster.yaml"
    template = paths.project_root() / "dagster.yaml"
    if not config.exists() and template.exists():
        shutil.copyfile(template, config)
    return home


def _mean_cell(meta: dict, metric: str) -> str:
    """``0.712`` over its interval (``ci/<metric>`` metadata: ``0.650–0.771 (95% CI)``)."""
    mean = meta.get(f"mean/{metric}")
    if mean is None:
        return "[red]failed[/]" if f"failed/{metric}" in meta else "—"
    interval = str(meta.get(f"ci/{metric}", "")).split(" (")[0]
    return f"{mean:.3f}\n[dim]{interval}[/]" if interval else f"{mean:.3f}"


def summary_table(reports: dict[str, dict]) -> Table:
    metrics = sorted({k[5:] for r in reports.values() for k in r if k.startswith("mean/")})
    table = Table(title="Evaluation summary (mean per metric, its confidence interval below)")
    for column in ["suite", "system", "cases", *metrics, "checks", "regressions"]:
        table.add_column(column, justify="left" if column in ("suite", "system") else "right")
    for key, meta in reports.items():
        suite, system = key.split("|")
        cells = [_mean_cell(meta, m) for m in metrics]
        verdict = "[green]pass[/]" if meta.get("passed") else "[red]fail[/]"
        table.add_row(
            suite,
            system,
            str(meta.get("cases", "")),
            *cells,
            verdict,
            str(meta.get("regressions", 0)),
        )
    return table


def comparison_table(comparisons: dict[str, dict | None]) -> Table:
    """Per suite and metric: the leaders, and every difference the paired test finds real
    (after the correction for the number of comparisons)."""
    table = Table(title="Which differences are significant (paired, Holm-corrected)")
    for column in ("suite", "metric", "leaders", "significant differences"):
        table.add_column(column)
    for suite, stored in comparisons.items():
        if stored is None:
            table.add_row(suite, "—", "—", "[yellow]not compared (fewer than two systems)[/]")
            continue
        for metric, figures in stored["metrics"].items():
            real = [
                f"{p['b'] if p['verdict'] == 'better' else p['a']} > "
                f"{p['a'] if p['verdict'] == 'better' else p['b']} "
                f"({abs(p['difference']):.3f}, p={p['p_adjusted']:.2g})"
                for p in figures["pairs"]
                if p["verdict"] in ("better", "worse")
            ]
            leaders = ", ".join(figures["leaders"])
            table.add_row(suite, metric, leaders, "; ".join(real) or "[dim]none[/]")
    return table


def build_analytics(instance, keys: Sequence[str], failures: list[str]) -> None:
    """Load the evaluated partitions into the DuckDB warehouse, build the dbt project on it,
    and print the leaderboard mart."""
    from assets.dbt import DBT_JOB
    from assets.runner import QUIET_RUN_CONFIG, materialize_analytics
    from assets.warehouse import WAREHOUSE_JOB
    from flowstone.definitions import defs
    from flowstone.warehouse.leaderboard import leaderboard

    if not keys:
        return
    log_path = paths.outputs_dir() / "logs" / "dbt-demo.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    console.print(
        f"Loading {len(keys)} partitions into the warehouse and building the dbt models "
        f"(dbt's log: {log_path})…"
    )
    # dagster-dbt echoes every dbt event to stdout (compute logs in a real run); keep the
    # terminal for progress and results.
    # dbt configures the root logger; Dagster's run logger must not echo through it as well.
    logging.getLogger("dagster.builtin").propagate = False
    with open(log_path, "w", encoding="utf-8") as log, contextlib.redirect_stdout(log):
        results = materialize_analytics(defs, instance, keys, run_config=QUIET_RUN_CONFIG)
    for job in (WAREHOUSE_JOB, DBT_JOB):
        if job in results and not results[job].success:
            failures.append(job)
    if DBT_JOB not in results or not results[DBT_JOB].success:
        return
    board = leaderboard(paths.warehouse_path())
    best = board[board["rank"] == 1]
    table = Table(
        title=f"Leaderboard: best system per suite and metric (dbt mart in {paths.warehouse_path()})"
    )
    for column in ("suite", "metric", "best system(s)", "latest mean", "delta vs previous run"):
        table.add_column(column)
    for (suite, metric), group in best.groupby(["suite", "metric"], sort=True):
        top = group.iloc[0]
        delta = top.get("delta")
        table.add_row(
            suite,
            metric,
            ", ".join(group["system"]),
            f"{top['latest_mean']:.3f}",
            "—" if delta is None or delta != delta else f"{delta:+.3f}",
        )
    console.print(table)


def stage_demo_models() -> list[str]:
    """Put the two demo models into the drop folder unless they are there already."""
    from flowstone.baking import demo_models, intake

    present = {d.name for d in intake.scan_local(paths.models_dir())}
    if "demo_classifier" not in present:
        staging = paths.outputs_dir() / "demo_models"
        path = demo_models.write_demo_classifier(staging)
        intake.add_model(path, "demo_classifier", paths.models_dir())  # with its validation data
    if "minilm" not in present:
        from flowstone.baking.config import known_suites

        config = demo_models.write_minilm_config(
            paths.outputs_dir() / "demo_models", list(known_suites())
        )
        target = intake.add_model(
            demo_models.minilm_folder(), "minilm", paths.models_dir(), config=config
        )
        demo_models.write_demo_pairs(target)
    return ["demo_classifier", "minilm"]


def bake_summary(instance, names: Sequence[str]) -> Table:
    """One row a model: the gates (quality, task suites, speed) and how the recipe was chosen,
    from the latest materializations' metadata."""
    from assets.baking import BAKED_KEY, PACKAGE_KEY, PROFILE_KEY, QUALITY_KEY
    from assets.runner import latest_metadata

    table = Table(title="Bakes: baked vs original (throughput in interleaved rounds, 95% CI)")
    for column in ("model", "quality", "task suites", "throughput", "size x", "recipe", "package"):
        table.add_column(column)

    def text(meta, key: str) -> str | None:
        value = meta.get(key)
        return None if value is None else str(value.value)

    for name in names:
        baked, quality, profile, package = (
            latest_metadata(instance, k, name)
            for k in (BAKED_KEY, QUALITY_KEY, PROFILE_KEY, PACKAGE_KEY)
        )
        metric, value = quality.get("metric"), quality.get("value")
        gate = text(quality, "task_gate")
        diffs = ", ".join(
            f"{k.split('/')[1]} {float(str(v.value)):+.4f}"
            for k, v in quality.items()
            if k.startswith("task/") and k.endswith("/difference")
        )
        size = profile.get("size_ratio")
        table.add_row(
            name,
            f"{metric.value} = {value.value:.4f}" if metric and value else "-",
            f"{gate}: {diffs}" if gate and diffs else (gate or "-"),
            text(profile, "throughput") or "-",
            f"{size.value:.3f}" if size else "-",
            text(baked, "recipe") or "passes from the bake config",
            f"{package['package_mb'].value} MB" if "package_mb" in package else "-",
        )
    return table


@models_cli.app.command("bake")
def bake(names: list[str]) -> None:
    """Bake models from the drop folder now, in this process (no sensor daemon needed)."""
    ensure_instance()

    def on_done(key: str, ok: bool, seconds: float) -> None:
        console.print(f"  {'[green]✓[/]' if ok else '[red]✗[/]'} {key}  {seconds:.1f}s")

    from assets.runner import bake_models

    instance, defs = _instance_and_defs()
    outcomes = bake_models(defs, instance, names, on_done=on_done)
    console.print(bake_summary(instance, names))
    exit_now(0 if all(r.success for r in outcomes.values()) else 1)


VIEWER_URL = "http://127.0.0.1:8765/"  # `flowstone serve`'s default address
UI_URL = "http://127.0.0.1:3000"  # `make ui`'s


def where_to_look(home: Path) -> list[str]:
    """The demo's last lines: how to open the Dagster UI and the viewer on the instance this run
    actually used (named in full: it is not the Makefile's default when DAGSTER_HOME was set)."""
    from rich.markup import escape

    default = home == paths.project_root() / ".dagster_home"
    env = "" if default else f"DAGSTER_HOME={escape(str(home))} "
    make_ui = "make ui" if default else f"make ui DAGSTER_HOME={escape(str(home))}"
    return [
        f"Open the UI: [bold]{make_ui}[/] (or `DAGSTER_HOME={escape(str(home))} "
        f".venv/bin/dagster dev -w workspace.yaml`), then {UI_URL}",
        f"Open the viewer: [bold]{env}.venv/bin/flowstone serve --dev[/], then {VIEWER_URL}",
    ]


@app.command()
def demo(
    single_run: bool = typer.Option(
        True,
        help="Run every partition in one run (a single-run backfill, the assets' policy); "
        "--no-single-run runs each partition in a run of its own.",
    ),
) -> None:
    """Materialize every suite x system partition of the evaluation on the embedded defaults."""
    from flowstone.threads import wait_passively

    wait_passively()  # torch's threads on a busy small machine: see flowstone/threads.py
    home = ensure_instance()
    console.print(
        f"[bold]FlowStone demo[/] · instance [cyan]{home}[/] · outputs [cyan]{paths.outputs_dir()}[/]"
    )
    console.print("Loading the code location and observing suites, systems and settings…")
    failures: list[str] = []
    evaluated: dict[str, bool] = {}  # each partition's outcome, whichever run decided it
    failed_runs: list[str] = []  # runs over several partitions that failed
    with Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("evaluating", total=None)

        def on_partition(key: str, ok: bool, seconds: float | None = None) -> None:
            mark = "[green]✓[/]" if ok else "[red]✗[/]"
            took = "" if seconds is None else f"  {seconds:.1f}s"
            progress.console.print(f"  {mark} {key.replace('|', ' × ')}{took}")
            evaluated[key] = ok
            progress.update(task, completed=len(evaluated))
            if not ok:
                failures.append(key)

        def on_done(label: str, ok: bool, seconds: float) -> None:
            if label in keys:  # a partition's own run
                on_partition(label, ok, seconds)
                return
            # the run over several partitions, whose partitions are reported already (or,
            # when it failed before they were done, run again one by one)
            mark = "[green]✓[/]" if ok else "[red]✗[/]"
            progress.console.print(f"  {mark} {label}  {seconds:.1f}s")
            progress.update(task, description="evaluating")
            if not ok:
                failed_runs.append(label)

        def on_step(step: str, partitions: int, seconds: float, ok: bool) -> None:
            name = step.replace("__", "/")
            verdict = f"{partitions} partitions" if ok else "[red]failed[/]"
            progress.console.print(f"  [dim]{name}: {verdict}  {seconds:.1f}s[/]")
            progress.update(task, description=f"evaluating (after {name})")

        def start(total: int) -> None:
            progress.update(task, total=total)

        case_task = progress.add_task("cases", total=1, visible=False)

        def on_cases(label: str, done: int, total: int) -> None:
            progress.update(
                case_task,
                description=f"  {label}",
                completed=done,
                total=total,
                visible=done < total,
            )

        case_progress.set_listener(on_cases)

        from flowstone.evaluation.catalog import load_catalog

        catalog = load_catalog()
        from assets.runner import warm_shared_pool

        # the scores step's encoder server loads while the code location loads and the first
        # steps run, instead of after them
        warm_shared_pool(
            {m for s in catalog.suite_names for m in catalog.settings.for_suite(s).metrics}
        )
        for name, reason in catalog.systems.skipped.items():
            progress.console.print(f"  [yellow]skipped[/] system {name}: {reason}")
        for (suite_name, name), reason in sorted(catalog.not_applicable().items()):
            progress.console.print(f"  [yellow]not run[/] {suite_name}|{name}: {reason}")
        keys = catalog.applicable_keys()
        start(len(keys))
        from assets.runner import (
            bake_models,
            compare_suites,
            latest_reports,
            materialize_partitions,
        )

        instance, defs = _instance_and_defs()
        materialize_partitions(
            defs, instance, keys, single_run, on_done, on_partition=on_partition, on_step=on_step
        )
    if failed_runs and all(evaluated.values()):  # no partition's failure explains it
        failures.extend(failed_runs)
    console.print(summary_table(latest_reports(instance, keys)))
    console.print("Comparing the systems on each suite (paired tests on the same cases)…")
    comparisons = compare_suites(defs, instance, sorted(catalog.suite_names))
    console.print(comparison_table(comparisons))
    models = stage_demo_models()
    console.print(
        f"Baking {', '.join(models)} from {paths.models_dir()} (validate, bake, quality, profile, package)…"
    )

    def on_baked(key: str, ok: bool, seconds: float) -> None:
        console.print(f"  {'[green]✓[/]' if ok else '[red]✗[/]'} {key}  {seconds:.1f}s")
        if not ok:
            failures.append(f"bake {key}")

    bake_models(defs, instance, models, on_done=on_baked)
    console.print(bake_summary(instance, models))
    console.print(
        "Deployment waits for a human: turn on the [bold]baking__deployed_model_approval_requests[/] and "
        "[bold]..._decisions[/] sensors in the UI, then `flowstone approvals approve ID --dev`."
    )
    build_analytics(instance, [k for k in keys if evaluated.get(k)], failures)
    console.print(f"HTML reports: [cyan]{paths.reports_dir()}[/] (one file per suite/system)")
    for line in where_to_look(home):
        console.print(line)
    if failures:
        console.print(
            f"[red]{len(failures)} run(s) failed:[/] {', '.join(failures)}; see the run logs in the UI"
        )
    exit_now(1 if failures else 0)


_VIEWER_HOST_HELP = "Interface to listen on (default $FLOWSTONE_VIEWER_HOST or 127.0.0.1)."
_VIEWER_PORT_HELP = "Port to listen on (default $FLOWSTONE_VIEWER_PORT or 8765)."
_VIEWER_URL_HELP = (
    "Public base URL, when a proxy or another host name fronts the viewer "
    "(default $FLOWSTONE_VIEWER_URL or http://HOST:PORT)."
)


_DEV_HELP = (
    "Local development without $FLOWSTONE_APPROVAL_SECRET: approval links use the public "
    "development secret, and the server binds 127.0.0.1 only."
)


def serve_viewer(
    host: str | None,
    port: int | None,
    public_url: str | None,
    approvals_db: str | None = None,
    dev: bool = False,
) -> None:
    """Start the web app (viewer and approvals pages) in the foreground until Ctrl-C.

    Without a signing secret it refuses to start unless ``dev``: the approvals pages would
    otherwise accept links signed with the public development secret, which anyone can
    forge. ``dev`` binds 127.0.0.1 only, so such a server is never reachable from outside."""
    from urllib.parse import urlsplit

    from flowstone.approvals.settings import SECRET_ENV, configured_secret, enable_dev_mode
    from flowstone.web import links
    from flowstone.web.app import AppSettings, create_app
    from flowstone.web.server import serve as serve_app
    from flowstone.web.sources import ViewerSources

    if dev:
        if host not in (None, links.DEFAULT_HOST):
            console.print(
                f"[red]error:[/] --dev binds {links.DEFAULT_HOST} only; drop --host {host} or "
                f"set {SECRET_ENV} and serve without --dev."
            )
            raise typer.Exit(code=2)
        host = links.DEFAULT_HOST
        enable_dev_mode()
    elif configured_secret() is None:
        console.print(
            f"[red]error:[/] no approval signing secret: set {SECRET_ENV} (e.g. to the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`), or pass --dev for "
            "a local server on 127.0.0.1 that accepts development links."
        )
        raise typer.Exit(code=2)
    host = host or links.viewer_host()
    try:
        port = links.viewer_port() if port is None else port
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(code=2) from None
    if public_url:
        os.environ[links.URL_ENV] = public_url  # what this process prints and links to
    base = public_url.rstrip("/") if public_url else links.local_url(host, port)
    sources = ViewerSources.from_env()
    app = create_app(AppSettings(sources=sources, approvals_db_url=approvals_db))

    def announce() -> None:
        console.print(f"FlowStone viewer on [bold]{base}/[/] (listening on {host}:{port})")
        console.print(f"  approvals pages: {base}/approvals/ (links: `flowstone approvals link`)")
        console.print(
            f"  reading the object store {sources.object_store.url} and the warehouse "
            f"{sources.warehouse}; Ctrl-C stops it"
        )

    try:
        serve_app(app, host, port, root_path=urlsplit(base).path.rstrip("/"), on_listening=announce)
    except OSError as exc:
        console.print(f"[red]error:[/] {exc}")
        exit_now(1)


@app.command()
def serve(
    host: str | None = typer.Option(None, help=_VIEWER_HOST_HELP),
    port: int | None = typer.Option(None, help=_VIEWER_PORT_HELP),
    public_url: str | None = typer.Option(None, "--public-url", help=_VIEWER_URL_HELP),
    dev: bool = typer.Option(False, "--dev", help=_DEV_HELP),
) -> None:
    """Serve the viewer (systems side by side per suite and case, bake histories) and the
    approvals pages, one web app, bound to 127.0.0.1 unless told otherwise."""
    serve_viewer(host, port, public_url, dev=dev)


@approvals_cli.app.command("serve")
def approvals_serve(
    host: str | None = typer.Option(None, help=_VIEWER_HOST_HELP),
    port: int | None = typer.Option(None, help=_VIEWER_PORT_HELP),
    public_url: str | None = typer.Option(None, "--public-url", help=_VIEWER_URL_HELP),
    db: str | None = typer.Option(None, help=approvals_cli._DB_HELP),
    dev: bool = typer.Option(False, "--dev", help=_DEV_HELP),
) -> None:
    """Serve the approvals pages (reached through signed links): the same app as `flowstone
    serve`, with the pages under /approvals."""
    serve_viewer(host, port, public_url, approvals_db=db, dev=dev)


def _instance_and_defs():
    """The instance under DAGSTER_HOME and the code location, imported on first use (typer's
    --help must not load Dagster)."""
    import dagster as dg

    from flowstone.definitions import defs

    return dg.DagsterInstance.get(), defs


def exit_now(code: int) -> None:
    """Leave without interpreter teardown, where duckdb 2.0's nanobind bindings print a
    "leaked functions" report that reads like a failure; everything is written by now."""
    from multiprocessing import util as mp_util

    # release multiprocessing semaphores (dbt makes one) before leaving; typeshed's stub
    # leaves out this private (but long-stable) atexit hook
    mp_util._exit_function()  # type: ignore[attr-defined]
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    app()
