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
from flowstone.storage.database.schema import NameClashError, quote_identifier
from flowstone.storage.errors import StorageError


def describe(verb: str, partitions: Sequence[Partition | None]) -> str:
    """``writing partition {...}``, ``reading partitions [...]`` or ``... the whole table``, for
    messages (the first five partitions of a long backfill)."""
    shown = [dict(p) for p in partitions if p]
    if not shown:
        return f"{verb} the whole table"
    if len(shown) == 1:
        return f"{verb} partition {shown[0]}"
    more = f" and {len(shown) - 5} more" if len(shown) > 5 else ""
    return f"{verb} partitions {shown[:5]}{more}"


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

    def check_case(self, table: str, found: Sequence[str], doing: str) -> bool:
        """Whether ``table`` exists, given ``found``: the qualified names of the tables and views
        whose schema and name equal ours but for ASCII case (``fold_case``).

        Raises NameClashError when any of them is not exactly ours: DuckDB and SQLite would use
        that table for ours (and overwrite its partitions), PostgreSQL a second table, so the
        one rule for every database is to refuse, naming both tables and what was being done.
        """
        wanted = self.qualified(table)
        others = sorted(set(found) - {wanted})
        if others:
            raise NameClashError(
                f"table {wanted} differs only by case from existing table "
                f"{' and '.join(others)} in {self.location} ({doing}). Table names are compared "
                "ignoring case on every database (DuckDB and SQLite would use one table for "
                "both, PostgreSQL two), so this is refused; rename the asset, or drop or rename "
                "the existing table."
            )
        return wanted in found

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

    def same_name_tables(self, table: str) -> list[str]:
        """Qualified names of the tables and views equal to ``table`` but for ASCII case
        (itself included), for :meth:`TableNames.check_case`. Concurrent writers creating such
        names are serialized where the database allows two of them (PostgreSQL)."""

    def columns(self, table: str) -> dict[str, str] | None:
        """Column name -> SQL type name in table order, or None when the table is missing."""

    def run(self, statement: sa.schema.ExecutableDDLElement) -> None:
        """Execute DDL, compiled for the session's dialect (never SQL text: the dialect's
        identifier preparer is what escapes a name for the driver)."""

    def replace(self, table: str, partition: Partition | None, frame: Any) -> None:
        """Delete the partition's rows (every row when None) and insert the frame's."""


class TableBackend(Protocol):
    """One dialect's way of moving DataFrames in and out of partitioned tables."""

    def transaction(self) -> AbstractContextManager[WriteSession]:
        """A session whose work commits when the block returns and rolls back if it raises."""

    def read(self, table: str, partitions: Sequence[Partition], drop_columns: Sequence[str]) -> Any:
        """The rows of ``partitions`` (all rows when empty) without ``drop_columns``, as a
        DataFrame; ``TableNames.missing_table`` when the table does not exist, and
        ``TableNames.check_case``'s error when another table's name differs only by case."""

    def row_count(self, table: str, partition: Partition | None) -> int:
        """Rows of one partition (of the table when None); the same errors as ``read``."""

    def dispose(self) -> None:
        """Close pooled connections."""
