"""How a DataFrame maps onto a table: safe identifiers, SQL types and their coarse families.

Why: table, schema and column names are the only text spliced into SQL (values are always
bound), so each is checked and quoted here; and a frame is compared with an existing table by
type family, because each dialect spells the same type differently (``BIGINT``, ``INTEGER``,
``int8``).
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles

from flowstone.storage.errors import StorageError, UnsafeKeyError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# PostgreSQL's NAMEDATALEN - 1: longer names are cut to this many BYTES (a NOTICE, no error), so
# a 40-character name in a non-Latin script would be stored under another name.
MAX_NAME_BYTES = 63
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

# The columns of a table in order, from information_schema (DuckDB and PostgreSQL): SQLAlchemy
# reflection through duckdb_engine relies on pg_catalog tables DuckDB does not have.
COLUMNS_SQL = (
    "SELECT column_name, data_type FROM information_schema.columns "
    "WHERE table_schema = {schema} AND table_name = {table} ORDER BY ordinal_position"
)

# The tables and views of a schema whose names may equal a table's name but for case, from
# information_schema (PostgreSQL; DuckDB has a cheaper query of its own). lower() only narrows
# the rows; fold_case decides, so every dialect applies the same rule whatever its lower() does
# to non-ASCII letters.
SAME_NAME_TABLES_SQL = (
    "SELECT table_schema, table_name FROM information_schema.tables "
    "WHERE table_catalog = current_database() AND lower(table_schema) = {schema} "
    "AND lower(table_name) = {table}"
)


class NameClashError(StorageError):
    """Two table (or column) names that differ only by case.

    DuckDB and SQLite compare names without ASCII case, even quoted ones (``"Scores"`` and
    ``"scores"`` are one table), while PostgreSQL compares quoted names exactly (two tables). The
    same assets would then share, or silently overwrite, a table on one database and not on
    another, so the store refuses such names on every database.
    """


def fold_case(name: str) -> str:
    """``name`` with ASCII letters lowered: how DuckDB and SQLite compare names (both leave
    non-ASCII letters as they are: ``"Ü"`` and ``"ü"`` are two columns there)."""
    return name.translate(_ASCII_LOWER)


def case_clashes(names: list[str]) -> list[tuple[str, str]]:
    """Pairs of distinct ``names`` that are equal under :func:`fold_case`, in order."""
    first: dict[str, str] = {}
    pairs: list[tuple[str, str]] = []
    for name in names:
        seen = first.setdefault(fold_case(name), name)
        if seen != name:
            pairs.append((seen, name))
    return pairs


def validate_identifier(name: str, what: str) -> str:
    """``name`` if it is a plain SQL identifier; UnsafeKeyError naming ``what`` otherwise."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name) or len(name) > 63:
        raise UnsafeKeyError(
            f"{what} {name!r} is not a plain SQL identifier (letters, digits, '_', at most 63 "
            "characters, not starting with a digit); rename it"
        )
    return name


def quote_identifier(name: str) -> str:
    """Always quote: dialect reserved-word lists differ (``at`` is reserved in DuckDB only).

    For SQL text that no driver reads placeholders in: DuckDB's own connection, or a statement
    sent without parameters. A ``%`` in a name is kept as it is, which is wrong for text a
    ``format``/``pyformat`` driver (psycopg) binds parameters into: build that with SQLAlchemy,
    whose identifier preparer doubles ``%`` exactly when the driver will read it.
    """
    return '"' + name.replace('"', '""') + '"'


def validate_column(name: Any) -> str:
    """A frame's column name: any text a quoted identifier can hold, within 63 UTF-8 bytes
    (PostgreSQL would silently cut a longer name, and the column would read back renamed; the
    limit holds on every dialect so a frame that fits one database fits all)."""
    if not isinstance(name, str) or not name:
        raise UnsafeKeyError(f"column name {name!r} must be a non-empty string")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError as exc:  # a lone surrogate: no database can store it
        raise UnsafeKeyError(f"column name {name!r} is not valid Unicode text") from exc
    if size > MAX_NAME_BYTES:
        raise UnsafeKeyError(
            f"column name {name!r} is {size} bytes in UTF-8; at most {MAX_NAME_BYTES} fit "
            "(PostgreSQL cuts longer names); rename it"
        )
    if any(ord(c) < 32 for c in name):
        raise UnsafeKeyError(f"column name {name!r} contains control characters")
    return name


def sa_column(name: str) -> sa.ColumnClause:
    """A quoted column for SQLAlchemy expressions."""
    return sa.column(sa.sql.quoted_name(name, quote=True))


class AddColumn(sa.schema.ExecutableDDLElement):
    """``ALTER TABLE ... ADD COLUMN ...`` as a SQLAlchemy DDL element (SQLAlchemy has no such
    construct).

    Why not a string: DDL text run through a SQLAlchemy connection reaches psycopg as a query
    with (empty) parameters, so a ``%`` in the new column's name was read as a placeholder and
    schema evolution failed on PostgreSQL. Compiled by the dialect, the names are quoted by its
    identifier preparer, which doubles ``%`` exactly for the drivers that need it.
    """

    def __init__(self, table: sa.Table, column: sa.Column[Any]) -> None:
        self.table, self.column = table, column


@compiles(AddColumn)
def _compile_add_column(element: AddColumn, compiler: Any, **kw: Any) -> str:
    return (
        f"ALTER TABLE {compiler.preparer.format_table(element.table)} "
        f"ADD COLUMN {compiler.get_column_specification(element.column)}"
    )


def sql_type_for(series: Any) -> sa.types.TypeEngine:
    """The SQL type a pandas column is stored as."""
    import pandas as pd

    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return sa.Boolean()
    if pd.api.types.is_integer_dtype(dtype):
        return sa.BigInteger()
    if pd.api.types.is_float_dtype(dtype):
        return sa.Double()
    if isinstance(dtype, pd.DatetimeTZDtype):
        return sa.DateTime(timezone=True)
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return sa.DateTime()
    inferred = pd.api.types.infer_dtype(series, skipna=True)
    by_inferred: dict[str, sa.types.TypeEngine] = {
        "boolean": sa.Boolean(),
        "integer": sa.BigInteger(),
        "floating": sa.Double(),
        "mixed-integer-float": sa.Double(),
        "date": sa.Date(),
        "datetime": sa.DateTime(),
        "datetime64": sa.DateTime(),
        "bytes": sa.LargeBinary(),
        "decimal": sa.Numeric(),
    }
    return by_inferred.get(inferred, sa.Text())


def family(type_name: str) -> str:
    """Coarse type family of a SQL type name, used to compare a frame with an existing table."""
    name = type_name.upper()
    if "INTERVAL" in name:
        return "interval"
    for needle, fam in (("BOOL", "boolean"), ("INT", "integer"), ("DOUBLE", "float"),
                        ("REAL", "float"), ("FLOAT", "float"), ("NUMERIC", "decimal"),
                        ("DECIMAL", "decimal"), ("TIMESTAMP", "timestamp"),
                        ("DATETIME", "timestamp"), ("DATE", "date"), ("CHAR", "text"),
                        ("TEXT", "text"), ("STRING", "text"), ("BLOB", "binary"),
                        ("BYTEA", "binary"), ("BINARY", "binary")):  # fmt: skip
        if needle in name:
            return fam
    return name.lower()


# The SQLAlchemy type a family is read back as by the generic backend.
SA_TYPES: dict[str, sa.types.TypeEngine] = {
    "boolean": sa.Boolean(),
    "integer": sa.BigInteger(),
    "float": sa.Double(),
    "decimal": sa.Numeric(),
    "timestamp": sa.DateTime(),
    "date": sa.Date(),
    "text": sa.Text(),
    "binary": sa.LargeBinary(),
}


def compatible(frame_family: str, table_family: str, all_null: bool) -> bool:
    """May a frame column of ``frame_family`` go into a table column of ``table_family``?"""
    if all_null or frame_family == table_family:
        return True
    return frame_family == "integer" and table_family in ("float", "decimal")
