"""Dagster I/O manager that keeps pandas DataFrames in database tables, partition by partition.

Wiring over :class:`flowstone.storage.database.PartitionedTableStore`. The default target is
the DuckDB warehouse that dbt-duckdb reads (``flowstone.paths.warehouse_path()``), so assets
using ``io_manager_key="warehouse_io_manager"`` land where dbt models find them.

Table naming: the table is the last asset-key component; the schema is ``schema_name`` if set,
else the asset key's second-to-last component, else the database default (``main`` /
``public``).

Partition columns: one TEXT column per dimension of a MultiPartitionsDefinition (e.g.
``suite`` and ``system``), or one column named ``partition_column`` (``partition_key``) for
one-dimensional and dynamic partitions. Storing a partition replaces exactly its rows in one
transaction; several partitions in one run come as a dict keyed by partition key and are
replaced in a single transaction. Loading one partition returns the frame without the
partition columns; loading several returns them with the columns so rows can be told apart.

Names: table and column names are compared ignoring case on every database, so assets
``["wh", "Scores"]`` and ``["wh", "scores"]`` cannot share (DuckDB, SQLite) or split
(PostgreSQL) a table depending on the database: the second to write or read fails with a
NameClashError naming the asset, the partitions and both tables.
"""

from __future__ import annotations

import functools
from typing import Any

import dagster as dg
from pydantic import Field

from flowstone.paths import warehouse_path
from flowstone.storage.database import NameClashError, PartitionedTableStore
from io_managers._partitions import partition_specs, split_multi_partition_output


@functools.lru_cache(maxsize=16)
def _store(url: str, schema: str | None, evolution: bool) -> PartitionedTableStore:
    """One store (and connection pool) per configuration and process."""
    return PartitionedTableStore(url, schema=schema, allow_schema_evolution=evolution)


class DatabaseIOManager(dg.ConfigurableIOManager):
    """DataFrames to and from tables in DuckDB (default), PostgreSQL or SQLite."""

    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user:pw@host/db (use EnvVar for "
        "secrets). Default: the DuckDB warehouse file shared with dbt.",
    )
    schema_name: str | None = Field(
        default=None, description="Schema for every table (default: from the asset key)."
    )
    partition_column: str = Field(
        default="partition_key",
        description="Column holding the key of one-dimensional partitions.",
    )
    allow_schema_evolution: bool = Field(
        default=False,
        description="Add new frame columns to an existing table instead of failing.",
    )

    def _resolved_url(self) -> str:
        if self.url:
            return self.url
        path = warehouse_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"duckdb:///{path}"

    def _target(
        self, context: dg.InputContext | dg.OutputContext
    ) -> tuple[PartitionedTableStore, str]:
        path = context.asset_key.path
        schema = self.schema_name or (path[-2] if len(path) > 1 else None)
        return _store(self._resolved_url(), schema, self.allow_schema_evolution), path[-1]

    def _db_partition(self, spec: Any) -> dict[str, str]:
        return dict(spec) if isinstance(spec, dict) else {self.partition_column: spec}

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None and context.dagster_type.is_nothing:
            return
        store, table = self._target(context)
        specs = partition_specs(context)
        items: list[tuple[dict[str, str] | None, Any]]
        if specs:
            items = [
                (self._db_partition(spec), frame)
                for _, spec, frame in split_multi_partition_output(context, obj, specs)
            ]
        else:
            items = [(None, obj)]
        try:
            result = store.write_many(table, items)
        except NameClashError as exc:
            raise _naming_asset(context, exc) from exc
        context.add_output_metadata(
            {
                "dagster/table_name": result.table,
                "table": result.table,
                "dagster/row_count": result.rows,
                "rows": result.rows,
                "partitions": len(result.partitions) or "whole table",
                "columns": ", ".join(result.columns),
            }
        )

    def load_input(self, context: dg.InputContext) -> Any:
        store, table = self._target(context)
        specs = partition_specs(context)
        try:
            return store.read(table, [self._db_partition(spec) for _, spec in specs] or None)
        except NameClashError as exc:
            raise _naming_asset(context, exc) from exc


def _naming_asset(context: dg.InputContext | dg.OutputContext, exc: NameClashError) -> Exception:
    """The store's clash error with the asset in front: the store knows tables and partitions,
    and the person reading the run's error needs to know which asset to rename."""
    return NameClashError(f"asset {context.asset_key.to_user_string()}: {exc}")
