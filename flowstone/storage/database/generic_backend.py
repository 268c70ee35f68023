"""Any SQLAlchemy dialect (SQLite, and the base of the PostgreSQL backend): executemany in,
typed SELECT out.

Why: a database without a bulk path of its own still gets the store's guarantees; subclasses
override only how rows go in (``_insert``), come out (``_select``) and how the catalog is read
(``_columns``), and inherit the transaction, the partition delete and the count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from flowstone.storage.database.backend import TableNames
from flowstone.storage.database.partitions import Partition
from flowstone.storage.database.schema import COLUMNS_SQL, SA_TYPES, family, sa_column, sql_type_for


class SqlAlchemySession:
    """A write transaction on a SQLAlchemy connection, delegating to its backend."""

    def __init__(self, backend: SqlAlchemyBackend, conn: sa.Connection):
        self.backend, self.conn, self.dialect = backend, conn, conn.dialect
        self.creates_schemas = backend.creates_schemas

    def columns(self, table: str) -> dict[str, str] | None:
        return self.backend._columns(self.conn, table)

    def run(self, statement: str | sa.schema.ExecutableDDLElement) -> None:
        if isinstance(statement, str):
            self.conn.exec_driver_sql(statement)
        else:
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
            types = self._columns(conn, table)
            if types is None:
                raise self.names.missing_table(table)
            names = [n for n in types if n not in drop_columns]
            return self._select(conn, table, names, types, partitions)

    def row_count(self, table: str, partition: Partition | None) -> int:
        t = self._sa_table(table, partition)
        stmt = sa.select(sa.func.count()).select_from(t)
        for c, v in (partition or {}).items():
            stmt = stmt.where(t.c[c] == sa.bindparam(None, v))
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    # ----------------------------------------------------------------- per-dialect hooks

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
        if partitions:
            stmt = stmt.where(
                sa.or_(
                    *(
                        sa.and_(*(sa_column(c) == sa.bindparam(None, v) for c, v in p.items()))
                        for p in partitions
                    )
                )
            )
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
        t = self._sa_table(table, partition)
        stmt = sa.delete(t)
        for col, value in (partition or {}).items():
            stmt = stmt.where(t.c[col] == sa.bindparam(None, value, type_=sa.Text()))
        conn.execute(stmt)

    def _sa_table(self, table: str, partition: Partition | None) -> sa.TableClause:
        return sa.table(
            sa.sql.quoted_name(table, quote=True),
            *(sa_column(c) for c in (partition or {})),
            schema=self.names.schema,
        )

    def _information_schema_columns(
        self, conn: sa.Connection, table: str, default_schema: str
    ) -> dict[str, str] | None:
        """``_columns`` for dialects with information_schema (DuckDB, PostgreSQL)."""
        rows = conn.execute(
            sa.text(COLUMNS_SQL.format(schema=":schema", table=":table")),
            {"schema": self.names.schema or default_schema, "table": table},
        ).all()
        return {str(name): str(type_name) for name, type_name in rows} or None
