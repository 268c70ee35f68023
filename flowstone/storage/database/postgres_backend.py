"""PostgreSQL: rows in through ``COPY ... FROM STDIN`` and out through ``COPY ... TO STDOUT``,
both as CSV handled by Arrow.

Why: COPY is PostgreSQL's bulk path, an order of magnitude faster than executemany or
``pandas.to_sql``; Arrow writes and parses the CSV in C. COPY needs psycopg (3); other drivers
get the generic SQLAlchemy path. The catalog comes from information_schema.

Both COPY statements are composed with :mod:`psycopg.sql` (names as ``Identifier``, partition
values as ``Literal``) and sent WITHOUT parameters. COPY cannot take server-side parameters:
psycopg merges them into the text client-side, and only when there are some does it read every
``%`` in the text as a placeholder, those inside quoted column names included. The partition
filter used to be bound that way, so a column named ``50% off`` was written but failed every
read of a partition. ``Literal`` renders a value with the connection's own adapter, the same
quoting that client-side binding applies.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from flowstone.storage.database.backend import TableNames
from flowstone.storage.database.generic_backend import SqlAlchemyBackend
from flowstone.storage.database.partitions import Partition
from flowstone.storage.database.schema import family, fold_case

_COPY_BATCH_ROWS = 200_000


class PostgresBackend(SqlAlchemyBackend):
    """PostgreSQL through SQLAlchemy, with COPY in and out on psycopg."""

    creates_schemas = True

    def __init__(self, names: TableNames, engine: sa.Engine | None = None):
        super().__init__(names, engine)
        self._copy = names.url.get_driver_name() == "psycopg"

    def _columns(self, conn: sa.Connection, table: str) -> dict[str, str] | None:
        return self._information_schema_columns(conn, table, "public")

    def _same_name_tables(
        self, conn: sa.Connection, table: str, writing: bool = False
    ) -> list[str]:
        """information_schema's tables equal to ``table`` but for case. PostgreSQL lets
        ``"Scores"`` and ``"scores"`` both exist, so a writer about to create a table first
        takes a transaction lock on the case-folded name and looks again: two processes creating
        case variants at once would otherwise both find nothing and make two tables (and two
        creating the same name would collide in CREATE TABLE). Writers to an existing table
        never wait for it."""
        found = self._information_schema_tables(conn, table, "public")
        if writing and self.names.qualified(table) not in found:
            key = "flowstone.table:" + fold_case(f"{self.names.schema or 'public'}.{table}")
            conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key}
            )
            found = self._information_schema_tables(conn, table, "public")
        return found

    def _insert(self, conn: sa.Connection, table: str, frame: Any, partition: Partition) -> None:
        if self._copy:
            copy_in(conn, self._identifier(table), frame, partition)
        else:
            super()._insert(conn, table, frame, partition)

    def _identifier(self, table: str) -> Any:
        """``"schema"."table"`` as a psycopg ``Identifier``."""
        from psycopg import sql

        parts = (self.names.schema, table) if self.names.schema else (table,)
        return sql.Identifier(*parts)

    def _select(
        self,
        conn: sa.Connection,
        table: str,
        names: list[str],
        types: dict[str, str],
        partitions: Sequence[Partition],
    ) -> Any:
        if not self._copy:
            return super()._select(conn, table, names, types, partitions)
        return copy_out(conn, self._identifier(table), names, types, partitions)


def copy_in(conn: sa.Connection, table: Any, frame: Any, partition: Partition) -> None:
    """The frame (plus the partition's columns) into ``table`` (a psycopg ``Identifier``), by
    COPY FROM STDIN."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    from psycopg import sql

    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    for p in sorted(partition):
        arrow = arrow.append_column(p, pa.repeat(pa.scalar(partition[p]), len(arrow)))
    # tz-aware timestamps are written as UTC instants; PostgreSQL reads the offset
    target = sql.SQL(", ").join(sql.Identifier(c) for c in arrow.column_names)
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(table, target)
    raw: Any = conn.connection.driver_connection  # psycopg's connection
    options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
    with raw.cursor() as cur, cur.copy(statement) as copy:
        for batch in arrow.to_batches(max_chunksize=_COPY_BATCH_ROWS):
            buf = io.BytesIO()
            pacsv.write_csv(batch, buf, options)
            copy.write(buf.getbuffer())


def copy_out(
    conn: sa.Connection,
    table: Any,
    names: list[str],
    types: dict[str, str],
    partitions: Sequence[Partition],
) -> Any:
    """Columns ``names`` of the partitions' rows in ``table`` (a psycopg ``Identifier``), by
    COPY TO STDOUT, typed from the catalog."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    from psycopg import sql

    select: list[sql.Composable] = []
    arrow_types, utc_cols = {}, []
    for n in names:
        t, q = types[n], sql.Identifier(n)
        fam = family(t)
        if fam == "timestamp" and "WITH TIME ZONE" in t.upper():
            select.append(sql.SQL("({} AT TIME ZONE 'UTC') AS {}").format(q, q))
            utc_cols.append(n)
            arrow_types[n] = pa.timestamp("us")
        else:
            select.append(q)
            arrow_types[n] = {
                "integer": pa.int64(),
                "float": pa.float64(),
                "boolean": pa.bool_(),
                "timestamp": pa.timestamp("us"),
                "date": pa.date32(),
                "text": pa.string(),
            }.get(fam, pa.string())
    statement = sql.SQL("COPY (SELECT {} FROM {}{}) TO STDOUT (FORMAT csv, HEADER true)").format(
        sql.SQL(", ").join(select), table, _where(partitions)
    )
    raw: Any = conn.connection.driver_connection  # psycopg's connection
    buf = io.BytesIO()
    with raw.cursor() as cur:
        # A parallel scan returns rows in worker order; a serial one keeps insertion order,
        # so a partition reads back the way it was written.
        cur.execute("SET LOCAL max_parallel_workers_per_gather = 0")
    with raw.cursor() as cur, cur.copy(statement) as copy:  # no parameters: see the module
        for chunk in copy:
            buf.write(chunk)
    buf.seek(0)
    convert = pacsv.ConvertOptions(
        column_types=arrow_types,
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
        true_values=["t"],
        false_values=["f"],
    )
    arrow = pacsv.read_csv(
        buf,
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, block_size=1 << 24),
        convert_options=convert,
    )
    frame = arrow.to_pandas()
    for n in utc_cols:
        frame[n] = frame[n].dt.tz_localize("UTC")
    return frame


def _where(partitions: Sequence[Partition]) -> Any:
    """`` WHERE ("a" = 'x' AND "b" = 'y') OR ...``, composed by psycopg (empty for no
    partitions). The values are ``Literal``: the statement carries no parameters (see the
    module docstring), and psycopg quotes them as client-side binding would."""
    from psycopg import sql

    if not partitions:
        return sql.SQL("")
    clauses = [
        sql.SQL("({})").format(
            sql.SQL(" AND ").join(
                sql.SQL("{} = {}").format(sql.Identifier(c), sql.Literal(p[c])) for c in sorted(p)
            )
        )
        for p in partitions
    ]
    return sql.SQL(" WHERE ") + sql.SQL(" OR ").join(clauses)
