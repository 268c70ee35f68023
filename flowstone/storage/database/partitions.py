"""Partitions of a table: which columns they use, and the WHERE clause that selects them.

Why: every backend filters by partition, and every filter must bind the values as parameters
(never splice them into SQL); one place builds that clause, as SQL text for DuckDB's own
connection (``?`` marks) and as a SQLAlchemy expression for everything behind SQLAlchemy.
PostgreSQL's COPY, which takes no server-side parameters, composes its own with psycopg (see
:mod:`.postgres_backend`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import sqlalchemy as sa

from flowstone.storage.database.schema import quote_identifier, sa_column, validate_identifier
from flowstone.storage.errors import StorageError
from flowstone.storage.keys import validate_partition_key

Partition = Mapping[str, str]

# No "format" (%s) style on purpose: a driver that reads %s marks reads every % in the text,
# including those in quoted column names; such drivers get SQLAlchemy expressions instead.
_MARKS = {"qmark": "?"}


def partition_columns(partitions: Sequence[Partition | None]) -> list[str]:
    """The partition columns shared by ``partitions`` (sorted), with names and values checked."""
    shapes = {tuple(sorted(p)) if p else () for p in partitions}
    if len(shapes) != 1:
        raise StorageError(f"partitions of one write must share their columns, got {shapes}")
    columns = list(next(iter(shapes)))
    for c in columns:
        validate_identifier(c, "partition column")
    for p in partitions:
        for c, v in (p or {}).items():
            validate_partition_key(v, what=f"partition value of {c!r}")
    return columns


def partition_filter(partitions: Sequence[Partition], style: str) -> tuple[str, list[str]]:
    """`` WHERE (a = ? AND b = ?) OR ...`` for DB-API ``style`` (qmark) and its parameters; an
    empty clause (every row) when there are no partitions."""
    if not partitions:
        return "", []
    mark = _MARKS[style]
    clauses: list[str] = []
    params: list[str] = []
    for p in partitions:
        columns = sorted(p)
        clauses.append("(" + " AND ".join(f"{quote_identifier(c)} = {mark}" for c in columns) + ")")
        params.extend(p[c] for c in columns)
    return " WHERE " + " OR ".join(clauses), params


def partition_clause(partitions: Sequence[Partition]) -> sa.ColumnElement[bool] | None:
    """``(a = :p1 AND b = :p2) OR ...`` with every value a bound TEXT parameter; None (every row)
    when there are no partitions."""
    if not partitions:
        return None
    return sa.or_(
        *(
            sa.and_(*(sa_column(c) == sa.bindparam(None, p[c], type_=sa.Text()) for c in sorted(p)))
            for p in partitions
        )
    )
