"""The pool server under mixed traffic from 4 client processes for 30 minutes (bounded).

`flowstone pool serve --bridge echo --workers 2 --max-rss-mb 150 --max-requests 200000` in its own
process group; four client processes (each a PoolClient over the Unix socket) loop over a mix:
no-op calls, echoes of 1 KiB-256 KiB payloads, short sleeps, 20-chunk streams, and session
calls that make a worker keep 256 KiB per call (memory that only recycling gives back). Every
second the sampler records each worker's RSS, the server's RSS and the worker pids; the
clients record the p50/p99 of each minute's calls. At the end: the server stops, and the benchmark looks for any
process left from its process group or any worker pid still alive (orphans).

Peer: minute 1 against the last minutes: p99 must stay stable (ratio printed) and the largest
worker RSS must stay under the recycling bound plus one call's growth (SLACK_MB: a 256 KiB
session value, a 256 KiB echo decoded and re-encoded, and the allocator's rounding).
Run: ``.venv/bin/python bench/bench_pool_soak.py`` (FLOWSTONE_SOAK_MINUTES, default 30).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MINUTES = float(os.environ.get("FLOWSTONE_SOAK_MINUTES", "30"))
CLIENTS = 4
MAX_RSS_MB = 150
SLACK_MB = 16
SAMPLE_EVERY_S = 1.0


def client(socket_path: str, seconds: float, seed: int, out: mp.Queue) -> None:
    """One client process: mixed calls until ``seconds`` pass; per-minute latency lists."""
    from flowstone.workers.server import PoolClient

    rng = random.Random(seed)
    started = time.monotonic()
    minutes: dict[int, list[float]] = {}
    errors = 0
    with PoolClient(socket_path) as pool:
        while (now := time.monotonic()) - started < seconds:
            kind = rng.random()
            t0 = time.perf_counter()
            try:
                if kind < 0.4:
                    pool.execute("noop")
                elif kind < 0.7:
                    payload = "x" * rng.choice((1024, 16384, 262144))
                    assert pool.execute("echo", {"value": payload}) == payload
                elif kind < 0.8:
                    pool.execute("sleep", {"seconds": 0.005})
                elif kind < 0.9:
                    assert list(pool.execute_stream("count", {"n": 20})) == list(range(20))
                else:
                    pool.execute("remember", {"key": f"{seed}-{rng.random()}", "value": "y" * 262144},
                                 session_id=f"s{seed}-{rng.randrange(4)}")  # fmt: skip
            except Exception:
                errors += 1
                continue
            minutes.setdefault(int((now - started) // 60), []).append(time.perf_counter() - t0)
    out.put({"seed": seed, "minutes": minutes, "errors": errors})


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="flowstone-soak-"))
    socket_path = str(tmp / "pool.sock")
    env = {**os.environ, "DAGSTER_HOME": str(tmp)}
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "flowstone"), "pool", "serve", "--socket", socket_path, "--bridge", "echo",
         "--workers", "2", "--max-rss-mb", str(MAX_RSS_MB), "--max-requests", "200000", "--health-interval-s", "5"],
        env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not Path(socket_path).exists():
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("pool server did not start")
            time.sleep(0.2)
        seconds = MINUTES * 60
        queue: mp.Queue = mp.get_context("spawn").Queue()
        procs = [
            mp.get_context("spawn").Process(target=client, args=(socket_path, seconds, i, queue))
            for i in range(CLIENTS)
        ]
        for p in procs:
            p.start()
        me = psutil.Process(server.pid)
        samples, seen_workers = [], set()
        begin = time.monotonic()
        results = []
        while (
            len(results) < CLIENTS
        ):  # drain the queue as we go: a child exits only once it is read
            workers = [w for w in me.children(recursive=True) if w.is_running()]
            seen_workers.update(w.pid for w in workers)
            rss = []
            for w in workers:
                try:
                    rss.append(w.memory_info().rss / 2**20)
                except psutil.Error:
                    continue
            samples.append({"t": round(time.monotonic() - begin), "server_mb": me.memory_info().rss / 2**20,
                            "worker_mb": rss, "workers": len(workers)})  # fmt: skip
            try:
                results.append(queue.get(timeout=SAMPLE_EVERY_S))
            except Exception:  # queue.Empty: nobody finished since the last sample
                if time.monotonic() - begin > seconds + 300:
                    raise SystemExit("clients did not finish") from None
        for p in procs:
            p.join(10)
    finally:  # the server and its workers go, whatever happened above
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    time.sleep(1)
    orphans = [
        pid
        for pid in seen_workers
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    per_minute: dict[int, list[float]] = {}
    for r in results:
        for minute, values in r["minutes"].items():
            per_minute.setdefault(int(minute), []).extend(values)
    print(f"{MINUTES:g} min, {CLIENTS} client processes, 2 echo workers, --max-rss-mb {MAX_RSS_MB}")
    print("minute  calls   p50 ms  p99 ms")
    p99s = []
    for minute in sorted(per_minute):
        values = sorted(per_minute[minute])
        p50, p99 = statistics.median(values) * 1000, values[int(0.99 * (len(values) - 1))] * 1000
        p99s.append(p99)
        print(f"{minute:>6} {len(values):>6} {p50:>8.3f} {p99:>7.3f}")
    worst = max(max(s["worker_mb"], default=0) for s in samples)
    first, last = samples[0]["server_mb"], samples[-1]["server_mb"]
    print(
        f"calls: {sum(len(v) for v in per_minute.values())}, errors: {sum(r['errors'] for r in results)}"
    )
    verdict = "held" if worst <= MAX_RSS_MB + SLACK_MB else "MISSED"
    print(f"largest worker RSS seen in {len(samples)} samples: {worst:.0f} MB (recycle bound {MAX_RSS_MB} MB "
          f"+ {SLACK_MB} MB for one call: {verdict}); worker pids over the run: {len(seen_workers)} "
          f"(recycling replaced {len(seen_workers) - 2})")  # fmt: skip
    print(f"server RSS first/last sample: {first:.0f}/{last:.0f} MB")
    tail = p99s[-3:] if len(p99s) > 3 else p99s
    print(f"p99 first minute {p99s[0]:.3f} ms, last minutes median {statistics.median(tail):.3f} ms, "
          f"ratio {statistics.median(tail) / p99s[0]:.2f}x")  # fmt: skip
    print(f"orphan processes after stop: {len(orphans)} {orphans or ''}")
    (tmp / "samples.json").write_text(json.dumps(samples))


if __name__ == "__main__":
    main()
