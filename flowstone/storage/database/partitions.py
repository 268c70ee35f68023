"""Partitions of a table: which columns they use, and the WHERE clause that selects them.

Why: every backend filters by partition, and every filter must bind the values as parameters
(never splice them into SQL); one place builds that clause for each paramstyle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from flowstone.storage.database.schema import quote_identifier, validate_identifier
from flowstone.storage.errors import StorageError
from flowstone.storage.keys import validate_partition_key

Partition = Mapping[str, str]

_MARKS = {"qmark": "?", "format": "%s"}


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
    """`` WHERE (a = ? AND b = ?) OR ...`` for DB-API ``style`` (qmark or format) and its
    parameters; an empty clause (every row) when there are no partitions."""
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
