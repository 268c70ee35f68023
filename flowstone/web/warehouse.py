"""The DuckDB warehouse, read-only and briefly: trends over materializations and bake rows.

Why read-only, one connection per request: the warehouse file is shared with the pipeline's
database I/O manager and with dbt, and DuckDB lets one process write a file at a time. A
viewer that held the file would stop a run; a viewer that finds the file held by a writer
says so (:class:`WarehouseBusy`, a 503 page) instead of failing.

What the warehouse holds: ``evaluation.warehouse_reports`` and the bake tables keep each
partition's latest run only (a re-materialization replaces its rows); ``analytics.report_history``
(dbt, incremental) accumulates every run a dbt build has seen, so the trend is the union of the two.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from flowstone.web.records import BakeProfileRow, BakeQualityRow, TrendPoint, number_or_none

REPORTS = ("evaluation", "warehouse_reports")
REPORT_HISTORY = ("analytics", "report_history")
BAKE_QUALITY = ("baking", "warehouse_bake_quality")
BAKE_PROFILE = ("baking", "warehouse_bake_profile")


class WarehouseBusy(RuntimeError):
    """Another process holds the DuckDB file for writing; the page can be reloaded soon."""


class Warehouse:
    """Read-only queries over one DuckDB file; each call opens and closes its connection."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def exists(self) -> bool:
        return self.path.is_file()

    @contextlib.contextmanager
    def _connect(self) -> Iterator[tuple[Any, set[tuple[str, str]]]]:
        """A read-only connection and the (schema, table) names it has; nothing when the
        file does not exist yet."""
        import duckdb

        try:
            con = duckdb.connect(str(self.path), read_only=True)
        except (duckdb.IOException, duckdb.ConnectionException) as exc:
            raise WarehouseBusy(
                f"the warehouse {self.path} is held by another process ({exc}); a dbt build "
                "or a pipeline step is writing it. Reload this page in a moment."
            ) from exc
        try:
            con.execute("SET python_enable_replacements = false")
            tables = {
                (str(s), str(t))
                for s, t in con.execute(
                    "select table_schema, table_name from information_schema.tables"
                ).fetchall()
            }
            yield con, tables
        finally:
            con.close()

    def _rows(self, table: tuple[str, str], sql: str, params: list[Any]) -> list[dict[str, Any]]:
        if not self.exists:
            return []
        with self._connect() as (con, tables):
            if table not in tables:
                return []
            cursor = con.execute(sql.format(table=f'"{table[0]}"."{table[1]}"'), params)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    # -- evaluation ---------------------------------------------------------------------

    def trend(self, suite: str) -> dict[tuple[str, str], list[TrendPoint]]:
        """(system, metric) -> one point per materialization, oldest first."""
        if not self.exists:
            return {}
        with self._connect() as (con, tables):
            sources = [t for t in (REPORTS, REPORT_HISTORY) if t in tables]
            if not sources:
                return {}
            union = " union all ".join(
                f'select system, metric, mean, pass_rate, materialized_at, run_id from "{s}"."{t}" '
                "where suite = ?"
                for s, t in sources
            )
            rows = con.execute(
                f"select system, metric, any_value(mean), any_value(pass_rate), "
                f"min(materialized_at) as first_at, run_id from ({union}) "
                "group by system, metric, run_id order by first_at",
                [suite] * len(sources),
            ).fetchall()
        out: dict[tuple[str, str], list[TrendPoint]] = {}
        for system, metric, mean, pass_rate, at, run_id in rows:
            number = number_or_none(mean)
            if number is None or not isinstance(at, datetime):
                continue
            out.setdefault((str(system), str(metric)), []).append(
                TrendPoint(at, str(run_id), number, number_or_none(pass_rate))
            )
        return out

    # -- baking -------------------------------------------------------------------------

    def bake_models(self) -> list[str]:
        names: set[str] = set()
        for table in (BAKE_QUALITY, BAKE_PROFILE):
            names.update(
                str(r["model"]) for r in self._rows(table, "select distinct model from {table}", [])
            )
        return sorted(names)

    def bake_quality(self, model: str) -> list[BakeQualityRow]:
        rows = self._rows(
            BAKE_QUALITY, "select * from {table} where model = ? order by materialized_at", [model]
        )
        return [
            BakeQualityRow(
                version=str(r.get("version") or ""),
                variant=str(r.get("variant") or ""),
                task=str(r.get("task") or ""),
                metric=str(r.get("metric") or ""),
                value=number_or_none(r.get("value")),
                threshold=number_or_none(r.get("threshold")),
                passed=bool(r.get("passed")),
                fidelity=number_or_none(r.get("fidelity")),
                materialized_at=r.get("materialized_at"),
                run_id=str(r.get("run_id") or ""),
            )
            for r in rows
        ]

    def bake_profile(self, model: str) -> list[BakeProfileRow]:
        rows = self._rows(
            BAKE_PROFILE,
            "select * from {table} where model = ? order by materialized_at, variant desc",
            [model],
        )
        return [
            BakeProfileRow(
                version=str(r.get("version") or ""),
                variant=str(r.get("variant") or ""),
                batch_size=int(r.get("batch_size") or 0),
                latency_p50_ms=number_or_none(r.get("latency_p50_ms")),
                latency_p95_ms=number_or_none(r.get("latency_p95_ms")),
                throughput_per_s=number_or_none(r.get("throughput_per_s")),
                size_bytes=int(r.get("size_bytes") or 0),
                peak_memory_bytes=int(r.get("peak_memory_bytes") or 0),
                materialized_at=r.get("materialized_at"),
                run_id=str(r.get("run_id") or ""),
            )
            for r in rows
        ]
