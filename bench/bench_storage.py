"""Storage benchmarks: database I/O manager and object-store I/O manager against their peers.

1. A 1M-row DataFrame partition written and read through ``DatabaseIOManager`` (via
   ``dg.build_output_context``/``build_input_context``, built outside the timed region) vs
   ``pandas.to_sql``/``read_sql`` (once: ~1 minute on DuckDB) and vs the fastest native path:
   DuckDB's own DataFrame insert / ``.df()`` (medians of interleaved rounds, with ranges), and on
   PostgreSQL psycopg ``COPY`` fed by ``DataFrame.to_csv`` / ``COPY TO`` read by
   ``pandas.read_csv``. Every write goes to an empty table and includes opening and closing the
   connection.
2. Object put/get throughput through ``ObjectStoreIOManager`` (S3 backend) vs raw boto3
   ``put_object``/``get_object`` of the same encoded bytes on the same moto server (its own
   process on loopback). Reference rows show where the time goes: raw boto3 plus a sha256
   of the payload (what recording a sha256 costs on a default client), raw boto3 on the I/O
   manager's client with no checksum at all (the floor), and the I/O manager with
   ``verify_sha256=True``. The output says exactly what each side does. The
   sides take turns object by object (rotating order), so that load from elsewhere on a shared
   machine hits them alike; the output gives medians, quartiles and per-object paired ratios.

PostgreSQL: 127.0.0.1:5432 (override with FLOWSTONE_BENCH_PG_URL). Rounds:
FLOWSTONE_BENCH_DB_ROUNDS (5), FLOWSTONE_BENCH_OBJECT_ROUNDS (7). Run only some sections with
FLOWSTONE_BENCH_ONLY, comma-separated from duckdb, postgres, object (default: all), e.g.
``FLOWSTONE_BENCH_ONLY=object .venv/bin/python bench/bench_storage.py``. For the database,
ratios > 1 mean we are slower; for the object store, throughput ratios < 1 mean we are slower.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import sqlalchemy as sa
import xxhash

from flowstone.storage.database import PartitionedTableStore
from io_managers.database import DatabaseIOManager
from io_managers.object_store import ObjectStoreIOManager

ROWS = int(os.environ.get("FLOWSTONE_BENCH_ROWS", "1000000"))
PG_URL = os.environ.get(
    "FLOWSTONE_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
DB_ROUNDS = int(os.environ.get("FLOWSTONE_BENCH_DB_ROUNDS", "5"))
OBJECT_ROUNDS = int(os.environ.get("FLOWSTONE_BENCH_OBJECT_ROUNDS", "7"))
ASSET = dg.AssetKey(["bench_scores"])
PARTS = dg.StaticPartitionsDefinition(["p1"])
SECTIONS = ("duckdb", "postgres", "object")


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


def bench_duckdb(df: pd.DataFrame, folder: Path, rounds: int = DB_ROUNDS) -> None:
    path = folder / "bench.duckdb"
    url = f"duckdb:///{path}"
    manager = DatabaseIOManager(url=url)

    def reset():
        con = duckdb.connect(str(path))
        con.execute("DROP TABLE IF EXISTS bench_scores")
        con.close()

    def output_context():
        return dg.build_output_context(
            asset_key=ASSET, partition_key="p1", asset_partitions_def=PARTS
        )

    in_ctx = dg.build_input_context(asset_key=ASSET, partition_key="p1", asset_partitions_def=PARTS)

    def ours_write(ctx):
        manager.handle_output(ctx, df)

    def ours_read():
        assert len(manager.load_input(in_ctx)) == len(df)

    def native_write():
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

    # Interleaved rounds. Every write goes to an empty file table (reset untimed) and opens and
    # closes its connection; Dagster's build_output_context (~50 ms) runs untimed.
    samples: dict[str, list[float]] = {k: [] for k in ("ours_w", "nat_w", "ours_r", "nat_r")}
    for r in range(rounds + 1):  # round 0 warms caches and is dropped
        order = ["ours", "native"] if r % 2 else ["native", "ours"]
        for side in order:
            reset()
            if side == "ours":
                ctx = output_context()
                t = time.perf_counter()
                ours_write(ctx)
                samples["ours_w"].append(time.perf_counter() - t)
            else:
                samples["nat_w"].append(timed(native_write, 1))
        for side in order:
            key, fn = ("ours_r", ours_read) if side == "ours" else ("nat_r", native_read)
            samples[key].append(timed(fn, 1))
    samples = {k: v[1:] for k, v in samples.items()}

    engine = sa.create_engine(url, poolclass=sa.NullPool)

    def pandas_write():
        df.assign(partition_key="p1").to_sql("bench_scores", engine, index=False, chunksize=100_000)

    def pandas_read():
        out = pd.read_sql("SELECT * FROM bench_scores WHERE partition_key = 'p1'", engine)
        assert len(out) == len(df)

    reset()
    to_sql = timed(pandas_write, 1)
    read_sql = timed(pandas_read, 1)
    engine.dispose()
    print(f"DuckDB (file), {rounds} interleaved rounds, medians (range):")
    print(
        "  io_manager: handle_output/load_input (duckdb connection, one transaction: schema "
        "check, DELETE partition, INSERT SELECT from the registered frame / SELECT * EXCLUDE "
        "(partition_key) WHERE partition_key = ? .df())"
    )
    print("  duckdb native: connect, register, CREATE TABLE AS SELECT *, 'p1' / the same SELECT "
          ".df(), close")  # fmt: skip
    for op, ours_key, nat_key, pandas_name, pandas_s in (
        ("write", "ours_w", "nat_w", "pandas.to_sql", to_sql),
        ("read", "ours_r", "nat_r", "pandas.read_sql", read_sql),
    ):
        ours, nat = samples[ours_key], samples[nat_key]
        ratio = statistics.median(ours) / statistics.median(nat)
        paired = sorted(o / n for o, n in zip(ours, nat, strict=True))
        print(
            f"  {op:5s} io_manager {spread(ours)} | duckdb native {spread(nat)} | "
            f"{pandas_name} {pandas_s:.2f}s (once)"
        )
        print(
            f"        ratio vs fastest native {ratio:4.2f}x (per-round ratios "
            f"{paired[0]:.2f}-{paired[-1]:.2f}); target <= 1.20: "
            f"{'met' if ratio <= 1.2 else 'NOT met'}"
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


@contextlib.contextmanager
def moto_server_process() -> Iterator[str]:
    """moto's S3 server in its own process on loopback, like a remote endpoint.

    A separate process keeps the server's request handling off the client's GIL, so that
    neither side is slowed by the other's Python work.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def spread(samples: list[float]) -> str:
    return f"median {statistics.median(samples):.4f}s (range {min(samples):.4f}-{max(samples):.4f})"


def bench_object_store(rounds: int = OBJECT_ROUNDS) -> None:
    import boto3
    from dagster_aws.s3 import S3Resource

    from flowstone.storage import codec
    from io_managers.object_store import s3_client_for_codec

    load_before = os.getloadavg()
    with moto_server_process() as endpoint:
        creds = {
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
            "region_name": "us-east-1",
        }
        resource = S3Resource(endpoint_url=endpoint, **creds)
        raw_client = boto3.client("s3", endpoint_url=endpoint, **creds)  # botocore defaults
        same_config_client = s3_client_for_codec(resource)
        raw_client.create_bucket(Bucket="bench")
        manager = ObjectStoreIOManager(backend="s3", bucket="bench", s3=resource)
        manager_sha = ObjectStoreIOManager(
            backend="s3", bucket="bench", s3=resource, verify_sha256=True
        )
        payload = os.urandom(8 * 1024 * 1024)
        # the raw side moves exactly the bytes the I/O manager stores (header + payload)
        encoded = codec.encode(payload).data
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

        # one operation on object i per call, so that the sides can be interleaved object by
        # object: a burst of load from elsewhere on the machine then hits every side alike
        def ours_put(i):
            manager.handle_output(out_ctx[i], payload)

        def ours_get(i):
            assert len(manager.load_input(in_ctx[i])) == len(payload)

        def ours_get_sha256(i):
            assert len(manager_sha.load_input(in_ctx[i])) == len(payload)

        def raw_put(client, prefix, hash_first=False):
            def run(i):
                if hash_first:
                    hashlib.sha256(payload).hexdigest()
                client.put_object(Bucket="bench", Key=f"{prefix}/{keys[i]}", Body=encoded)

            return run

        def raw_get(client, prefix, hash_after=False):
            def run(i):
                data = client.get_object(Bucket="bench", Key=f"{prefix}/{keys[i]}")["Body"].read()
                assert len(data) == len(encoded)
                if hash_after:
                    hashlib.sha256(memoryview(data)[len(encoded) - len(payload) :]).digest()

            return run

        sides = {
            "put": {
                "io_manager": ours_put,
                "raw boto3": raw_put(raw_client, "raw"),
                "raw boto3 + sha256": raw_put(raw_client, "rawh", hash_first=True),
                "raw boto3, our client config": raw_put(same_config_client, "rawc"),
            },
            "get": {
                "io_manager": ours_get,
                "io_manager, verify_sha256": ours_get_sha256,
                "raw boto3": raw_get(raw_client, "raw"),
                "raw boto3 + sha256": raw_get(raw_client, "rawh", hash_after=True),
                "raw boto3, our client config": raw_get(same_config_client, "rawc"),
            },
        }
        # samples[op][side][round * objects + i]: seconds for object i in that round
        samples = {op: {name: [] for name in fns} for op, fns in sides.items()}
        # warm-up round (connections, moto's first-request work, the allocator), dropped; then
        # rounds in which every object goes through every side in a rotating order
        for r in range(rounds + 1):
            fresh_output_contexts()
            for op in ("put", "get"):
                for i in range(objects):
                    names = list(sides[op])
                    turn = (r * objects + i) % len(names)
                    for name in names[turn:] + names[:turn]:
                        t = time.perf_counter()
                        sides[op][name](i)
                        if r:
                            samples[op][name].append(time.perf_counter() - t)

        hash_ms = timed(lambda: hashlib.sha256(payload).digest(), 5) * 1000
        crc_ms = timed(lambda: zlib.crc32(encoded), 5) * 1000
        xxh_ms = timed(lambda: xxhash.xxh3_128_hexdigest(payload), 5) * 1000
        print(
            f"Object store on moto server process ({objects} x {len(payload) >> 20} MiB objects, "
            f"{rounds} rounds, sides interleaved object by object; medians; load average before "
            f"{load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}):"
        )
        print(
            "  io_manager put: handle_output -> codec.encode (sha256 and xxh3-128 of the payload, "
            "~350-byte header; the payload is not copied) -> one put_object: the payload as "
            "the body (a seekable reader handing out views), the header as object metadata, "
            "the codec's sha256 as S3's signed x-amz-checksum-sha256 (no SigV4 payload hash, "
            "no CRC32: one sha256 pass in all).\n"
            "  io_manager get: load_input -> get_object, the header from the metadata, the "
            "payload in one read, size and xxh3-128 verified before the bytes are returned "
            "(verify_sha256: the sha256 instead).\n"
            f"  raw boto3: put_object(Body=<a {len(encoded):,}-byte blob of header and payload, "
            "built once>) / get_object + Body.read() on a default boto3 client (CRC32 request "
            "checksum + SigV4-signed payload sha256 on this plain-HTTP endpoint; CRC32 "
            "validated on get).\n"
            "  raw boto3 + sha256: the same plus hashlib.sha256 of the payload (what a store "
            "that records a sha256 pays on a default client).\n"
            "  raw boto3, our client config: put_object/get_object of the blob on the I/O "
            "manager's client with no checksum at all (the floor, not a safe way to store)."
        )
        print(
            f"  one {len(payload) >> 20} MiB payload: sha256 {hash_ms:.1f} ms, xxh3-128 "
            f"{xxh_ms:.2f} ms, CRC32 {crc_ms:.1f} ms (what a default client computes)"
        )
        for op in ("put", "get"):
            raw = samples[op]["raw boto3"]
            raw_median = statistics.median(raw)
            for name, values in samples[op].items():
                med = statistics.median(values)
                paired = statistics.quantiles(
                    [r / v for r, v in zip(raw, values, strict=True)], n=4
                )
                print(
                    f"  {op} {name:29s} {len(encoded) / med / 1e6:7.1f} MB/s  {med * 1000:6.1f} "
                    f"ms/object (IQR {ms_quartiles(values)})  vs raw boto3 {raw_median / med:4.2f}x "
                    f"(paired per object: median {paired[1]:.2f}, IQR {paired[0]:.2f}-{paired[2]:.2f})"
                )
        for op in ("put", "get"):
            ours = statistics.median(samples[op]["io_manager"])
            raw = statistics.median(samples[op]["raw boto3"])
            same = statistics.median(samples[op]["raw boto3, our client config"])
            floor = statistics.median(samples[op]["raw boto3 + sha256"])
            print(
                f"  {op}: io_manager / raw boto3 throughput {raw / ours:4.2f}x (target >= 0.90: "
                f"{'met' if raw / ours >= 0.9 else 'NOT met'}); vs raw on our client config "
                f"{same / ours:4.2f}x; a default client + sha256 reaches {raw / floor:4.2f}x"
            )
            if op == "get":
                strict = statistics.median(samples[op]["io_manager, verify_sha256"])
                print(f"  get with verify_sha256=True: {raw / strict:4.2f}x of raw boto3")


def ms_quartiles(samples: list[float]) -> str:
    q1, _, q3 = statistics.quantiles(samples, n=4)
    return f"{q1 * 1000:.1f}-{q3 * 1000:.1f}"


def selected_sections() -> set[str]:
    """Sections named in FLOWSTONE_BENCH_ONLY (comma-separated), or all of them."""
    raw = os.environ.get("FLOWSTONE_BENCH_ONLY", "").strip()
    if not raw:
        return set(SECTIONS)
    chosen = {part.strip().lower() for part in raw.split(",") if part.strip()}
    unknown = chosen - set(SECTIONS)
    if unknown:
        raise SystemExit(
            f"FLOWSTONE_BENCH_ONLY: unknown section(s) {', '.join(sorted(unknown))}; "
            f"choose from {', '.join(SECTIONS)}"
        )
    return chosen


def main() -> None:
    start = time.perf_counter()
    sections = selected_sections()
    if sections & {"duckdb", "postgres"}:
        df = make_frame(ROWS)
        print(f"frame: {ROWS:,} rows, {df.memory_usage(deep=True).sum() / 1e6:.0f} MB in memory")
        with tempfile.TemporaryDirectory() as tmp:
            if "duckdb" in sections:
                bench_duckdb(df, Path(tmp))
            if "postgres" in sections:
                bench_postgres(df)
        del df
    if "object" in sections:
        bench_object_store()
    print(f"total {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
