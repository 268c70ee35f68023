"""No-op round trip and throughput of the worker pool against multiprocessing, plus 8-worker start-up.

Peers, in the same run: ``multiprocessing.Pool.apply`` (latency), ``ProcessPoolExecutor.submit``
(latency and throughput, all futures submitted up front) and ``multiprocessing.Pool(8)`` with the
spawn start method (start-up, since our workers are fresh interpreters too).

Targets (issue 3): p50 no worse than Pool.apply; throughput at least ProcessPoolExecutor's.
Run: ``.venv/bin/python bench/bench_worker_pool.py``
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LATENCY_CALLS = 3000
THROUGHPUT_CALLS = 20000
WORKERS = 2


def noop() -> None:
    return None


def pid_after(delay: float) -> int:
    time.sleep(delay)
    return os.getpid()


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2] * 1e6, ordered[int(len(ordered) * 0.99)] * 1e6


def timed_calls(call, n: int) -> list[float]:
    for _ in range(200):
        call()  # warm-up
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    from flowstone.workers.pool import WorkerPool
    from flowstone.workers.server import PoolClient, PoolServer

    registry = Path(tempfile.mkdtemp(prefix="fs-bench-"))
    rows: dict[str, dict[str, float]] = {}

    with WorkerPool(
        bridge="echo", size=WORKERS, registry_dir=registry, health_interval_s=None
    ) as pool:
        p50, p99 = percentiles(timed_calls(lambda: pool.execute("echo:noop"), LATENCY_CALLS))
        pool.map("echo:noop", [None] * 1000)
        started = time.perf_counter()
        pool.map("echo:noop", [None] * THROUGHPUT_CALLS)
        rows["flowstone WorkerPool"] = {
            "p50": p50,
            "p99": p99,
            "tput": THROUGHPUT_CALLS / (time.perf_counter() - started),
        }

        sock = registry / "b.sock"
        with PoolServer(pool, sock), PoolClient(sock) as client:
            p50, p99 = percentiles(timed_calls(lambda: client.execute("echo:noop"), LATENCY_CALLS))
            started = time.perf_counter()
            client.map("echo:noop", [None] * (THROUGHPUT_CALLS // 4), concurrency=WORKERS)
            tput = THROUGHPUT_CALLS // 4 / (time.perf_counter() - started)
            rows["flowstone PoolClient (socket, same process)"] = {
                "p50": p50,
                "p99": p99,
                "tput": tput,
            }

    with mp.Pool(WORKERS) as mp_pool:
        p50, p99 = percentiles(timed_calls(lambda: mp_pool.apply(noop), LATENCY_CALLS))
        started = time.perf_counter()
        for result in [mp_pool.apply_async(noop) for _ in range(THROUGHPUT_CALLS)]:
            result.get()
        rows["multiprocessing.Pool.apply"] = {
            "p50": p50,
            "p99": p99,
            "tput": THROUGHPUT_CALLS / (time.perf_counter() - started),
        }

    with ProcessPoolExecutor(WORKERS) as executor:
        p50, p99 = percentiles(timed_calls(lambda: executor.submit(noop).result(), LATENCY_CALLS))
        started = time.perf_counter()
        for future in [executor.submit(noop) for _ in range(THROUGHPUT_CALLS)]:
            future.result()
        rows["ProcessPoolExecutor.submit"] = {
            "p50": p50,
            "p99": p99,
            "tput": THROUGHPUT_CALLS / (time.perf_counter() - started),
        }

    print(
        f"No-op round trip, {WORKERS} workers, {LATENCY_CALLS} sequential calls; throughput over {THROUGHPUT_CALLS} calls"
    )
    print(f"{'':46} {'p50 us':>9} {'p99 us':>9} {'calls/s':>10}")
    for name, row in rows.items():
        print(f"{name:46} {row['p50']:9.1f} {row['p99']:9.1f} {row['tput']:10.0f}")
    ours = rows["flowstone WorkerPool"]
    print(
        f"p50 ratio  Pool.apply / WorkerPool          = {rows['multiprocessing.Pool.apply']['p50'] / ours['p50']:.2f}x (target >= 1)"
    )
    print(
        f"p50 ratio  PPE.submit / WorkerPool          = {rows['ProcessPoolExecutor.submit']['p50'] / ours['p50']:.2f}x"
    )
    print(
        f"throughput WorkerPool / PPE.submit          = {ours['tput'] / rows['ProcessPoolExecutor.submit']['tput']:.2f}x (target >= 1)"
    )

    # Start-up of 8 workers -----------------------------------------------------------------
    starts = []
    for _ in range(3):
        started = time.perf_counter()
        with WorkerPool(bridge="echo", size=8, registry_dir=registry, health_interval_s=None):
            starts.append(time.perf_counter() - started)
    ours_start = statistics.median(starts)
    peer = []
    for _ in range(3):
        started = time.perf_counter()
        with mp.get_context("spawn").Pool(8) as spawn_pool:
            pids = set(spawn_pool.map(pid_after, [0.05] * 8, chunksize=1))
            peer.append(time.perf_counter() - started - 0.05)
    peer_start = statistics.median(peer)
    print(
        f"8-worker start-up (median of 3): WorkerPool {ours_start:.3f}s (all ready); "
        f"mp.Pool(8, spawn) {peer_start:.3f}s (first task done on {len(pids)} distinct workers); "
        f"ratio {peer_start / ours_start:.2f}x"
    )


if __name__ == "__main__":
    main()
