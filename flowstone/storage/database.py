"""Partitioned DataFrame tables in DuckDB, PostgreSQL or SQLite, replaced atomically.

Why: evaluation scores and reports land in a warehouse that dbt reads, so a partition must be
either the old rows or the new rows, never a mix, even if the writer is killed. A write
deletes exactly the partition's rows and inserts the new ones inside ONE transaction; the
partition values are always bound parameters (never spliced into SQL).

Partition layout: one TEXT column per partition dimension (``suite``, ``system`` for a
MultiPartitionsDefinition; a single configurable column, ``partition_key`` by default, for
one-dimensional partitions). The partition columns are added by the store; a frame may carry
them only with exactly the partition's value.

Speed: the bulk load uses each engine's native path inside the one transaction. DuckDB is
driven through its own Python connection (no SQLAlchemy or duckdb_engine in between: their
connection setup and catalog queries were a fixed cost on every call): the frame is registered
and scanned in place, and reads use ``SELECT * EXCLUDE (partition columns)`` straight into
``.df()``, with no catalog lookup first. PostgreSQL (through SQLAlchemy) gets
``COPY ... FROM STDIN`` fed with CSV written by Arrow, and reads come back through
``COPY ... TO STDOUT`` parsed by Arrow. Other dialects use SQLAlchemy's executemany.

Schema: a frame whose columns or types differ from the table raises SchemaChangeError unless
``allow_schema_evolution`` is on, in which case new columns are added (existing columns are
never dropped or retyped; writing ints into a float column is always allowed).
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa

from flowstone.storage.errors import SchemaChangeError, StorageError, UnsafeKeyError
from flowstone.storage.keys import validate_partition_key

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
Partition = Mapping[str, str]
_COPY_BATCH_ROWS = 200_000


def validate_identifier(name: str, what: str) -> str:
    if not isinstance(name, str) or not _IDENTIFIER.match(name) or len(name) > 63:
        raise UnsafeKeyError(
            f"{what} {name!r} is not a plain SQL identifier (letters, digits, '_', at most 63 "
            "characters, not starting with a digit); rename it"
        )
    return name


def quote_identifier(name: str) -> str:
    """Always quote: dialect reserved-word lists differ (``at`` is reserved in DuckDB only)."""
    return '"' + name.replace('"', '""') + '"'


def _col(name: str) -> sa.ColumnClause:
    return sa.column(sa.sql.quoted_name(name, quote=True))


def _validate_column(name: Any) -> str:
    if not isinstance(name, str) or not name or len(name) > 63:
        raise UnsafeKeyError(f"column name {name!r} must be a non-empty string of at most 63 chars")
    if any(ord(c) < 32 for c in name):
        raise UnsafeKeyError(f"column name {name!r} contains control characters")
    return name


# --------------------------------------------------------------------------- types


def _sql_type_for(series: Any) -> sa.types.TypeEngine:
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
    return {
        "boolean": sa.Boolean(),
        "integer": sa.BigInteger(),
        "floating": sa.Double(),
        "mixed-integer-float": sa.Double(),
        "date": sa.Date(),
        "datetime": sa.DateTime(),
        "datetime64": sa.DateTime(),
        "bytes": sa.LargeBinary(),
        "decimal": sa.Numeric(),
    }.get(inferred, sa.Text())


def _family(type_name: str) -> str:
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


_SA_TYPES: dict[str, sa.types.TypeEngine] = {
    "boolean": sa.Boolean(),
    "integer": sa.BigInteger(),
    "float": sa.Double(),
    "decimal": sa.Numeric(),
    "timestamp": sa.DateTime(),
    "date": sa.Date(),
    "text": sa.Text(),
    "binary": sa.LargeBinary(),
}


def _compatible(frame_family: str, table_family: str, all_null: bool) -> bool:
    if all_null or frame_family == table_family:
        return True
    return frame_family == "integer" and table_family in ("float", "decimal")


# --------------------------------------------------------------------------- sessions

_COLUMNS_SQL = (
    "SELECT column_name, data_type FROM information_schema.columns "
    "WHERE table_schema = {schema} AND table_name = {table} ORDER BY ordinal_position"
)


class _Session(Protocol):
    """What the schema check needs from a connection, so one check serves both drivers."""

    dialect: sa.Dialect

    def columns(self, table: str) -> dict[str, str] | None: ...

    def run(self, statement: str | sa.schema.ExecutableDDLElement) -> None: ...


@functools.cache
def _duckdb_dialect() -> sa.Dialect:
    """duckdb_engine's dialect, only to render DDL types the way the SQLAlchemy path did.

    qmark paramstyle: with its default pyformat, a ``%`` in a column name would be rendered
    doubled into DDL that is executed without parameters.
    """
    from duckdb_engine import Dialect

    return Dialect(paramstyle="qmark")


class _SqlAlchemySession:
    def __init__(self, store: PartitionedTableStore, conn: sa.Connection):
        self.store, self.conn, self.dialect = store, conn, conn.dialect

    def columns(self, table: str) -> dict[str, str] | None:
        return self.store._table_columns(self.conn, table)

    def run(self, statement: str | sa.schema.ExecutableDDLElement) -> None:
        if isinstance(statement, str):
            self.conn.exec_driver_sql(statement)
        else:
            self.conn.execute(statement)


class _DuckDBSession:
    def __init__(self, store: PartitionedTableStore, con: Any):
        self.store, self.con, self.dialect = store, con, _duckdb_dialect()

    def columns(self, table: str) -> dict[str, str] | None:
        rows = self.con.execute(
            _COLUMNS_SQL.format(schema="?", table="?"), [self.store.schema or "main", table]
        ).fetchall()
        return {name: str(type_name) for name, type_name in rows} or None

    def run(self, statement: str | sa.schema.ExecutableDDLElement) -> None:
        if not isinstance(statement, str):
            statement = str(statement.compile(dialect=self.dialect))
        self.con.execute(statement)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class WriteResult:
    table: str  # schema-qualified name
    rows: int
    partitions: tuple[dict[str, str], ...]
    columns: tuple[str, ...]


# --------------------------------------------------------------------------- the store


class PartitionedTableStore:
    """Write and read partitions of tables behind one SQLAlchemy URL."""

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        allow_schema_evolution: bool = False,
        engine: sa.Engine | None = None,
    ):
        self.url = sa.make_url(url)
        self.schema = validate_identifier(schema, "schema") if schema else None
        self.allow_schema_evolution = allow_schema_evolution
        self._engine = engine
        self._engine_given = engine is not None

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            kwargs: dict[str, Any] = {}
            if self.dialect in ("duckdb", "sqlite"):
                # Release the file between operations: DuckDB lets one process hold a file for
                # writing, and Dagster runs steps in separate processes.
                kwargs["poolclass"] = sa.NullPool
            else:
                kwargs["pool_pre_ping"] = True  # reconnect after a server restart
            self._engine = sa.create_engine(self.url, **kwargs)
        return self._engine

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    @property
    def _native_duckdb(self) -> bool:
        """DuckDB files (and :memory:) are driven through duckdb's own connection."""
        return self.dialect == "duckdb" and not self._engine_given

    @contextlib.contextmanager
    def _duckdb(self) -> Iterator[Any]:
        """A fresh DuckDB connection, closed afterwards.

        Not pooled on purpose: DuckDB lets one process hold a file for writing, and Dagster
        runs steps (and dbt) in other processes that need the file between our operations.
        URL query parameters become DuckDB config options, as with duckdb_engine.
        """
        import duckdb

        database = self.url.database or ":memory:"
        try:
            con = duckdb.connect(database, config=dict(self.url.query))
        except duckdb.IOException as exc:
            raise StorageError(
                f"cannot open DuckDB file {database}: {exc}. Another process (a dbt run, another "
                "step, a notebook) may hold it for writing; retry once it has finished."
            ) from exc
        try:
            yield con
        finally:
            con.close()

    def qualified(self, table: str) -> str:
        return f"{self.schema}.{table}" if self.schema else table

    def _quoted(self, table: str) -> str:
        return (quote_identifier(self.schema) + "." if self.schema else "") + quote_identifier(
            table
        )

    def _table_columns(self, conn: sa.Connection, table: str) -> dict[str, str] | None:
        """Column name -> SQL type name in table order, or None when the table is missing.

        information_schema is used for DuckDB and PostgreSQL because SQLAlchemy reflection
        through duckdb_engine relies on pg_catalog tables DuckDB does not have.
        """
        if self.dialect in ("duckdb", "postgresql"):
            default_schema = "main" if self.dialect == "duckdb" else "public"
            rows = conn.execute(
                sa.text(_COLUMNS_SQL.format(schema=":schema", table=":table")),
                {"schema": self.schema or default_schema, "table": table},
            ).all()
            return {name: str(type_name) for name, type_name in rows} or None
        inspector = sa.inspect(conn)
        if not inspector.has_table(table, schema=self.schema):
            return None
        return {
            c["name"]: str(c["type"].compile(dialect=conn.dialect))
            for c in inspector.get_columns(table, schema=self.schema)
        }

    # ----------------------------------------------------------------- schema

    def _ensure_table(
        self, session: _Session, table: str, frame: Any, partition_columns: Sequence[str]
    ) -> list[str]:
        """Create or check the table; return the data columns in table order."""
        wanted: dict[str, sa.types.TypeEngine] = {}
        all_null: dict[str, bool] = {}
        for col in frame.columns:
            if col in partition_columns:
                continue
            wanted[_validate_column(col)] = _sql_type_for(frame[col])
            all_null[col] = bool(frame[col].isna().all()) if len(frame) else True
        dialect = session.dialect
        if self.schema and self.dialect in ("duckdb", "postgresql"):
            session.run(sa.schema.CreateSchema(self.schema, if_not_exists=True))
        existing = session.columns(table)
        if existing is None:
            columns = [
                sa.Column(p, sa.Text(), nullable=False, quote=True) for p in partition_columns
            ]
            columns += [sa.Column(c, t, quote=True) for c, t in wanted.items()]
            t = sa.Table(table, sa.MetaData(), *columns, schema=self.schema, quote_schema=True)
            session.run(sa.schema.CreateTable(t))
            return list(wanted)
        frame_types = {c: str(t.compile(dialect=dialect)) for c, t in wanted.items()}
        problems = []
        missing_partition = [p for p in partition_columns if p not in existing]
        if missing_partition:
            problems.append(f"partition column(s) {missing_partition} missing from the table")
        new_cols = [c for c in wanted if c not in existing]
        dropped = [c for c in existing if c not in wanted and c not in partition_columns]
        retyped = [
            f"{c}: table {existing[c]}, frame {frame_types[c]}"
            for c in wanted
            if c in existing
            and not _compatible(_family(frame_types[c]), _family(existing[c]), all_null[c])
        ]
        if retyped:
            problems.append(f"changed types {retyped}")
        if not self.allow_schema_evolution:
            if new_cols:
                problems.append(f"new columns {new_cols}")
            if dropped:
                problems.append(f"columns missing from the frame {dropped}")
        if problems:
            raise SchemaChangeError(
                f"table {self.qualified(table)} ({self.url.render_as_string(hide_password=True)}) "
                f"does not match the frame: {'; '.join(problems)}. Enable allow_schema_evolution "
                "to add new columns, or migrate/drop the table."
            )
        for col in new_cols:
            type_sql = wanted[col].compile(dialect=dialect)
            session.run(
                f"ALTER TABLE {self._quoted(table)} ADD COLUMN {quote_identifier(col)} {type_sql}"
            )
        return list(wanted)

    # ----------------------------------------------------------------- write

    def write(self, table: str, frame: Any, partition: Partition | None = None) -> WriteResult:
        """Replace one partition (or the whole table when ``partition`` is None)."""
        return self.write_many(table, [(partition, frame)])

    def write_many(self, table: str, items: Sequence[tuple[Partition | None, Any]]) -> WriteResult:
        """Replace several partitions of one table in a single transaction (single-run backfills)."""
        validate_identifier(table, "table name")
        if not items:
            raise StorageError(f"nothing to write to {self.qualified(table)}")
        partition_columns = self._partition_columns([p for p, _ in items])
        prepared = [(p, self._check_frame(table, f, p)) for p, f in items]
        total = 0
        if self._native_duckdb:
            data_columns = self._write_duckdb(table, prepared, partition_columns)
            total = sum(len(f) for _, f in prepared)
        else:
            with self.engine.begin() as conn:
                session = _SqlAlchemySession(self, conn)
                for partition, frame in prepared:
                    # every frame is checked: a later frame with another schema rolls back all
                    data_columns = self._ensure_table(session, table, frame, partition_columns)
                    self._delete(conn, table, partition)
                    self._insert(conn, table, frame, data_columns, partition or {})
                    total += len(frame)
        return WriteResult(
            table=self.qualified(table),
            rows=total,
            partitions=tuple(dict(p) for p, _ in items if p),
            columns=tuple(data_columns),
        )

    def _write_duckdb(
        self,
        table: str,
        prepared: Sequence[tuple[Partition | None, Any]],
        partition_columns: list[str],
    ) -> list[str]:
        """The same delete-then-insert per partition, in one DuckDB transaction."""
        data_columns: list[str] = []
        with self._duckdb() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                session = _DuckDBSession(self, con)
                for partition, frame in prepared:
                    data_columns = self._ensure_table(session, table, frame, partition_columns)
                    where, params = self._partition_filter(
                        [partition] if partition else [], "qmark"
                    )
                    con.execute(f"DELETE FROM {self._quoted(table)}{where}", params)
                    if len(frame):
                        self._insert_duckdb(con, table, frame, partition or {})
                con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    con.execute("ROLLBACK")
                raise
        return data_columns

    @staticmethod
    def _partition_columns(partitions: Sequence[Partition | None]) -> list[str]:
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

    def _check_frame(self, table: str, frame: Any, partition: Partition | None) -> Any:
        if type(frame).__name__ != "DataFrame":
            raise StorageError(
                f"table {self.qualified(table)} needs a pandas DataFrame, got {type(frame).__name__}"
            )
        for col, value in (partition or {}).items():
            if col in frame.columns:
                if not (frame[col].astype(str) == value).all():
                    raise StorageError(
                        f"frame for {self.qualified(table)} partition {dict(partition)} has a "
                        f"'{col}' column with values other than {value!r}; the store fills "
                        "that column from the partition key. Drop or rename the column."
                    )
                frame = frame.drop(columns=[col])
        if frame.columns.has_duplicates:
            raise StorageError(f"frame for {self.qualified(table)} has duplicate column names")
        return frame

    def _where(self, partition: Partition, style: str) -> tuple[str, list[str]]:
        marks = {"qmark": "?", "format": "%s"}[style]
        clause = " AND ".join(f"{quote_identifier(c)} = {marks}" for c in sorted(partition))
        return clause, [partition[c] for c in sorted(partition)]

    def _delete(self, conn: sa.Connection, table: str, partition: Partition | None) -> None:
        t = sa.table(
            sa.sql.quoted_name(table, quote=True),
            *(_col(c) for c in (partition or {})),
            schema=self.schema,
        )
        stmt = sa.delete(t)
        for col, value in (partition or {}).items():
            stmt = stmt.where(t.c[col] == sa.bindparam(None, value, type_=sa.Text()))
        conn.execute(stmt)

    def _insert(
        self,
        conn: sa.Connection,
        table: str,
        frame: Any,
        data_columns: list[str],
        partition: Partition,
    ) -> None:
        if len(frame) == 0:
            return
        if self.dialect == "duckdb":  # a caller-supplied engine: reach the duckdb connection
            self._insert_duckdb(conn.connection.driver_connection, table, frame, partition)
        elif self.dialect == "postgresql" and self.url.get_driver_name() == "psycopg":
            self._insert_postgres_copy(conn, table, frame, partition)
        else:
            self._insert_generic(conn, table, frame, partition)

    def _insert_duckdb(self, raw: Any, table: str, frame: Any, partition: Partition) -> None:
        """INSERT ... SELECT from the frame registered as a view: DuckDB scans pandas in place."""
        view = f"_fs_frame_{uuid.uuid4().hex}"
        cols = [quote_identifier(c) for c in frame.columns]
        pcols = sorted(partition)
        target = ", ".join(cols + [quote_identifier(p) for p in pcols])
        source = ", ".join(cols + ["?::VARCHAR"] * len(pcols))
        raw.register(view, frame)
        try:
            raw.execute(
                f"INSERT INTO {self._quoted(table)} ({target}) SELECT {source} FROM {view}",
                [partition[p] for p in pcols],
            )
        finally:
            raw.unregister(view)

    def _insert_postgres_copy(
        self, conn: sa.Connection, table: str, frame: Any, partition: Partition
    ) -> None:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        arrow = pa.Table.from_pandas(frame, preserve_index=False)
        pcols = sorted(partition)
        for p in pcols:
            arrow = arrow.append_column(p, pa.repeat(pa.scalar(partition[p]), len(arrow)))
        # tz-aware timestamps are written as UTC instants; PostgreSQL reads the offset
        target = ", ".join(quote_identifier(c) for c in arrow.column_names)
        raw = conn.connection.driver_connection
        options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
        with (
            raw.cursor() as cur,
            cur.copy(f"COPY {self._quoted(table)} ({target}) FROM STDIN (FORMAT csv)") as copy,
        ):
            for batch in arrow.to_batches(max_chunksize=_COPY_BATCH_ROWS):
                buf = io.BytesIO()
                pacsv.write_csv(batch, buf, options)
                copy.write(buf.getbuffer())

    def _insert_generic(
        self, conn: sa.Connection, table: str, frame: Any, partition: Partition
    ) -> None:
        import pandas as pd

        records = frame.astype(object).where(pd.notna(frame), None).to_dict("records")
        if partition:
            for r in records:
                r.update(partition)
        # Typed columns so SQLAlchemy converts timestamps, dates and booleans for the driver.
        columns = [sa.Column(c, _sql_type_for(frame[c]), quote=True) for c in frame.columns]
        columns += [sa.Column(p, sa.Text(), quote=True) for p in sorted(partition)]
        t = sa.Table(table, sa.MetaData(), *columns, schema=self.schema, quote=True)
        conn.execute(sa.insert(t), records)

    # ----------------------------------------------------------------- read

    def read(
        self,
        table: str,
        partitions: Sequence[Partition] | None = None,
        *,
        keep_partition_columns: bool | None = None,
    ) -> Any:
        """Rows of the given partitions (all rows when None).

        Partition columns are dropped when exactly one partition is read (the frame then equals
        what was written) and kept otherwise so rows can be told apart; override with
        ``keep_partition_columns``.
        """
        validate_identifier(table, "table name")
        partitions = list(partitions or [])
        pcols = self._partition_columns(partitions) if partitions else []
        keep = (
            keep_partition_columns if keep_partition_columns is not None else len(partitions) != 1
        )
        if self._native_duckdb:
            return self._read_duckdb(table, [] if keep else pcols, partitions)
        with self.engine.connect() as conn:
            types = self._table_columns(conn, table)
            if types is None:
                raise StorageError(
                    f"table {self.qualified(table)} does not exist in "
                    f"{self.url.render_as_string(hide_password=True)}; materialize the asset first"
                )
            names = [n for n in types if keep or n not in pcols]
            if self.dialect == "duckdb":  # a caller-supplied engine
                where, params = self._partition_filter(partitions, "qmark")
                select = ", ".join(quote_identifier(n) for n in names)
                raw = conn.connection.driver_connection
                frame = raw.execute(
                    f"SELECT {select} FROM {self._quoted(table)}{where}", params
                ).df()
            elif self.dialect == "postgresql" and self.url.get_driver_name() == "psycopg":
                frame = self._read_postgres_copy(conn, table, names, types, partitions)
            else:
                frame = self._read_generic(conn, table, names, partitions)
        return frame

    def _partition_filter(self, partitions: Sequence[Partition], style: str) -> tuple[str, list]:
        if not partitions:
            return "", []
        clauses, params = [], []
        for p in partitions:
            clause, values = self._where(p, style)
            clauses.append(f"({clause})")
            params.extend(values)
        return " WHERE " + " OR ".join(clauses), params

    def _select_list(self, conn: sa.Connection, names: list[str]) -> str:
        return ", ".join(quote_identifier(n) for n in names)

    def _read_duckdb(
        self, table: str, drop_columns: Sequence[str], partitions: Sequence[Partition]
    ) -> Any:
        """One query, no catalog lookup first: a missing table is reported from DuckDB's error."""
        import duckdb

        where, params = self._partition_filter(partitions, "qmark")
        exclude = (
            f" EXCLUDE ({', '.join(quote_identifier(c) for c in drop_columns)})"
            if drop_columns
            else ""
        )
        sql = f"SELECT *{exclude} FROM {self._quoted(table)}{where}"
        with self._duckdb() as con:
            try:
                return con.execute(sql, params).df()
            except duckdb.CatalogException as exc:
                raise StorageError(
                    f"table {self.qualified(table)} does not exist in "
                    f"{self.url.render_as_string(hide_password=True)}; materialize the asset "
                    f"first ({exc})"
                ) from exc
            except duckdb.BinderException as exc:
                raise StorageError(
                    f"table {self.qualified(table)} cannot be read by partition "
                    f"{[dict(p) for p in partitions]}: {exc}. Its partition columns differ from "
                    "this asset's partitions; migrate or drop the table."
                ) from exc

    def _read_postgres_copy(self, conn, table, names, types, partitions) -> Any:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        select, arrow_types, utc_cols = [], {}, []
        for n in names:
            t, q = types[n], quote_identifier(n)
            fam = _family(t)
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
        where, params = self._partition_filter(partitions, "format")
        sql = (
            f"COPY (SELECT {', '.join(select)} FROM {self._quoted(table)}{where}) "
            "TO STDOUT (FORMAT csv, HEADER true)"
        )
        raw = conn.connection.driver_connection
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

    def _read_generic(self, conn, table, names, partitions) -> Any:
        import pandas as pd

        types = self._table_columns(conn, table) or {}
        columns = [sa.Column(n, _SA_TYPES.get(_family(types.get(n, "")), sa.Text()), quote=True)
                   for n in names]  # fmt: skip
        t = sa.Table(table, sa.MetaData(), *columns, schema=self.schema, quote=True)
        stmt = sa.select(*t.c)
        if partitions:
            stmt = stmt.where(
                sa.or_(
                    *(
                        sa.and_(*(_col(c) == sa.bindparam(None, v) for c, v in p.items()))
                        for p in partitions
                    )
                )
            )
        rows = conn.execute(stmt).all()
        frame = pd.DataFrame.from_records(rows, columns=names)
        for n in names:  # typed reads give datetimes/bools back as Python objects
            fam = _family(types.get(n, ""))
            if fam == "timestamp":
                frame[n] = pd.to_datetime(frame[n])
            elif fam in ("integer", "float", "boolean") and not frame[n].isna().any():
                frame[n] = frame[n].astype({"integer": "int64", "float": "float64",
                                            "boolean": "bool"}[fam])  # fmt: skip
        return frame

    def row_count(self, table: str, partition: Partition | None = None) -> int:
        validate_identifier(table, "table name")
        if self._native_duckdb:
            where, params = self._partition_filter([partition] if partition else [], "qmark")
            with self._duckdb() as con:
                sql = f"SELECT count(*) FROM {self._quoted(table)}{where}"
                return int(con.execute(sql, params).fetchone()[0])
        t = sa.table(
            sa.sql.quoted_name(table, quote=True),
            *(_col(c) for c in (partition or {})),
            schema=self.schema,
        )
        stmt = sa.select(sa.func.count()).select_from(t)
        for c, v in (partition or {}).items():
            stmt = stmt.where(t.c[c] == sa.bindparam(None, v))
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())
