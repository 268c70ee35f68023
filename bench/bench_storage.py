"""Storage benchmarks: database I/O manager and object-store I/O manager against their peers.

1. A 1M-row DataFrame partition written and read through ``DatabaseIOManager`` (via
   ``dg.build_output_context``/``build_input_context``) vs ``pandas.to_sql``/``read_sql`` and vs
   the fastest native path: DuckDB's own DataFrame insert / ``.df()``, and on PostgreSQL
   psycopg ``COPY`` fed by ``DataFrame.to_csv`` / ``COPY TO`` read by ``pandas.read_csv``.
   Every write goes to an empty table and includes opening and closing the connection.
2. Object put/get throughput through ``ObjectStoreIOManager`` (S3 backend) vs raw boto3
   ``put_object``/``get_object`` of the same bytes on the same moto server endpoint.

PostgreSQL: 127.0.0.1:5432 (override with FLOWSTONE_BENCH_PG_URL). Ratios > 1 mean we are slower.
"""

from __future__ import annotations

import io
import os
import socket
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import sqlalchemy as sa

from flowstone.storage.database import PartitionedTableStore
from io_managers.database import DatabaseIOManager
from io_managers.object_store import ObjectStoreIOManager

ROWS = int(os.environ.get("FLOWSTONE_BENCH_ROWS", "1000000"))
PG_URL = os.environ.get(
    "FLOWSTONE_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
ASSET = dg.AssetKey(["bench_scores"])
PARTS = dg.StaticPartitionsDefinition(["p1"])


def make_frame(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame({
        "case_id": np.arange(n, dtype=np.int64), "score": rng.random(n),
        "passed": rng.random(n) > 0.5,
        "label": pd.Series(rng.integers(0, 5000, n)).map("label-{}".format),
        "ts": pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(n), unit="s"),
    })  # fmt: skip


def timed(fn, repeat: int = 2) -> float:
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return min(samples)


def io_manager_write_read(url: str, df: pd.DataFrame, reset) -> tuple[float, float]:
    """Time handle_output/load_input only; Dagster's context builders (~50 ms) run untimed."""
    manager = DatabaseIOManager(url=url)
    writes, reads = [], []
    for _ in range(2):
        reset()
        ctx = dg.build_output_context(
            asset_key=ASSET, partition_key="p1", asset_partitions_def=PARTS
        )
        t = time.perf_counter()
        manager.handle_output(ctx, df)
        writes.append(time.perf_counter() - t)
    for _ in range(2):
        ctx = dg.build_input_context(
            asset_key=ASSET, partition_key="p1", asset_partitions_def=PARTS
        )
        t = time.perf_counter()
        out = manager.load_input(ctx)
        reads.append(time.perf_counter() - t)
        assert len(out) == len(df)
    return min(writes), min(reads)


def report(name: str, ours: float, peers: dict[str, float]) -> None:
    best = min(peers.values())
    print(f"  {name:6s} io_manager {ours:6.2f}s | " + " | ".join(f"{k} {v:6.2f}s" for k, v in peers.items())
          + f" | ratio vs fastest native {ours / best:4.2f}x")  # fmt: skip


def bench_duckdb(df: pd.DataFrame, folder: Path) -> None:
    path = folder / "bench.duckdb"
    url = f"duckdb:///{path}"

    def reset():
        con = duckdb.connect(str(path))
        con.execute("DROP TABLE IF EXISTS bench_scores")
        con.close()

    ours_w, ours_r = io_manager_write_read(url, df, reset)

    def native_write():
        reset()
        con = duckdb.connect(str(path))
        con.register("df", df)
        con.execute("CREATE TABLE bench_scores AS SELECT *, 'p1' AS partition_key FROM df")
        con.close()

    def native_read():
        con = duckdb.connect(str(path))
        out = con.execute("SELECT * EXCLUDE (partition_key) FROM bench_scores "
                          "WHERE partition_key = ?", ["p1"]).df()  # fmt: skip
        con.close()
        assert len(out) == len(df)

    engine = sa.create_engine(url, poolclass=sa.NullPool)

    def pandas_write():
        reset()
        df.assign(partition_key="p1").to_sql("bench_scores", engine, index=False, chunksize=100_000)

    def pandas_read():
        out = pd.read_sql("SELECT * FROM bench_scores WHERE partition_key = 'p1'", engine)
        assert len(out) == len(df)

    print("DuckDB (file):")
    report(
        "write",
        ours_w,
        {"duckdb native": timed(native_write), "pandas.to_sql": timed(pandas_write, 1)},
    )
    report(
        "read",
        ours_r,
        {"duckdb native": timed(native_read), "pandas.read_sql": timed(pandas_read, 1)},
    )


def bench_postgres(df: pd.DataFrame) -> None:
    url = sa.make_url(PG_URL)
    try:
        socket.create_connection((url.host or "127.0.0.1", url.port or 5432), timeout=1).close()
    except OSError:
        print(f"PostgreSQL: skipped, nothing listening at {url.host}:{url.port}")
        return
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    db = f"fs_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{db}"')
    bench_url = url.set(database=db).render_as_string(hide_password=False)
    engine = sa.create_engine(bench_url)

    def reset():
        with engine.begin() as c:
            c.exec_driver_sql("DROP TABLE IF EXISTS bench_scores")

    try:
        ours_w, ours_r = io_manager_write_read(bench_url, df, reset)
        # table layout for the native peers: the one our store created
        ddl = "CREATE TABLE bench_scores (partition_key TEXT NOT NULL, case_id BIGINT, score DOUBLE PRECISION, passed BOOLEAN, label TEXT, ts TIMESTAMP)"
        cols = "case_id, score, passed, label, ts, partition_key"

        def copy_write():
            reset()
            with engine.begin() as c:
                c.exec_driver_sql(ddl)
                buf = io.StringIO()
                df.assign(partition_key="p1").to_csv(buf, index=False, header=False)
                raw = c.connection.driver_connection
                with (
                    raw.cursor() as cur,
                    cur.copy(f"COPY bench_scores ({cols}) FROM STDIN (FORMAT csv)") as cp,
                ):
                    cp.write(buf.getvalue())

        def copy_read():
            with engine.connect() as c:
                raw = c.connection.driver_connection
                buf = io.BytesIO()
                with (
                    raw.cursor() as cur,
                    cur.copy(
                        "COPY (SELECT case_id, score, passed, label, ts FROM bench_scores WHERE partition_key = 'p1') TO STDOUT (FORMAT csv, HEADER true)"
                    ) as cp,
                ):
                    for chunk in cp:
                        buf.write(chunk)
                buf.seek(0)
                out = pd.read_csv(buf, parse_dates=["ts"], true_values=["t"], false_values=["f"])
                assert len(out) == len(df)

        def pandas_write():
            reset()
            df.assign(partition_key="p1").to_sql(
                "bench_scores", engine, index=False, chunksize=100_000
            )

        def pandas_read():
            out = pd.read_sql("SELECT * FROM bench_scores WHERE partition_key = 'p1'", engine)
            assert len(out) == len(df)

        print("PostgreSQL:")
        copy_w = timed(copy_write)
        pandas_w = timed(pandas_write, 1)
        report("write", ours_w, {"psycopg COPY (to_csv)": copy_w, "pandas.to_sql": pandas_w})
        report(
            "read",
            ours_r,
            {"COPY TO+read_csv": timed(copy_read), "pandas.read_sql": timed(pandas_read, 1)},
        )
    finally:
        engine.dispose()
        PartitionedTableStore(bench_url).dispose()
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.dispose()


def bench_object_store(folder: Path) -> None:
    from dagster_aws.s3 import S3Resource
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        creds = {
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
            "region_name": "us-east-1",
        }
        resource = S3Resource(endpoint_url=endpoint, **creds)
        client = resource.get_client()
        client.create_bucket(Bucket="bench")
        manager = ObjectStoreIOManager(backend="s3", bucket="bench", s3=resource)
        payload = os.urandom(8 * 1024 * 1024)
        objects = 12
        keys = [f"p{i}" for i in range(objects)]
        parts = dg.StaticPartitionsDefinition(keys)
        asset = dg.AssetKey(["blob"])

        # Dagster's build_*_context costs ~50-80 ms each (an ephemeral instance): build them
        # outside the timed region so that only the I/O manager's own work is measured.
        in_ctx = [
            dg.build_input_context(asset_key=asset, partition_key=k, asset_partitions_def=parts)
            for k in keys
        ]
        out_ctx: list = []

        def fresh_output_contexts():
            out_ctx[:] = [
                dg.build_output_context(
                    asset_key=asset, partition_key=k, asset_partitions_def=parts
                )
                for k in keys
            ]

        def ours_put():
            for ctx in out_ctx:
                manager.handle_output(ctx, payload)

        def ours_get():
            for ctx in in_ctx:
                assert len(manager.load_input(ctx)) == len(payload)

        def raw_put():
            for k in keys:
                client.put_object(Bucket="bench", Key=f"raw/{k}", Body=payload)

        def raw_get():
            for k in keys:
                assert len(client.get_object(Bucket="bench", Key=f"raw/{k}")["Body"].read()) == len(
                    payload
                )

        mb = objects * len(payload) / 1e6
        # interleave rounds so that moto's own warm-up and GC hit both sides alike
        samples = {"ours_put": [], "raw_put": [], "ours_get": [], "raw_get": []}
        for _ in range(3):
            fresh_output_contexts()
            for name, fn in (
                ("raw_put", raw_put),
                ("ours_put", ours_put),
                ("raw_get", raw_get),
                ("ours_get", ours_get),
            ):
                samples[name].append(timed(fn, 1))
        t = {k: statistics.median(v) for k, v in samples.items()}
        print(f"Object store on moto ({objects} x {len(payload) >> 20} MiB):")
        for op in ("put", "get"):
            ours, raw = mb / t[f"ours_{op}"], mb / t[f"raw_{op}"]
            print(
                f"  {op:4s} io_manager {ours:7.1f} MB/s | raw boto3 {raw:7.1f} MB/s | throughput ratio {ours / raw:4.2f}x"
            )
    finally:
        server.stop()


def main() -> None:
    start = time.perf_counter()
    df = make_frame(ROWS)
    print(f"frame: {ROWS:,} rows, {df.memory_usage(deep=True).sum() / 1e6:.0f} MB in memory")
    with tempfile.TemporaryDirectory() as tmp:
        bench_duckdb(df, Path(tmp))
        bench_postgres(df)
        bench_object_store(Path(tmp))
    print(f"total {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
