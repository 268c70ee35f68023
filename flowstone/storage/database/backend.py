"""The interface every dialect implements: open a write transaction, read, count, dispose.

Why: the store's rules (validation, the schema check, one transaction per write) are the same
for every database, but the fast way to move rows is not (DuckDB scans a registered frame,
PostgreSQL speaks COPY, others executemany). The store talks only to these two protocols; a
backend is picked once per store from the URL's dialect.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa

from flowstone.storage.database.partitions import Partition
from flowstone.storage.database.schema import quote_identifier
from flowstone.storage.errors import StorageError


@dataclass(frozen=True)
class TableNames:
    """Where a store's tables live: the database (for messages) and the schema (for names)."""

    url: sa.URL
    schema: str | None

    def qualified(self, table: str) -> str:
        """``schema.table`` as a person reads it."""
        return f"{self.schema}.{table}" if self.schema else table

    def quoted(self, table: str) -> str:
        """``"schema"."table"`` as SQL text."""
        prefix = quote_identifier(self.schema) + "." if self.schema else ""
        return prefix + quote_identifier(table)

    @property
    def location(self) -> str:
        """The URL without its password."""
        return self.url.render_as_string(hide_password=True)

    def missing_table(self, table: str, detail: str = "") -> StorageError:
        """The error for reading a table nobody has written yet."""
        return StorageError(
            f"table {self.qualified(table)} does not exist in {self.location}; materialize the "
            f"asset first{detail}"
        )


class WriteSession(Protocol):
    """One open write transaction: what the schema check and a partition replace need."""

    dialect: sa.Dialect  # renders the frame's SQL types for DDL and for comparisons
    creates_schemas: bool  # whether the dialect has schemas to CREATE before a table

    def columns(self, table: str) -> dict[str, str] | None:
        """Column name -> SQL type name in table order, or None when the table is missing."""

    def run(self, statement: str | sa.schema.ExecutableDDLElement) -> None:
        """Execute DDL (a string is executed as it is)."""

    def replace(self, table: str, partition: Partition | None, frame: Any) -> None:
        """Delete the partition's rows (every row when None) and insert the frame's."""


class TableBackend(Protocol):
    """One dialect's way of moving DataFrames in and out of partitioned tables."""

    def transaction(self) -> AbstractContextManager[WriteSession]:
        """A session whose work commits when the block returns and rolls back if it raises."""

    def read(self, table: str, partitions: Sequence[Partition], drop_columns: Sequence[str]) -> Any:
        """The rows of ``partitions`` (all rows when empty) without ``drop_columns``, as a
        DataFrame; ``TableNames.missing_table`` when the table does not exist."""

    def row_count(self, table: str, partition: Partition | None) -> int:
        """Rows of one partition (of the table when None)."""

    def dispose(self) -> None:
        """Close pooled connections."""
