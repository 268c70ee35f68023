"""DuckDB: the frame is registered and scanned in place; reads go straight into ``.df()``.

Why: DuckDB files (and ``:memory:``) are driven through duckdb's own Python connection, with
no SQLAlchemy or duckdb_engine in between: their connection setup and catalog queries were a
fixed cost on every call. A read is one ``SELECT * EXCLUDE (partition columns)`` after one
catalog lookup (the table's name must not differ only by case from another's: DuckDB would read
that table). A caller who hands the store a SQLAlchemy engine for DuckDB gets
:class:`DuckDBEngineBackend`: the engine's connections, the same register-and-scan insert.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from flowstone.storage.database.backend import TableNames, describe
from flowstone.storage.database.generic_backend import SqlAlchemyBackend, same_name_tables
from flowstone.storage.database.partitions import Partition, partition_filter
from flowstone.storage.database.schema import COLUMNS_SQL, fold_case, quote_identifier
from flowstone.storage.errors import StorageError

# Tables and views of the open file equal to a name but for case. duckdb_tables() and
# duckdb_views() rather than information_schema.tables, a view over them that costs about
# twice as much: this runs before every read.
SAME_NAME_TABLES_SQL = (
    "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = "
    "current_database() AND lower(schema_name) = {schema} AND lower(table_name) = {table} "
    "UNION ALL SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal AND "
    "database_name = current_database() AND lower(schema_name) = {schema} AND "
    "lower(view_name) = {table}"
)


@functools.cache
def _duckdb_dialect() -> sa.Dialect:
    """duckdb_engine's dialect, only to render DDL types the way the SQLAlchemy path does.

    qmark paramstyle: with its default pyformat, a ``%`` in a column name would be rendered
    doubled into DDL that is executed without parameters.
    """
    from duckdb_engine import Dialect

    return Dialect(paramstyle="qmark")


def insert_frame(raw: Any, quoted_table: str, frame: Any, partition: Partition) -> None:
    """INSERT ... SELECT from the frame registered as a view: DuckDB scans pandas in place."""
    view = f"_fs_frame_{uuid.uuid4().hex}"
    cols = [quote_identifier(c) for c in frame.columns]
    pcols = sorted(partition)
    target = ", ".join(cols + [quote_identifier(p) for p in pcols])
    source = ", ".join(cols + ["?::VARCHAR"] * len(pcols))
    raw.register(view, frame)
    try:
        raw.execute(
            f"INSERT INTO {quoted_table} ({target}) SELECT {source} FROM {view}",
            [partition[p] for p in pcols],
        )
    finally:
        raw.unregister(view)


def native_same_name_tables(con: Any, names: TableNames, table: str) -> list[str]:
    """``same_name_tables`` on duckdb's own connection. DuckDB itself already treats such
    names as one table; the lookup is what lets the store say so rather than use the other
    table. No lock: DuckDB lets one process write a file at a time."""
    rows = con.execute(
        SAME_NAME_TABLES_SQL.format(schema="$1", table="$2"),
        [fold_case(names.schema or "main"), fold_case(table)],
    ).fetchall()
    return same_name_tables(names, table, "main", rows)


class DuckDBSession:
    """A write transaction on a native DuckDB connection."""

    creates_schemas = True

    def __init__(self, names: TableNames, con: Any):
        self.names, self.con, self.dialect = names, con, _duckdb_dialect()

    def same_name_tables(self, table: str) -> list[str]:
        return native_same_name_tables(self.con, self.names, table)

    def columns(self, table: str) -> dict[str, str] | None:
        rows = self.con.execute(
            COLUMNS_SQL.format(schema="?", table="?"), [self.names.schema or "main", table]
        ).fetchall()
        return {name: str(type_name) for name, type_name in rows} or None

    def run(self, statement: sa.schema.ExecutableDDLElement) -> None:
        self.con.execute(str(statement.compile(dialect=self.dialect)))

    def replace(self, table: str, partition: Partition | None, frame: Any) -> None:
        quoted = self.names.quoted(table)
        where, params = partition_filter([partition] if partition else [], "qmark")
        self.con.execute(f"DELETE FROM {quoted}{where}", params)
        if len(frame):
            insert_frame(self.con, quoted, frame, partition or {})


class DuckDBBackend:
    """A DuckDB file (or ``:memory:``) through duckdb's own connection, one per operation."""

    def __init__(self, names: TableNames):
        self.names = names

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Any]:
        """A fresh DuckDB connection, closed afterwards.

        Not pooled on purpose: DuckDB lets one process hold a file for writing, and Dagster
        runs steps (and dbt) in other processes that need the file between our operations.
        URL query parameters become DuckDB config options, as with duckdb_engine.
        """
        import duckdb

        url = self.names.url
        database = url.database or ":memory:"
        config: dict[str, Any] = dict(url.query)
        try:
            con = duckdb.connect(database, config=config)
        except duckdb.IOException as exc:
            raise StorageError(
                f"cannot open DuckDB file {database}: {exc}. Another process (a dbt run, another "
                "step, a notebook) may hold it for writing; retry once it has finished."
            ) from exc
        try:
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[DuckDBSession]:
        with self._connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield DuckDBSession(self.names, con)
                con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    con.execute("ROLLBACK")
                raise

    def read(self, table: str, partitions: Sequence[Partition], drop_columns: Sequence[str]) -> Any:
        """One catalog lookup (name clash, missing table), then one query."""
        import duckdb

        where, params = partition_filter(partitions, "qmark")
        exclude = (
            f" EXCLUDE ({', '.join(quote_identifier(c) for c in drop_columns)})"
            if drop_columns
            else ""
        )
        sql = f"SELECT *{exclude} FROM {self.names.quoted(table)}{where}"
        with self._connect() as con:
            self._check_exists(con, table, describe("reading", partitions))
            try:
                return con.execute(sql, params).df()
            except duckdb.CatalogException as exc:
                raise self.names.missing_table(table, f" ({exc})") from exc
            except duckdb.BinderException as exc:
                raise StorageError(
                    f"table {self.names.qualified(table)} cannot be read by partition "
                    f"{[dict(p) for p in partitions]}: {exc}. Its partition columns differ from "
                    "this asset's partitions; migrate or drop the table."
                ) from exc

    def row_count(self, table: str, partition: Partition | None) -> int:
        where, params = partition_filter([partition] if partition else [], "qmark")
        with self._connect() as con:
            self._check_exists(con, table, describe("counting", [partition]))
            sql = f"SELECT count(*) FROM {self.names.quoted(table)}{where}"
            return int(con.execute(sql, params).fetchone()[0])

    def dispose(self) -> None:
        """Nothing pooled: every operation closed its connection."""

    def _check_exists(self, con: Any, table: str, doing: str) -> None:
        found = native_same_name_tables(con, self.names, table)
        if not self.names.check_case(table, found, doing):
            raise self.names.missing_table(table)


class DuckDBEngineBackend(SqlAlchemyBackend):
    """DuckDB through a caller-supplied SQLAlchemy engine (duckdb_engine): the engine's
    connections and catalog, the native insert and select on its driver connection."""

    creates_schemas = True

    def _columns(self, conn: sa.Connection, table: str) -> dict[str, str] | None:
        return self._information_schema_columns(conn, table, "main")

    def _same_name_tables(
        self, conn: sa.Connection, table: str, writing: bool = False
    ) -> list[str]:
        """From DuckDB's catalog functions: SQLAlchemy's reflection through duckdb_engine needs
        pg_catalog tables DuckDB lacks. One writer per file: no lock needed."""
        return self._information_schema_tables(conn, table, "main", SAME_NAME_TABLES_SQL)

    def _insert(self, conn: sa.Connection, table: str, frame: Any, partition: Partition) -> None:
        insert_frame(conn.connection.driver_connection, self.names.quoted(table), frame, partition)

    def _select(
        self,
        conn: sa.Connection,
        table: str,
        names: list[str],
        types: dict[str, str],
        partitions: Sequence[Partition],
    ) -> Any:
        where, params = partition_filter(partitions, "qmark")
        select = ", ".join(quote_identifier(n) for n in names)
        raw: Any = conn.connection.driver_connection  # duckdb's connection
        return raw.execute(f"SELECT {select} FROM {self.names.quoted(table)}{where}", params).df()
