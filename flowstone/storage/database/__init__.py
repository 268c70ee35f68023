"""Partitioned DataFrame tables in DuckDB, PostgreSQL or SQLite, replaced atomically.

Why: evaluation scores and reports land in a warehouse that dbt reads, so a partition must be
either the old rows or the new rows, never a mix, even if the writer is killed. A write
deletes exactly the partition's rows and inserts the new ones inside ONE transaction; the
partition values are always bound parameters (never formatted into SQL by us; PostgreSQL's
COPY, which takes no server-side parameters, gets them quoted by psycopg's literal adapter).

Names: a column may be named with any text within 63 UTF-8 bytes (``%``, quotes, spaces,
reserved words, any script), read back as written on every dialect. Table and column names
are compared ignoring ASCII case on every dialect; a name that differs only by case from an
existing one is a :class:`NameClashError` (DuckDB and SQLite would share one table or column,
PostgreSQL keep two).

Partition layout: one TEXT column per partition dimension (``suite``, ``system`` for a
MultiPartitionsDefinition; a single configurable column, ``partition_key`` by default, for
one-dimensional partitions). The partition columns are added by the store; a frame may carry
them only with exactly the partition's value.

Layout of this package: :mod:`.store` holds what every database shares (frame and partition
validation, the schema check, the one-transaction write); each dialect moves rows its own
fastest way behind the :class:`.backend.TableBackend` interface, picked once from the URL:

- :mod:`.duckdb_backend`: DuckDB driven through its own Python connection (no SQLAlchemy or
  duckdb_engine in between: their connection setup and catalog queries were a fixed cost on
  every call); the frame is registered and scanned in place, and reads use
  ``SELECT * EXCLUDE (partition columns)`` straight into ``.df()``, with no catalog lookup.
- :mod:`.postgres_backend`: PostgreSQL through SQLAlchemy, with ``COPY ... FROM STDIN`` fed
  with CSV written by Arrow, and reads back through ``COPY ... TO STDOUT`` parsed by Arrow.
- :mod:`.generic_backend`: any other SQLAlchemy dialect (SQLite), with executemany.

Schema: a frame whose columns or types differ from the table raises SchemaChangeError unless
``allow_schema_evolution`` is on, in which case new columns are added (existing columns are
never dropped or retyped; writing ints into a float column is always allowed).
"""

from flowstone.storage.database.partitions import Partition
from flowstone.storage.database.schema import (
    NameClashError,
    quote_identifier,
    validate_identifier,
)
from flowstone.storage.database.store import PartitionedTableStore, WriteResult

__all__ = [
    "NameClashError",
    "Partition",
    "PartitionedTableStore",
    "WriteResult",
    "quote_identifier",
    "validate_identifier",
]
