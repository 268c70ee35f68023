"""Read the dbt leaderboard mart straight from the warehouse (no Dagster, no dbt).

Why: ``flowstone demo`` prints it after the dbt build, and a notebook or a CI job can call it
on any warehouse file.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

LEADERBOARD_TABLE = "analytics.leaderboard"
COLUMNS = [
    "suite", "metric", "kind", "rank", "system", "latest_mean", "latest_ci_low", "latest_ci_high",
    "latest_ci_level", "best_mean", "previous_mean", "delta", "latest_pass_rate", "regressed",
    "runs", "latest_at",
]  # fmt: skip


def leaderboard(warehouse_path: Path | str, suite: str | None = None) -> pd.DataFrame:
    """The leaderboard, ordered by suite, metric and rank (one row per suite x metric x
    system; ``kind`` 'suite' for a suite metric's value, 'mean' for a mean). Raises FileNotFoundError / LookupError naming what to build first."""
    import duckdb

    path = Path(warehouse_path)
    if not path.exists():
        raise FileNotFoundError(
            f"no warehouse at {path}; materialize the warehouse and analytics assets first"
        )
    con = duckdb.connect(str(path), read_only=True)
    # a missing table must not resolve to a Python variable of the same name
    con.execute("SET python_enable_replacements = false")
    try:
        try:
            where, params = ("where suite = ?", [suite]) if suite else ("", [])
            return con.execute(
                f"select {', '.join(COLUMNS)} from {LEADERBOARD_TABLE} {where} "
                "order by suite, metric, rank, system",
                params,
            ).df()
        except duckdb.CatalogException as exc:
            raise LookupError(
                f"{path} has no {LEADERBOARD_TABLE} table; run the dbt build "
                "(the analytics assets) first"
            ) from exc
    finally:
        con.close()
