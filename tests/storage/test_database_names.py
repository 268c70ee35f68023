"""Odd names in partitioned tables, on every dialect (PostgreSQL: a real server on loopback).

Issue 19, point 6: a PostgreSQL column whose name holds ``%`` was written but could not be read
back by partition (psycopg read the ``%`` as a placeholder), and table names differing only by
case were one table on DuckDB and SQLite (an error, or a silent overwrite of the other table's
partition) and two on PostgreSQL. The rule now: any column name within 63 UTF-8 bytes reads back
as written, and table and column names are compared ignoring ASCII case everywhere, a
NameClashError naming both names and what was being done.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from flowstone.storage.database import NameClashError, PartitionedTableStore
from flowstone.storage.errors import StorageError, UnsafeKeyError
from io_managers.database import DatabaseIOManager

DIALECTS = ["duckdb", "duckdb-engine", "sqlite", "postgresql", "postgresql-psycopg2"]

# % in every form psycopg reads as a placeholder, quotes, spaces, reserved words (in SQL, and
# ``at`` in DuckDB only), other scripts, marks of other paramstyles, a name 63 bytes long.
ODD_NAMES = [
    "50% off", "pct%", "%s", "%(x)s", "a%%b", "%", 'quo"te', "it's", "sp ace", " lead",
    "naïve 日本語", "select", "order", "at", "Mixed", "?", ":x", "$1", "back\\slash",
    "é" * 31 + "x",
]  # fmt: skip
P1, P2 = {"suite": "qa", "system": "A"}, {"suite": "qa", "system": "B"}


@pytest.fixture(params=DIALECTS)
def url(request, tmp_path) -> Iterator[str]:
    kind = request.param
    if kind.startswith("duckdb"):
        yield f"duckdb:///{tmp_path / 'w.duckdb'}"
    elif kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'w.sqlite'}"
    else:
        if kind == "postgresql-psycopg2":  # the generic SQLAlchemy path on PostgreSQL
            pytest.importorskip("psycopg2")
        pg_url = request.getfixturevalue("pg_url")
        yield pg_url.replace("+psycopg:", "+psycopg2:") if kind.endswith("psycopg2") else pg_url


@pytest.fixture
def open_store(request, url) -> Iterator:
    """``open_store(**options)``: a store on the dialect under test (DuckDB through a caller's
    SQLAlchemy engine for ``duckdb-engine``), disposed afterwards."""
    stores: list[PartitionedTableStore] = []
    engines: list[sa.Engine] = []

    def make(**options) -> PartitionedTableStore:
        if request.node.callspec.params["url"] == "duckdb-engine":
            engines.append(sa.create_engine(url, poolclass=sa.NullPool))
            options["engine"] = engines[-1]
        stores.append(PartitionedTableStore(url, **options))
        return stores[-1]

    yield make
    for s in stores:
        s.dispose()
    for e in engines:
        e.dispose()


@pytest.fixture
def store(open_store) -> PartitionedTableStore:
    return open_store()


def odd_frame(tag: str, n: int = 3) -> pd.DataFrame:
    """One column per odd name, of several types."""
    data: dict[str, list] = {}
    for i, name in enumerate(ODD_NAMES):
        if i % 3 == 0:
            data[name] = [i * 10 + r for r in range(n)]
        elif i % 3 == 1:
            data[name] = [f"{tag}-{name}-{r}" for r in range(n)]
        else:
            data[name] = [r + 0.5 for r in range(n)]
    return pd.DataFrame(data)


# --------------------------------------------------------------------------- odd column names


def test_percent_column_reads_back_by_partition(store):
    """The reported case: written on PostgreSQL, then every read of a partition failed."""
    a = pd.DataFrame({"50% off": [0.5, 0.25], "note": ["x", "y"]})
    store.write("sales", a, P1)
    store.write("sales", a.assign(note=["z", "w"]), P2)
    pd.testing.assert_frame_equal(store.read("sales", [P1]), a, check_dtype=False)
    both = store.read("sales", [P1, P2])
    assert both["50% off"].tolist() == [0.5, 0.25, 0.5, 0.25] and len(both) == 4
    assert store.row_count("sales", P2) == 2


def test_odd_column_names_round_trip(store):
    a1, b1 = odd_frame("a1"), odd_frame("b1", n=2)
    store.write("odd", a1, P1)
    store.write("odd", b1, P2)
    result = store.write("odd", odd_frame("a2"), P1)  # replace: delete by partition, insert
    assert list(result.columns) == ODD_NAMES
    pd.testing.assert_frame_equal(store.read("odd", [P1]), odd_frame("a2"), check_dtype=False)
    pd.testing.assert_frame_equal(store.read("odd", [P2]), b1, check_dtype=False)
    both = store.read("odd", [P1, P2])
    assert list(both.columns)[-len(ODD_NAMES) :] == ODD_NAMES and len(both) == 5
    whole = store.read("odd")
    assert set(whole.columns) == {"suite", "system", *ODD_NAMES} and len(whole) == 5
    assert store.row_count("odd", P1) == 3 and store.row_count("odd") == 5


def test_odd_column_names_added_by_schema_evolution(open_store):
    """Adding a column is DDL text on PostgreSQL: a ``%`` in it used to fail the write."""
    evolving = open_store(allow_schema_evolution=True)
    evolving.write("grow", pd.DataFrame({"id": [1, 2]}), P1)
    wider = pd.concat([pd.DataFrame({"id": [3, 4]}), odd_frame("w", n=2)], axis=1)
    evolving.write("grow", wider, P2)
    pd.testing.assert_frame_equal(evolving.read("grow", [P2]), wider, check_dtype=False)
    old = evolving.read("grow", [P1])
    assert list(old.columns) == ["id", *ODD_NAMES] and old[ODD_NAMES].isna().all().all()


def test_hostile_partition_values_with_odd_columns_are_stored_literally(store):
    """The PostgreSQL read renders partition values with psycopg's literal adapter now: a
    value made of quotes, % marks and backslashes selects exactly its rows."""
    evil = {"suite": "x'; DROP TABLE odd;-- %s %(x)s \\' ''", "system": "%%"}
    store.write("odd", odd_frame("ok"), P1)
    store.write("odd", odd_frame("evil", n=2), evil)
    pd.testing.assert_frame_equal(
        store.read("odd", [evil]), odd_frame("evil", 2), check_dtype=False
    )
    assert store.row_count("odd", evil) == 2 and store.row_count("odd") == 5


def test_column_names_longer_than_63_utf8_bytes_are_refused(store):
    """PostgreSQL cut such names silently (the column read back renamed); refused everywhere."""
    fits, too_long = "é" * 31 + "x", "é" * 32  # 63 and 64 bytes
    store.write("long", pd.DataFrame({fits: [1]}), {"partition_key": "p"})
    assert list(store.read("long", [{"partition_key": "p"}]).columns) == [fits]
    with pytest.raises(UnsafeKeyError, match="64 bytes in UTF-8; at most 63"):
        store.write("long2", pd.DataFrame({too_long: [1]}), {"partition_key": "p"})
    with pytest.raises(UnsafeKeyError, match="not valid Unicode"):
        lone_surrogate = pd.Index(["a\udc80"], dtype=object)
        store.write("long2", pd.DataFrame([[1]], columns=lone_surrogate), {"partition_key": "p"})


# --------------------------------------------------------------------------- case clashes


def test_table_names_differing_only_by_case_are_one_clear_error(store):
    """DuckDB refused with a raw catalog error, SQLite overwrote Scores' partition, PostgreSQL
    made a second table. Now: one NameClashError naming both tables and the partition."""
    original = pd.DataFrame({"a": [1]})
    store.write("Scores", original, P1)
    with pytest.raises(NameClashError) as caught:
        store.write("scores", pd.DataFrame({"a": [2, 3]}), P1)
    message = str(caught.value)
    assert "table scores differs only by case from existing table Scores" in message
    assert "writing partition {'suite': 'qa', 'system': 'A'}" in message
    assert "rename" in message
    for read in (lambda: store.read("scores", [P1]), lambda: store.row_count("scores", P1)):
        with pytest.raises(NameClashError, match="table scores .* existing table Scores"):
            read()
    with pytest.raises(NameClashError, match=r"SCORES .* Scores .*writing partitions"):
        store.write_many("SCORES", [(P1, original), (P2, original)])
    pd.testing.assert_frame_equal(store.read("Scores", [P1]), original, check_dtype=False)
    assert store.row_count("Scores") == 1
    with pytest.raises(StorageError, match="does not exist"):  # no clash: a plain missing table
        store.read("other")


def test_a_view_differing_only_by_case_clashes_too(url, store):
    """A view (dbt makes them in the warehouse) shares the table namespace on every dialect."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as c:
        c.exec_driver_sql('CREATE VIEW "Leaders" AS SELECT 1 AS a')
    engine.dispose()
    with pytest.raises(NameClashError, match="table leaders .* existing table Leaders"):
        store.write("leaders", pd.DataFrame({"a": [1]}), P1)
    with pytest.raises(NameClashError, match="table leaders .* existing table Leaders"):
        store.read("leaders")


def test_schema_names_differing_only_by_case_clash_too(url, open_store):
    """``WH.scores`` and ``wh.scores``: one table on DuckDB, two on PostgreSQL."""
    if url.startswith("sqlite"):
        pytest.skip("SQLite has no schemas (its schemas are attached database files)")
    open_store(schema="wh").write("scores", pd.DataFrame({"a": [1]}), P1)
    upper = open_store(schema="WH")
    with pytest.raises(NameClashError, match=r"table WH\.scores .* existing table wh\.scores"):
        upper.write("scores", pd.DataFrame({"a": [2]}), P1)
    with pytest.raises(NameClashError, match=r"WH\.scores .* wh\.scores .*reading partition"):
        upper.read("scores", [P1])
    assert open_store(schema="wh").read("scores", [P1])["a"].tolist() == [1]


def test_column_names_differing_only_by_case_are_one_clear_error(open_store):
    """DuckDB and SQLite refused with raw errors, PostgreSQL kept two near-twin columns."""
    store = open_store(allow_schema_evolution=True)
    with pytest.raises(NameClashError, match="column 'score' that differs only by case from its "
                       "column 'Score'"):  # fmt: skip
        store.write("t", pd.DataFrame({"Score": [1], "score": [2]}), P1)
    with pytest.raises(NameClashError, match="'Suite' that differs only by case from the "
                       "partition column 'suite'"):  # fmt: skip
        store.write("t", pd.DataFrame({"Suite": ["x"], "v": [1]}), P1)
    store.write("t", pd.DataFrame({"score": [1]}), P1)
    with pytest.raises(NameClashError, match="column 'Score' of the frame differs only by case "
                       "from column 'score' of table t"):  # fmt: skip
        store.write("t", pd.DataFrame({"Score": [2]}), P2)
    assert list(store.read("t").columns) == ["suite", "system", "score"]
    # non-ASCII letters are not folded (DuckDB and SQLite keep "Ü" and "ü" apart too)
    store.write("u", pd.DataFrame({"Ü": [1], "ü": [2]}), P1)
    assert list(store.read("u", [P1]).columns) == ["Ü", "ü"]


# --------------------------------------------------------------------------- PostgreSQL only


def test_postgres_existing_case_twins_are_refused(pg_url):
    """Tables made before this rule (or by hand): PostgreSQL may hold both; neither is used."""
    engine = sa.create_engine(pg_url)
    with engine.begin() as c:
        c.exec_driver_sql('CREATE TABLE "Scores" (partition_key TEXT NOT NULL, a BIGINT)')
        c.exec_driver_sql('CREATE TABLE "scores" (partition_key TEXT NOT NULL, a BIGINT)')
    engine.dispose()
    store = PartitionedTableStore(pg_url)
    with pytest.raises(NameClashError, match="table scores .* existing table Scores"):
        store.write("scores", pd.DataFrame({"a": [1]}), {"partition_key": "p"})
    with pytest.raises(NameClashError, match="table Scores .* existing table scores"):
        store.read("Scores", [{"partition_key": "p"}])
    store.dispose()


@pytest.mark.parametrize("names", [("Scores", "scores"), ("scores", "scores")])
def test_postgres_concurrent_creators_make_one_table(pg_url, monkeypatch, names):
    """Two writers look up the catalog at the same moment and both find nothing. The lock taken
    before creating makes the second look again: a case twin fails with NameClashError instead
    of making a second table, and the same name writes into the table the first one made
    instead of colliding with it in CREATE TABLE."""
    from flowstone.storage.database.postgres_backend import PostgresBackend

    both_looked = threading.Barrier(2, timeout=20)
    first_lookup = threading.local()
    lookup = PostgresBackend._information_schema_tables

    def in_step(self, conn, table, default_schema):
        found = lookup(self, conn, table, default_schema)
        if not getattr(first_lookup, "done", False):
            first_lookup.done = True
            both_looked.wait()
        return found

    monkeypatch.setattr(PostgresBackend, "_information_schema_tables", in_step)
    outcomes: list[object] = [None, None]

    def write(i: int) -> None:
        store = PartitionedTableStore(pg_url)
        try:
            store.write(names[i], pd.DataFrame({"a": [i]}), {"partition_key": f"p{i}"})
            outcomes[i] = "written"
        except Exception as exc:
            outcomes[i] = exc
        finally:
            store.dispose()

    threads = [threading.Thread(target=write, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    monkeypatch.undo()
    engine = sa.create_engine(pg_url)
    with engine.connect() as c:
        tables = c.exec_driver_sql(
            "SELECT table_name FROM information_schema.tables WHERE lower(table_name) = 'scores'"
        ).all()
    engine.dispose()
    assert len(tables) == 1
    if names[0] == names[1]:
        assert outcomes == ["written", "written"]
        store = PartitionedTableStore(pg_url)
        assert store.row_count("scores") == 2
        store.dispose()
    else:
        assert sorted(map(str, outcomes)).count("written") == 1, outcomes
        (error,) = [e for e in outcomes if e != "written"]
        assert isinstance(error, NameClashError), error


# --------------------------------------------------------------------------- the I/O manager

PARTS = dg.StaticPartitionsDefinition(["2024-01-01"])


@dg.asset(key=["wh", "Scores"], partitions_def=PARTS, io_manager_key="warehouse_io_manager")
def upper_scores() -> pd.DataFrame:
    return pd.DataFrame({"score": [0.5]})


@dg.asset(key=["wh", "scores"], partitions_def=PARTS, io_manager_key="warehouse_io_manager")
def lower_scores() -> pd.DataFrame:
    return pd.DataFrame({"score": [0.9, 0.1]})


@pytest.mark.parametrize("kind", ["duckdb", "postgresql"])
def test_io_manager_names_the_asset_partition_and_both_tables(kind, tmp_path, request):
    """Assets wh/Scores and wh/scores (SQLite is left out: it has no schema for "wh")."""
    if kind == "duckdb":
        url = f"duckdb:///{tmp_path / 'w.duckdb'}"
    else:
        url = request.getfixturevalue("pg_url")
    resources = {"warehouse_io_manager": DatabaseIOManager(url=url)}
    dg.materialize([upper_scores], resources=resources, partition_key="2024-01-01")
    result = dg.materialize(
        [lower_scores], resources=resources, partition_key="2024-01-01", raise_on_error=False
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = str(failure.step_failure_data.error)
    assert "NameClashError: asset wh/scores: table wh.scores differs only by case from " in message
    assert "existing table wh.Scores" in message
    assert "writing partition {'partition_key': '2024-01-01'}" in message
    back = PartitionedTableStore(url, schema="wh")
    assert back.read("Scores", [{"partition_key": "2024-01-01"}])["score"].tolist() == [0.5]
    back.dispose()
