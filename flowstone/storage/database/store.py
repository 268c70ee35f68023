"""PartitionedTableStore: the rules every database shares, over one backend per dialect.

Why: what makes a write safe does not depend on the database: names and partition values are
checked, a frame must fit the table (or evolve it, when allowed), and every partition of one
write is replaced inside one transaction, so a failure anywhere rolls all of them back. Only
moving the rows is dialect-specific; that is the backend's job (see :mod:`.backend`).

Names are compared ignoring ASCII case (:func:`.schema.fold_case`) on every dialect: DuckDB and
SQLite do so themselves, even for quoted names, and PostgreSQL does not. A table whose name
differs only by case from an existing one, or a frame column that differs only by case from
another column of the frame or of the table, is a :class:`.schema.NameClashError` everywhere,
rather than one shared table on DuckDB and SQLite and two on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from flowstone.storage.database.backend import TableBackend, TableNames, WriteSession, describe
from flowstone.storage.database.duckdb_backend import DuckDBBackend, DuckDBEngineBackend
from flowstone.storage.database.generic_backend import SqlAlchemyBackend
from flowstone.storage.database.partitions import Partition, partition_columns
from flowstone.storage.database.postgres_backend import PostgresBackend
from flowstone.storage.database.schema import (
    AddColumn,
    NameClashError,
    case_clashes,
    compatible,
    family,
    fold_case,
    sql_type_for,
    validate_column,
    validate_identifier,
)
from flowstone.storage.errors import SchemaChangeError, StorageError


def backend_for(names: TableNames, engine: sa.Engine | None = None) -> TableBackend:
    """The backend of the URL's dialect. DuckDB goes native unless the caller brought an
    engine; PostgreSQL gets COPY; anything else SQLAlchemy's generic path."""
    dialect = names.url.get_backend_name()
    if dialect == "duckdb":
        return DuckDBBackend(names) if engine is None else DuckDBEngineBackend(names, engine)
    if dialect == "postgresql":
        return PostgresBackend(names, engine)
    return SqlAlchemyBackend(names, engine)


@dataclass(frozen=True)
class WriteResult:
    table: str  # schema-qualified name
    rows: int
    partitions: tuple[dict[str, str], ...]
    columns: tuple[str, ...]


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
        self._names = TableNames(self.url, self.schema)
        self._backend = backend_for(self._names, engine)

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    def qualified(self, table: str) -> str:
        return self._names.qualified(table)

    def dispose(self) -> None:
        self._backend.dispose()

    # ----------------------------------------------------------------- write

    def write(self, table: str, frame: Any, partition: Partition | None = None) -> WriteResult:
        """Replace one partition (or the whole table when ``partition`` is None)."""
        return self.write_many(table, [(partition, frame)])

    def write_many(self, table: str, items: Sequence[tuple[Partition | None, Any]]) -> WriteResult:
        """Replace several partitions of one table in a single transaction (single-run backfills)."""
        validate_identifier(table, "table name")
        if not items:
            raise StorageError(f"nothing to write to {self.qualified(table)}")
        columns = partition_columns([p for p, _ in items])
        doing = describe("writing", [p for p, _ in items])
        prepared = [(p, self._check_frame(table, f, p, columns, doing)) for p, f in items]
        data_columns: list[str] = []
        with self._backend.transaction() as session:
            self._names.check_case(table, session.same_name_tables(table), doing)
            for partition, frame in prepared:
                # every frame is checked: a later frame with another schema rolls back all
                data_columns = self._ensure_table(session, table, frame, columns, doing)
                session.replace(table, partition, frame)
        return WriteResult(
            table=self.qualified(table),
            rows=sum(len(f) for _, f in prepared),
            partitions=tuple(dict(p) for p, _ in items if p),
            columns=tuple(data_columns),
        )

    def _check_frame(
        self,
        table: str,
        frame: Any,
        partition: Partition | None,
        partition_columns: Sequence[str],
        doing: str,
    ) -> Any:
        """The frame to store: a DataFrame without the partition columns it may carry, whose
        column names (with the partition columns) are distinct ignoring case."""
        if type(frame).__name__ != "DataFrame":
            raise StorageError(
                f"table {self.qualified(table)} needs a pandas DataFrame, got {type(frame).__name__}"
            )
        for col, value in (partition or {}).items():
            if col in frame.columns:
                if not (frame[col].astype(str) == value).all():
                    raise StorageError(
                        f"frame for {self.qualified(table)} partition {dict(partition or {})} has a "
                        f"'{col}' column with values other than {value!r}; the store fills "
                        "that column from the partition key. Drop or rename the column."
                    )
                frame = frame.drop(columns=[col])
        if frame.columns.has_duplicates:
            raise StorageError(f"frame for {self.qualified(table)} has duplicate column names")
        names = [*partition_columns, *(validate_column(c) for c in frame.columns)]
        clashes = case_clashes(names)
        if clashes:
            first, second = clashes[0]
            kind = "the partition column" if first in partition_columns else "its column"
            raise NameClashError(
                f"frame for table {self.qualified(table)} ({doing}) has a column {second!r} "
                f"that differs only by case from {kind} {first!r}. Column names are compared "
                "ignoring case on every database (DuckDB and SQLite would refuse the second, "
                "PostgreSQL keep both); rename one."
            )
        return frame

    def _ensure_table(
        self,
        session: WriteSession,
        table: str,
        frame: Any,
        partition_columns: Sequence[str],
        doing: str,
    ) -> list[str]:
        """Create or check the table; return the data columns in table order."""
        wanted: dict[str, sa.types.TypeEngine] = {}
        all_null: dict[str, bool] = {}
        for col in frame.columns:
            if col in partition_columns:
                continue
            wanted[validate_column(col)] = sql_type_for(frame[col])
            all_null[col] = bool(frame[col].isna().all()) if len(frame) else True
        dialect = session.dialect
        if self.schema and session.creates_schemas:
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
        self._check_column_case(table, existing, [*partition_columns, *wanted], doing)
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
            and not compatible(family(frame_types[c]), family(existing[c]), all_null[c])
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
                f"table {self.qualified(table)} ({self._names.location}) does not match the "
                f"frame: {'; '.join(problems)}. Enable allow_schema_evolution to add new "
                "columns, or migrate/drop the table."
            )
        for col in new_cols:
            column = sa.Column(col, wanted[col], quote=True)
            t = sa.Table(table, sa.MetaData(), column, schema=self.schema, quote=True,
                         quote_schema=True)  # fmt: skip
            session.run(AddColumn(t, column))
        return list(wanted)

    def _check_column_case(
        self, table: str, existing: dict[str, str], columns: Sequence[str], doing: str
    ) -> None:
        """NameClashError when one of ``columns`` is not in the table but one of its columns
        differs from it only by case: DuckDB and SQLite would treat them as one column (an
        added column would fail as a duplicate), PostgreSQL as two (schema evolution would add
        a near-twin). Refused on every database, evolution or not."""
        by_fold = {fold_case(c): c for c in existing}
        for col in columns:
            twin = by_fold.get(fold_case(col))
            if col not in existing and twin is not None:
                raise NameClashError(
                    f"column {col!r} of the frame differs only by case from column {twin!r} of "
                    f"table {self.qualified(table)} in {self._names.location} ({doing}). "
                    "Column names are compared ignoring case on every database (DuckDB and "
                    "SQLite treat them as one column, PostgreSQL as two); rename the frame's "
                    f"column to {twin!r} or migrate the table."
                )

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
        pcols = partition_columns(partitions) if partitions else []
        keep = (
            keep_partition_columns if keep_partition_columns is not None else len(partitions) != 1
        )
        return self._backend.read(table, partitions, [] if keep else pcols)

    def row_count(self, table: str, partition: Partition | None = None) -> int:
        validate_identifier(table, "table name")
        return self._backend.row_count(table, partition)
