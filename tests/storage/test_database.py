"""Partitioned tables on DuckDB, SQLite and PostgreSQL (a real server on loopback)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from flowstone.storage.database import PartitionedTableStore
from flowstone.storage.errors import SchemaChangeError, StorageError, UnsafeKeyError


@pytest.fixture(params=["duckdb", "sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "duckdb":
        url = f"duckdb:///{tmp_path / 'w.duckdb'}"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    else:
        url = request.getfixturevalue("pg_url")
    s = PartitionedTableStore(url)
    yield s
    s.dispose()


def frame(n: int, tag: str) -> pd.DataFrame:
    return pd.DataFrame({
        "case_id": np.arange(n), "score": np.linspace(0, 1, n), "passed": np.arange(n) % 2 == 0,
        "note": [f"{tag}-{i}" for i in range(n)],
        "at": pd.Timestamp("2024-05-01") + pd.to_timedelta(np.arange(n), unit="min"),
    })  # fmt: skip


def test_partition_replace_touches_only_that_partition(store):
    a1, b1, a2 = frame(5, "a1"), frame(3, "b1"), frame(2, "a2")
    store.write("scores", a1, {"suite": "qa", "system": "A"})
    store.write("scores", b1, {"suite": "qa", "system": "B"})
    result = store.write("scores", a2, {"suite": "qa", "system": "A"})
    assert result.rows == 2
    pd.testing.assert_frame_equal(
        store.read("scores", [{"suite": "qa", "system": "A"}]), a2, check_dtype=False
    )
    pd.testing.assert_frame_equal(
        store.read("scores", [{"suite": "qa", "system": "B"}]), b1, check_dtype=False
    )
    both = store.read("scores", [{"suite": "qa", "system": "A"}, {"suite": "qa", "system": "B"}])
    assert set(both.columns) >= {"suite", "system"} and len(both) == 5
    assert store.row_count("scores") == 5


def test_injection_in_partition_values_is_stored_literally(store):
    evil = "x'; DROP TABLE t;--"
    store.write("t", frame(2, "safe"), {"partition_key": "ok"})
    store.write("t", frame(3, "evil"), {"partition_key": evil})
    assert store.row_count("t", {"partition_key": evil}) == 3
    assert store.row_count("t") == 5
    with pytest.raises(UnsafeKeyError):
        store.write("t", frame(1, "x"), {"partition_key": "a\x00b"})
    with pytest.raises(UnsafeKeyError):
        store.write("t; DROP TABLE t", frame(1, "x"), {"partition_key": "p"})
    with pytest.raises(UnsafeKeyError):
        store.write("t", frame(1, "x"), {"p; --": "p"})


def test_schema_change_is_an_error_unless_evolution_is_on(store):
    store.write("s", frame(2, "a"), {"partition_key": "p1"})
    wider = frame(2, "b").assign(extra=[1.5, 2.5])
    with pytest.raises(SchemaChangeError, match=r"new columns \['extra'\]"):
        store.write("s", wider, {"partition_key": "p2"})
    retyped = frame(2, "c").assign(score=["high", "low"])
    with pytest.raises(SchemaChangeError, match="changed types"):
        store.write("s", retyped, {"partition_key": "p2"})
    evolving = PartitionedTableStore(str(store.url.render_as_string(hide_password=False)),
                                     allow_schema_evolution=True)  # fmt: skip
    evolving.write("s", wider, {"partition_key": "p2"})
    back = evolving.read("s", [{"partition_key": "p1"}])
    assert "extra" in back.columns and back["extra"].isna().all()
    assert evolving.read("s", [{"partition_key": "p2"}])["extra"].tolist() == [1.5, 2.5]


def test_multi_partition_write_is_one_transaction(store):
    store.write("m", frame(2, "old"), {"partition_key": "p1"})
    bad = pd.DataFrame({"case_id": ["not-an-int"], "score": [0.1], "passed": [True],
                        "note": ["x"], "at": [pd.Timestamp("2024-01-01")]})  # fmt: skip
    with pytest.raises((sa.exc.SQLAlchemyError, StorageError, Exception)):
        store.write_many("m", [({"partition_key": "p1"}, frame(4, "new")),
                               ({"partition_key": "p2"}, bad)])  # fmt: skip
    assert store.read("m", [{"partition_key": "p1"}])["note"].tolist() == ["old-0", "old-1"]
    assert store.row_count("m") == 2


def test_missing_table_is_a_clear_error(store):
    with pytest.raises(StorageError, match="does not exist.*materialize"):
        store.read("nope", [{"partition_key": "p"}])


def test_postgres_reconnects_after_backends_are_terminated(pg_url):
    """Simulates a server restart on the SHARED server by terminating our backends."""
    s = PartitionedTableStore(pg_url)
    s.write("r", frame(3, "before"), {"partition_key": "p"})
    db = sa.make_url(pg_url).database
    admin = sa.create_engine(pg_url.rsplit("/", 1)[0] + "/postgres")
    with admin.begin() as c:
        killed = c.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :d AND pid <> pg_backend_pid()"
            ),
            {"d": db},
        )
        assert killed.scalar_one() >= 1  # the pooled connection was really cut
    admin.dispose()
    s.write("r", frame(4, "after"), {"partition_key": "p"})
    assert s.row_count("r") == 4
    s.dispose()


def test_postgres_reconnects_after_a_real_restart(own_pg_cluster):
    c = own_pg_cluster
    s = PartitionedTableStore(f"postgresql+psycopg://postgres@127.0.0.1:{c.port}/postgres")
    s.write("restart", frame(3, "before"), {"partition_key": "p"})
    c.restart()
    s.write("restart", frame(5, "after"), {"partition_key": "p"})
    assert s.read("restart", [{"partition_key": "p"}])["note"].iloc[0] == "after-0"
    s.dispose()


KILLED_WRITER = textwrap.dedent(
    """
    import sys, numpy as np, pandas as pd
    from flowstone.storage.database import PartitionedTableStore
    store = PartitionedTableStore(sys.argv[1])
    n = 1_500_000
    df = pd.DataFrame({"case_id": np.arange(n), "score": np.ones(n), "passed": np.ones(n, bool),
                       "note": ["new"] * n, "at": pd.Timestamp("2024-01-01")})
    print("writing", flush=True)
    store.write("k", df, {"partition_key": "p"})
    print("done", flush=True)
    """
)


def _old_data(store):
    store.write("k", frame(10, "old"), {"partition_key": "p"})
    store.write("k", frame(4, "other"), {"partition_key": "q"})
    store.dispose()


def _assert_old_data_intact(store):
    back = store.read("k", [{"partition_key": "p"}])
    assert back["note"].tolist() == [f"old-{i}" for i in range(10)]  # no partial new rows
    assert store.row_count("k") == 14


def test_killed_postgres_writer_leaves_the_old_partition(pg_url):
    store = PartitionedTableStore(pg_url)
    _old_data(store)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, pg_url],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "writing"
    deadline = time.monotonic() + 30
    engine = sa.create_engine(pg_url)
    with engine.connect() as c:  # wait until the COPY is really streaming, then kill
        while time.monotonic() < deadline:
            active = c.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE "
                                       "query LIKE 'COPY%' AND state = 'active'")).scalar_one()  # fmt: skip
            c.rollback()
            if active:
                break
            time.sleep(0.01)
        assert active, "the writer never reached COPY"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    _assert_old_data_intact(store)
    engine.dispose()
    store.dispose()


def test_killed_duckdb_writer_leaves_the_old_partition(tmp_path):
    url = f"duckdb:///{tmp_path / 'kill.duckdb'}"
    store = PartitionedTableStore(url)
    _old_data(store)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, url],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(0.15)  # inside the transaction: frame registered, rows being inserted
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout.read() == ""  # it never reached "done"
    _assert_old_data_intact(store)


def test_duckdb_whole_table_replace_and_partition_column_mismatch(tmp_path):
    store = PartitionedTableStore(f"duckdb:///{tmp_path / 'w.duckdb'}")
    store.write("plain", frame(3, "a"))
    store.write("plain", frame(2, "b"))  # no partition: the whole table is replaced
    assert store.read("plain")["note"].tolist() == ["b-0", "b-1"]
    with pytest.raises(StorageError, match="cannot be read by partition"):
        store.read("plain", [{"partition_key": "p"}])


def test_duckdb_file_locked_by_another_process_is_a_clear_error(tmp_path):
    path = tmp_path / "locked.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
         "print('holding', flush=True); time.sleep(30)", str(path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(StorageError, match=r"cannot open DuckDB file .*locked\.duckdb.*retry"):
            PartitionedTableStore(f"duckdb:///{path}").write("t", frame(1, "x"), {"p": "1"})
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_backend_is_picked_once_from_the_url(tmp_path):
    from flowstone.storage.database.duckdb_backend import DuckDBBackend, DuckDBEngineBackend
    from flowstone.storage.database.generic_backend import SqlAlchemyBackend
    from flowstone.storage.database.postgres_backend import PostgresBackend

    duck = f"duckdb:///{tmp_path / 'w.duckdb'}"
    engine = sa.create_engine(duck, poolclass=sa.NullPool)
    picked = {
        duck: DuckDBBackend,
        "postgresql+psycopg://u@127.0.0.1/db": PostgresBackend,
        f"sqlite:///{tmp_path / 'w.sqlite'}": SqlAlchemyBackend,
    }
    for url, backend in picked.items():
        assert type(PartitionedTableStore(url)._backend) is backend
    assert type(PartitionedTableStore(duck, engine=engine)._backend) is DuckDBEngineBackend
    engine.dispose()


def test_duckdb_through_a_caller_supplied_engine(tmp_path):
    """A SQLAlchemy engine for DuckDB: its connections, the same rows and errors."""
    url = f"duckdb:///{tmp_path / 'e.duckdb'}"
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    store = PartitionedTableStore(url, schema="wh", engine=engine)
    store.write("scores", frame(3, "a"), {"partition_key": "p1"})
    store.write("scores", frame(2, "b"), {"partition_key": "p2"})
    pd.testing.assert_frame_equal(
        store.read("scores", [{"partition_key": "p2"}]), frame(2, "b"), check_dtype=False
    )
    assert store.row_count("scores") == 5
    with pytest.raises(SchemaChangeError, match=r"new columns \['extra'\]"):
        store.write("scores", frame(1, "c").assign(extra=1), {"partition_key": "p3"})
    with pytest.raises(StorageError, match="does not exist.*materialize"):
        store.read("nope")
    store.dispose()
    engine.dispose()
    assert PartitionedTableStore(url, schema="wh").row_count("scores", {"partition_key": "p1"}) == 3
