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

from flowstone.storage.errors import UnsafeKeyError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# The columns of a table in order, from information_schema (DuckDB and PostgreSQL): SQLAlchemy
# reflection through duckdb_engine relies on pg_catalog tables DuckDB does not have.
COLUMNS_SQL = (
    "SELECT column_name, data_type FROM information_schema.columns "
    "WHERE table_schema = {schema} AND table_name = {table} ORDER BY ordinal_position"
)


def validate_identifier(name: str, what: str) -> str:
    """``name`` if it is a plain SQL identifier; UnsafeKeyError naming ``what`` otherwise."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name) or len(name) > 63:
        raise UnsafeKeyError(
            f"{what} {name!r} is not a plain SQL identifier (letters, digits, '_', at most 63 "
            "characters, not starting with a digit); rename it"
        )
    return name


def quote_identifier(name: str) -> str:
    """Always quote: dialect reserved-word lists differ (``at`` is reserved in DuckDB only)."""
    return '"' + name.replace('"', '""') + '"'


def validate_column(name: Any) -> str:
    """A frame's column name: any text a quoted identifier can hold, within 63 characters."""
    if not isinstance(name, str) or not name or len(name) > 63:
        raise UnsafeKeyError(f"column name {name!r} must be a non-empty string of at most 63 chars")
    if any(ord(c) < 32 for c in name):
        raise UnsafeKeyError(f"column name {name!r} contains control characters")
    return name


def sa_column(name: str) -> sa.ColumnClause:
    """A quoted column for SQLAlchemy expressions."""
    return sa.column(sa.sql.quoted_name(name, quote=True))


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
