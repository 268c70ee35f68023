"""``flowstone eval``: suite files in, a table or JSON out, and an exit code CI can gate on.

Exit codes: 0 when every blocking check passed, 1 when one failed, 2 on bad input (a suite
file, a setting, an unknown system), before anything is evaluated. Progress goes to stderr so
that ``--json`` output on stdout stays parseable.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flowstone import paths
from flowstone import progress as case_progress

if TYPE_CHECKING:
    from flowstone.evaluation.offline import SuiteOutcome

EXIT_OK, EXIT_BLOCKED, EXIT_BAD_INPUT = 0, 1, 2


def _table(outcome: SuiteOutcome) -> Table:
    table = Table(title=f"{outcome.suite} × {outcome.system} · {outcome.cases} cases")
    for column in ("metric", "mean", "CI", "valid", "invalid"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, m in outcome.metrics.items():
        ci = f"[{m.interval.low:.3f}, {m.interval.high:.3f}]" if m.interval else "—"
        mean = f"[red]failed[/]: {m.failure}" if m.failed else f"{m.mean:.3f}"
        table.add_row(name, mean, ci, str(m.cases), str(m.invalid))
    for name, value in outcome.suite_metrics.items():
        shown = f"{value:.3f}" if value == value else "undefined"
        table.add_row(f"{name} (suite)", shown, "", "", "")
    return table


def _checks(outcome: SuiteOutcome) -> str:
    if not outcome.checks:
        return "no threshold checks"
    parts = []
    for c in outcome.checks:
        mark = "[green]✓[/]" if c.passed else ("[red]✗[/]" if c.blocking else "[yellow]![/]")
        why = f" ({escape(c.reason)})" if c.reason else ""
        parts.append(f"{mark} {c.name}{' (blocking)' if c.blocking else ''}{why}")
    return "  ".join(parts)


def run(
    suites: Annotated[
        list[Path], typer.Argument(help="Suite files (.jsonl); a suite's name is its file name.")
    ],
    system: Annotated[str, typer.Option("--system", help="A system of the registry (e.g. echo).")],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="Evaluation settings (suites.<name>); default: evaluation.yaml."
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per suite (a list for several).")
    ] = False,
    reports_dir: Annotated[
        Path | None,
        typer.Option(
            "--reports-dir", help="Where the HTML reports go (default: a temporary folder)."
        ),
    ] = None,
) -> None:
    """Evaluate suite files with one system, the same code the assets run; no Dagster needed."""
    err = Console(stderr=True)
    # the pipeline (pandas, scipy, matplotlib: about a second) loads for this command only,
    # not for every `flowstone` command that mounts it
    from flowstone.evaluation.offline import (
        EvalInputError,
        build_catalog,
        evaluate,
        require_system,
    )

    try:
        catalog = build_catalog(suites, config or paths.evaluation_config_path())
        require_system(catalog, system)
    except EvalInputError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    folder = reports_dir or Path(tempfile.mkdtemp(prefix="flowstone-eval-"))

    def on_cases(label: str, done: int, total: int) -> None:
        if done == total or done % max(1, total // 4) == 0:
            err.print(f"  {label}: {done}/{total} cases", highlight=False)

    case_progress.set_listener(on_cases)
    outcomes: list[SuiteOutcome] = []
    try:
        for name in catalog.suite_names:
            err.print(f"evaluating {name} with {system}…")
            outcomes.append(evaluate(catalog, name, system, folder))
    except EvalInputError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    finally:
        case_progress.set_listener(None)
    if as_json:
        documents = [o.to_json() for o in outcomes]
        json.dump(documents[0] if len(documents) == 1 else documents, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        out = Console()
        for outcome in outcomes:
            out.print(_table(outcome))
            out.print(_checks(outcome))
            out.print(f"report: {outcome.report_path}", highlight=False)
    blocked = [o for o in outcomes if o.blocked]
    for o in blocked:
        failing = ", ".join(c.name for c in o.checks if c.blocking and not c.passed)
        err.print(f"[red]blocked:[/] {o.suite} × {o.system}: {failing}")
    raise typer.Exit(EXIT_BLOCKED if blocked else EXIT_OK)
