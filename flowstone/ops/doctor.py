"""``flowstone doctor``: check the instance, warehouse, object store, credentials, pool and dbt.

Prints one row a check (ok / warn / fail, what was found, how to fix it) as a table, or as
JSON with ``--json`` for scripts and CI. Exits 1 when any check fails (``--strict``: or warns),
so ``flowstone doctor && dagster dev`` stops early on a broken setup.

Also runnable alone: ``python -m flowstone.ops.doctor --json``, without the Dagster instance
check, which needs Dagster: the ``flowstone`` command registers it from the wiring
(``assets/instance_check.py``) with :func:`flowstone.ops.checks.runner.register_check`.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from flowstone.ops.checks.result import FAIL, OK, WARN, CheckResult
from flowstone.ops.checks.runner import run_checks

app = typer.Typer(help="Check that FlowStone's services and files are usable.")

_STYLE = {OK: "[green]ok[/]", WARN: "[yellow]warn[/]", FAIL: "[red]fail[/]"}


@app.callback(invoke_without_command=True)
def doctor(
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the results as a JSON list.")
    ] = False,
    only: Annotated[
        list[str] | None,
        typer.Option(
            help="Run only these checks (repeatable), e.g. --only warehouse --only dbt; an "
            "unknown name lists the known ones."
        ),
    ] = None,
    object_store: Annotated[
        str | None,
        typer.Option(
            help="Store to probe: s3://bucket/prefix (endpoint from AWS_ENDPOINT_URL) or a "
            "folder (default: $FLOWSTONE_OBJECT_STORE_URL, else <outputs>/objects)."
        ),
    ] = None,
    strict: Annotated[bool, typer.Option(help="Exit 1 on warnings too.")] = False,
    timeout: Annotated[float, typer.Option(min=1.0, help="Seconds before a check is hung.")] = 60.0,
) -> None:
    """Run every health check and report ok / warn / fail with the fix."""
    try:
        results = run_checks(only, object_store=object_store, timeout_s=timeout)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--only") from None
    if json_output:
        typer.echo(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print_table(results)
    failed = any(r.status == FAIL for r in results)
    warned = any(r.status == WARN for r in results)
    if failed or (strict and warned):
        raise typer.Exit(code=1)


def print_table(results: list[CheckResult]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table("check", "status", "detail", "fix", title="flowstone doctor", show_lines=True)
    for result in results:
        status = _STYLE.get(result.status, escape(result.status))
        table.add_row(result.name, status, escape(result.detail), escape(result.fix))
    console.print(table)
    counts = {s: sum(r.status == s for r in results) for s in (OK, WARN, FAIL)}
    console.print(f"{counts[OK]} ok, {counts[WARN]} warn, {counts[FAIL]} fail")


if __name__ == "__main__":
    app()
