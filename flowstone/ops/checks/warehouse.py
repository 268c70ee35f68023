"""Doctor check: the DuckDB warehouse that the evaluation assets load and dbt builds on.

Why: a warehouse file left locked by a dead writer or damaged by a full disk fails every
warehouse and analytics asset; opening it read-only says which, without taking the lock.
"""

from __future__ import annotations

from pathlib import Path

from flowstone import paths
from flowstone.ops.checks.result import FAIL, OK, WARN, CheckResult, first_line


def check_warehouse(path: Path | None = None) -> CheckResult:
    """The DuckDB warehouse opens read-only and lists its tables."""
    name = "warehouse"
    path = path or paths.warehouse_path()
    rebuild = "materialize the warehouse and analytics assets (or run `flowstone demo`)"
    if not path.exists():
        return CheckResult(name, WARN, f"{path} not built yet", rebuild)
    import duckdb

    try:
        with duckdb.connect(str(path), read_only=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_catalog = "
                "current_database()"
            ).fetchone()
            if row is None:
                raise RuntimeError("count(*) of information_schema.tables returned no row")
            tables = row[0]
    except Exception as exc:
        message = first_line(exc)
        if "lock" in message.lower():
            return CheckResult(
                name,
                WARN,
                f"{path} is held by another process: {message}",
                "wait for the writer (a dbt build or a warehouse load) to finish, then re-run",
            )
        return CheckResult(
            name,
            FAIL,
            f"{path} cannot be opened as DuckDB: {message}",
            f"move the file aside (mv {path} {path}.broken) and {rebuild}",
        )
    return CheckResult(name, OK, f"{path}: {tables} tables and views")
