"""PostgreSQL: rows in through ``COPY ... FROM STDIN`` and out through ``COPY ... TO STDOUT``,
both as CSV handled by Arrow.

Why: COPY is PostgreSQL's bulk path, an order of magnitude faster than executemany or
``pandas.to_sql``; Arrow writes and parses the CSV in C. COPY needs psycopg (3); other drivers
get the generic SQLAlchemy path. The catalog comes from information_schema.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from flowstone.storage.database.backend import TableNames
from flowstone.storage.database.generic_backend import SqlAlchemyBackend
from flowstone.storage.database.partitions import Partition, partition_filter
from flowstone.storage.database.schema import family, quote_identifier

_COPY_BATCH_ROWS = 200_000


class PostgresBackend(SqlAlchemyBackend):
    """PostgreSQL through SQLAlchemy, with COPY in and out on psycopg."""

    creates_schemas = True

    def __init__(self, names: TableNames, engine: sa.Engine | None = None):
        super().__init__(names, engine)
        self._copy = names.url.get_driver_name() == "psycopg"

    def _columns(self, conn: sa.Connection, table: str) -> dict[str, str] | None:
        return self._information_schema_columns(conn, table, "public")

    def _insert(self, conn: sa.Connection, table: str, frame: Any, partition: Partition) -> None:
        if self._copy:
            copy_in(conn, self.names.quoted(table), frame, partition)
        else:
            super()._insert(conn, table, frame, partition)

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
        return copy_out(conn, self.names.quoted(table), names, types, partitions)


def copy_in(conn: sa.Connection, quoted_table: str, frame: Any, partition: Partition) -> None:
    """The frame (plus the partition's columns) into the table, by COPY FROM STDIN."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    for p in sorted(partition):
        arrow = arrow.append_column(p, pa.repeat(pa.scalar(partition[p]), len(arrow)))
    # tz-aware timestamps are written as UTC instants; PostgreSQL reads the offset
    target = ", ".join(quote_identifier(c) for c in arrow.column_names)
    raw: Any = conn.connection.driver_connection  # psycopg's connection
    options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
    with (
        raw.cursor() as cur,
        cur.copy(f"COPY {quoted_table} ({target}) FROM STDIN (FORMAT csv)") as copy,
    ):
        for batch in arrow.to_batches(max_chunksize=_COPY_BATCH_ROWS):
            buf = io.BytesIO()
            pacsv.write_csv(batch, buf, options)
            copy.write(buf.getbuffer())


def copy_out(
    conn: sa.Connection,
    quoted_table: str,
    names: list[str],
    types: dict[str, str],
    partitions: Sequence[Partition],
) -> Any:
    """Columns ``names`` of the partitions' rows, by COPY TO STDOUT, typed from the catalog."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    select, arrow_types, utc_cols = [], {}, []
    for n in names:
        t, q = types[n], quote_identifier(n)
        fam = family(t)
        if fam == "timestamp" and "WITH TIME ZONE" in t.upper():
            select.append(f"({q} AT TIME ZONE 'UTC') AS {q}")
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
    where, params = partition_filter(partitions, "format")
    sql = (
        f"COPY (SELECT {', '.join(select)} FROM {quoted_table}{where}) "
        "TO STDOUT (FORMAT csv, HEADER true)"
    )
    raw: Any = conn.connection.driver_connection  # psycopg's connection
    buf = io.BytesIO()
    with raw.cursor() as cur:
        # A parallel scan returns rows in worker order; a serial one keeps insertion order,
        # so a partition reads back the way it was written.
        cur.execute("SET LOCAL max_parallel_workers_per_gather = 0")
    with raw.cursor() as cur, cur.copy(sql, params or None) as copy:
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
