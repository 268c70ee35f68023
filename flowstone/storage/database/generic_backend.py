"""Any SQLAlchemy dialect (SQLite, and the base of the PostgreSQL backend): executemany in,
typed SELECT out.

Why: a database without a bulk path of its own still gets the store's guarantees; subclasses
override only how rows go in (``_insert``), come out (``_select``) and how the catalog is read
(``_columns``, ``_same_name_tables``), and inherit the transaction, the partition delete and the
count. Every statement is a SQLAlchemy construct, never SQL text with names spliced in: the
dialect's identifier preparer quotes each name for its driver (doubling ``%`` for psycopg and
psycopg2, which read ``%`` as a placeholder).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from flowstone.storage.database.backend import TableNames, describe
from flowstone.storage.database.partitions import Partition, partition_clause
from flowstone.storage.database.schema import (
    COLUMNS_SQL,
    SA_TYPES,
    SAME_NAME_TABLES_SQL,
    family,
    fold_case,
    sql_type_for,
)


class SqlAlchemySession:
    """A write transaction on a SQLAlchemy connection, delegating to its backend."""

    def __init__(self, backend: SqlAlchemyBackend, conn: sa.Connection):
        self.backend, self.conn, self.dialect = backend, conn, conn.dialect
        self.creates_schemas = backend.creates_schemas

    def same_name_tables(self, table: str) -> list[str]:
        return self.backend._same_name_tables(self.conn, table, writing=True)

    def columns(self, table: str) -> dict[str, str] | None:
        return self.backend._columns(self.conn, table)

    def run(self, statement: sa.schema.ExecutableDDLElement) -> None:
        self.conn.execute(statement)

    def replace(self, table: str, partition: Partition | None, frame: Any) -> None:
        self.backend._delete(self.conn, table, partition)
        if len(frame):
            self.backend._insert(self.conn, table, frame, partition or {})


class SqlAlchemyBackend:
    """Tables behind a SQLAlchemy engine (created from the URL unless one is given)."""

    creates_schemas = False

    def __init__(self, names: TableNames, engine: sa.Engine | None = None):
        self.names = names
        self._engine = engine

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            kwargs: dict[str, Any] = {}
            if self.names.url.get_backend_name() in ("duckdb", "sqlite"):
                # Release the file between operations: DuckDB lets one process hold a file for
                # writing, and Dagster runs steps in separate processes.
                kwargs["poolclass"] = sa.NullPool
            else:
                kwargs["pool_pre_ping"] = True  # reconnect after a server restart
            self._engine = sa.create_engine(self.names.url, **kwargs)
        return self._engine

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[SqlAlchemySession]:
        with self.engine.begin() as conn:
            yield SqlAlchemySession(self, conn)

    def read(self, table: str, partitions: Sequence[Partition], drop_columns: Sequence[str]) -> Any:
        with self.engine.connect() as conn:
            self._check_exists(conn, table, describe("reading", partitions))
            types = self._columns(conn, table)
            if types is None:
                raise self.names.missing_table(table)
            names = [n for n in types if n not in drop_columns]
            return self._select(conn, table, names, types, partitions)

    def row_count(self, table: str, partition: Partition | None) -> int:
        stmt = sa.select(sa.func.count()).select_from(self._sa_table(table))
        where = partition_clause([partition] if partition else [])
        if where is not None:
            stmt = stmt.where(where)
        with self.engine.connect() as conn:
            self._check_exists(conn, table, describe("counting", [partition]))
            return int(conn.execute(stmt).scalar_one())

    def _check_exists(self, conn: sa.Connection, table: str, doing: str) -> None:
        """The table's name clashes with no other (``TableNames.check_case``) and it exists."""
        if not self.names.check_case(table, self._same_name_tables(conn, table), doing):
            raise self.names.missing_table(table)

    # ----------------------------------------------------------------- per-dialect hooks

    def _same_name_tables(
        self, conn: sa.Connection, table: str, writing: bool = False
    ) -> list[str]:
        """Qualified names of the schema's tables and views equal to ``table`` but for case,
        from reflection (SQLite: its catalog is one small table). ``writing``: inside a write
        transaction (PostgreSQL locks there; nothing to do here)."""
        inspector = sa.inspect(conn)
        schema = self.names.schema
        names = inspector.get_table_names(schema=schema) + inspector.get_view_names(schema=schema)
        return [self.names.qualified(n) for n in names if fold_case(n) == fold_case(table)]

    def _columns(self, conn: sa.Connection, table: str) -> dict[str, str] | None:
        """Column name -> SQL type name in table order (reflection), None when missing."""
        inspector = sa.inspect(conn)
        if not inspector.has_table(table, schema=self.names.schema):
            return None
        return {
            c["name"]: str(c["type"].compile(dialect=conn.dialect))
            for c in inspector.get_columns(table, schema=self.names.schema)
        }

    def _insert(self, conn: sa.Connection, table: str, frame: Any, partition: Partition) -> None:
        """executemany of the frame's records, with the partition's values on every row."""
        import pandas as pd

        records = frame.astype(object).where(pd.notna(frame), None).to_dict("records")
        if partition:
            for r in records:
                r.update(partition)
        # Typed columns so SQLAlchemy converts timestamps, dates and booleans for the driver.
        columns = [sa.Column(c, sql_type_for(frame[c]), quote=True) for c in frame.columns]
        columns += [sa.Column(p, sa.Text(), quote=True) for p in sorted(partition)]
        t = sa.Table(table, sa.MetaData(), *columns, schema=self.names.schema, quote=True)
        conn.execute(sa.insert(t), records)

    def _select(
        self,
        conn: sa.Connection,
        table: str,
        names: list[str],
        types: dict[str, str],
        partitions: Sequence[Partition],
    ) -> Any:
        """A typed SELECT of ``names``; numbers, booleans and timestamps get pandas dtypes."""
        import pandas as pd

        columns = [sa.Column(n, SA_TYPES.get(family(types.get(n, "")), sa.Text()), quote=True)
                   for n in names]  # fmt: skip
        t = sa.Table(table, sa.MetaData(), *columns, schema=self.names.schema, quote=True)
        stmt = sa.select(*t.c)
        where = partition_clause(partitions)
        if where is not None:
            stmt = stmt.where(where)
        rows = conn.execute(stmt).all()
        frame = pd.DataFrame.from_records(rows, columns=names)
        for n in names:  # typed reads give datetimes/bools back as Python objects
            fam = family(types.get(n, ""))
            if fam == "timestamp":
                frame[n] = pd.to_datetime(frame[n])
            elif fam in ("integer", "float", "boolean") and not frame[n].isna().any():
                frame[n] = frame[n].astype({"integer": "int64", "float": "float64",
                                            "boolean": "bool"}[fam])  # fmt: skip
        return frame

    # ----------------------------------------------------------------- shared helpers

    def _delete(self, conn: sa.Connection, table: str, partition: Partition | None) -> None:
        stmt = sa.delete(self._sa_table(table))
        where = partition_clause([partition] if partition else [])
        if where is not None:
            stmt = stmt.where(where)
        conn.execute(stmt)

    def _sa_table(self, table: str) -> sa.TableClause:
        schema = sa.sql.quoted_name(self.names.schema, quote=True) if self.names.schema else None
        return sa.table(sa.sql.quoted_name(table, quote=True), schema=schema)

    def _information_schema_tables(
        self,
        conn: sa.Connection,
        table: str,
        default_schema: str,
        template: str = SAME_NAME_TABLES_SQL,
    ) -> list[str]:
        """``_same_name_tables`` from a catalog query ``template`` (information_schema unless
        given) with ``{schema}`` and ``{table}`` marks, compared with lowered names.

        Without a configured schema only the default schema counts, matched exactly (that is
        where the tables go); a configured schema is matched ignoring case too."""
        schema = self.names.schema or default_schema
        rows = conn.execute(
            sa.text(template.format(schema=":schema", table=":table")),
            {"schema": fold_case(schema), "table": fold_case(table)},
        ).all()
        return same_name_tables(self.names, table, default_schema, rows)

    def _information_schema_columns(
        self, conn: sa.Connection, table: str, default_schema: str
    ) -> dict[str, str] | None:
        """``_columns`` for dialects with information_schema (DuckDB, PostgreSQL)."""
        rows = conn.execute(
            sa.text(COLUMNS_SQL.format(schema=":schema", table=":table")),
            {"schema": self.names.schema or default_schema, "table": table},
        ).all()
        return {str(name): str(type_name) for name, type_name in rows} or None


def same_name_tables(
    names: TableNames, table: str, default_schema: str, rows: Sequence[Sequence[Any]]
) -> list[str]:
    """The qualified names among catalog ``rows`` of (schema, table) that equal ours but for
    ASCII case: the rows came from SQL ``lower()``, which may fold non-ASCII letters too."""
    wanted_schema = fold_case(names.schema) if names.schema else None
    found: list[str] = []
    for schema, name in rows:
        schema, name = str(schema), str(name)
        if fold_case(name) != fold_case(table):
            continue
        if wanted_schema is None:
            if schema == default_schema:
                found.append(name)
        elif fold_case(schema) == wanted_schema:
            found.append(f"{schema}.{name}")
    return found
