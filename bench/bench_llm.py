"""LLM layer benchmark against the local stub provider (OpenAI wire format, real SDK, HTTP).

1. Rate-limited throughput: the stub answers in 200 ms and enforces 120 requests/min (429
   beyond it). 150 requests from 8 threads through the client limiter: throughput as a share
   of the limit (target >= 95%) and 429s reaching the caller (target 0). Peer: the same
   load without the client limiter (server pushes back, retries absorb it).
2. A 50-case suite completed in parallel (8 in flight) against sequentially: the ratio.
3. A rerun of the same suite through the response cache: provider calls (target 0) and
   the wall-time ratio against the first run.
4. Four processes sharing one 120/min limit through FLOWSTONE_LLM_STATE (Redis), against the
   same stub enforcing 120/min server-side: aggregate rate as a share of the limit (target
   >= 95%) and 429s reaching a caller (target 0). Peer, in the same run: per-process limiters
   (each process believes it has the whole 120/min, as without FLOWSTONE_LLM_STATE). The two
   are interleaved and repeated. Redis: $FLOWSTONE_LLM_STATE when set, else the machine's on
   127.0.0.1:6379, else a redis-server started for the run; keys under a fresh prefix.

Run: .venv/bin/python bench/bench_llm.py                (about four minutes)
     .venv/bin/python bench/bench_llm.py --shared-only  (section 4 only, about two minutes)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The stub provider is a test helper (tests/support, not shipped): put tests/ on sys.path the
# way tests/conftest.py does, so it imports as ``support.llm_stub_server``.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.llm_processes import Load, run_processes  # noqa: E402
from support.llm_stub_server import StubLLMServer  # noqa: E402
from support.redis_server import redis_server  # noqa: E402

from flowstone.llm.client import LLMClient  # noqa: E402
from flowstone.llm.config import ClientConfig, ProviderConfig  # noqa: E402
from flowstone.llm.ratelimit import RateLimits, reset_limiters  # noqa: E402
from flowstone.llm.retry import RetryPolicy  # noqa: E402
from flowstone.llm.state import ENV as STATE_ENV  # noqa: E402
from flowstone.llm.state import RedisState, parse_state_url  # noqa: E402

LIMIT_PER_MIN = 120
THROUGHPUT_REQUESTS = 150
PEER_REQUESTS = 30
SUITE_SIZE = 50
LATENCY_S = 0.2
SHARED_PROCESSES = 4
SHARED_REQUESTS_PER_PROCESS = 15  # 60 requests: ~30 s at 120/min
SHARED_ROUNDS = 2


def client_for(
    stub: StubLLMServer, *, limited: bool, cache_path: Path | None = None, concurrency: int = 8
) -> LLMClient:
    limits = RateLimits(requests_per_minute=LIMIT_PER_MIN) if limited else RateLimits()
    provider = ProviderConfig(
        "openai",
        "openai",
        "gpt-4o-mini",
        base_url=stub.openai_url,
        api_key="sk-bench-000000000",
        limits=limits,
    )
    config = ClientConfig(
        retry=RetryPolicy(max_attempts=10, initial_backoff_s=0.1, max_backoff_s=2.0),
        cache_enabled=cache_path is not None,
        cache_path=str(cache_path) if cache_path else None,
        max_concurrency=concurrency,
    )
    return LLMClient([provider], config)


def run_load(client: LLMClient, n: int, tag: str) -> tuple[float, int]:
    errors = 0

    def one(i: int) -> None:
        nonlocal errors
        try:
            client.complete(f"{tag} request {i}", use_cache=False)
        except Exception:
            errors += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))
    return time.perf_counter() - start, errors


def machine() -> str:
    """The CPU and the load average, printed beside figures that depend on them."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    one, five, _ = os.getloadavg()
    return f"{os.cpu_count()} x {model}; load average {one:.2f} (1 min) {five:.2f} (5 min)"


def shared_round(stub: StubLLMServer, state_url: str | None) -> tuple[float, int, int, int]:
    """One run of four processes: (rate as a share of the limit, 429s sent by the server,
    429s reaching a caller, other errors reaching a caller)."""
    stub.reset()
    stub.state.requests_per_minute = LIMIT_PER_MIN
    loads = [
        Load(
            stub.openai_url,
            requests=SHARED_REQUESTS_PER_PROCESS,
            state_url=state_url,
            requests_per_minute=LIMIT_PER_MIN,
            threads=4,
            max_attempts=10,
            tag=f"bench {i} {uuid.uuid4().hex[:6]}",
        )
        for i in range(SHARED_PROCESSES)
    ]
    outcome = run_processes(loads, timeout_s=300)
    caller_429 = sum(1 for e in outcome.errors if e == "status:429")
    return (
        outcome.per_minute / LIMIT_PER_MIN,
        stub.state.counts[429],
        caller_429,
        len(outcome.errors) - caller_429,
    )


def shared_section(stub: StubLLMServer) -> None:
    """Section 4: shared limit across processes vs per-process limiters, interleaved."""
    configured = os.environ.get(STATE_ENV)
    with redis_server() as local_url:
        base = configured or local_url
        url = f"{base.split('?')[0]}?prefix=flowstone-bench:{uuid.uuid4().hex[:8]}"
        store = RedisState(parse_state_url(url))
        print(f"[shared] machine: {machine()}")
        print(f"[shared] store: {store.config.display} (Redis {store.server_version()})")
        rows: dict[str, list[tuple[float, int, int, int]]] = {"shared": [], "per-process": []}
        try:
            for round_no in range(SHARED_ROUNDS):
                for label, state_url in (("shared", url), ("per-process", None)):
                    store.clear()
                    row = shared_round(stub, state_url)
                    rows[label].append(row)
                    print(
                        f"[shared] round {round_no + 1} {label:>11}: {SHARED_PROCESSES} processes "
                        f"x {SHARED_REQUESTS_PER_PROCESS} requests at {row[0]:.1%} of the "
                        f"{LIMIT_PER_MIN}/min limit; 429s sent by the server {row[1]}, reaching "
                        f"a caller {row[2]}, other errors reaching a caller {row[3]}"
                    )
        finally:
            store.clear()
            store.close()
        for label, runs in rows.items():
            rates = ", ".join(f"{r[0]:.1%}" for r in runs)
            print(
                f"[shared] {label:>11}: rate {rates} of the limit (target >= 95% shared); server "
                f"429s {sum(r[1] for r in runs)}, 429s reaching a caller {sum(r[2] for r in runs)} "
                f"(target 0 shared), other errors {sum(r[3] for r in runs)}"
            )
        print(f"[shared] machine after: {machine()}")


def main() -> None:
    if "--shared-only" in sys.argv[1:]:
        with StubLLMServer(
            latency_s=LATENCY_S, requests_per_minute=LIMIT_PER_MIN, rate_burst=2
        ) as stub:
            shared_section(stub)
        return
    with StubLLMServer(
        latency_s=LATENCY_S, requests_per_minute=LIMIT_PER_MIN, rate_burst=2
    ) as stub:
        # 1. throughput at the limit
        reset_limiters()
        elapsed, errors = run_load(client_for(stub, limited=True), THROUGHPUT_REQUESTS, "limited")
        per_min = THROUGHPUT_REQUESTS / elapsed * 60
        server_429 = stub.state.counts[429]
        print(
            f"[throughput] {THROUGHPUT_REQUESTS} requests in {elapsed:.1f}s = {per_min:.1f}/min "
            f"= {per_min / LIMIT_PER_MIN:.1%} of the {LIMIT_PER_MIN}/min limit (target >= 95%)"
        )
        print(
            f"[throughput] 429s sent by the server: {server_429}; errors reaching the caller: {errors} (target 0)"
        )
        stub.reset()
        elapsed_peer, errors_peer = run_load(
            client_for(stub, limited=False), PEER_REQUESTS, "unlimited"
        )
        print(
            f"[peer: no client limiter] {PEER_REQUESTS} requests in {elapsed_peer:.1f}s = "
            f"{PEER_REQUESTS / elapsed_peer * 60:.1f}/min; 429s from the server: {stub.state.counts[429]}; "
            f"errors reaching the caller: {errors_peer}"
        )

        # 2 and 3: suite parallel vs sequential, then cached rerun (no server rate limit here)
        stub.reset()
        stub.state.requests_per_minute = None
        prompts = [f"suite case {i}: what is {i} plus {i}?" for i in range(SUITE_SIZE)]
        start = time.perf_counter()
        client_for(stub, limited=False).complete_many(prompts, use_cache=False, concurrency=1)
        sequential = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "cache.sqlite"
            start = time.perf_counter()
            client_for(stub, limited=False, cache_path=cache).complete_many(prompts, concurrency=8)
            parallel = time.perf_counter() - start
            print(
                f"[suite] {SUITE_SIZE} cases sequential {sequential:.2f}s, parallel(8) {parallel:.2f}s: "
                f"speed-up {sequential / parallel:.1f}x"
            )
            stub.reset()
            rerun_client = client_for(stub, limited=False, cache_path=cache)
            start = time.perf_counter()
            rerun_client.complete_many(prompts, concurrency=8)
            rerun = time.perf_counter() - start
            print(
                f"[cache rerun] provider calls: {stub.calls} (target 0), cache hits {rerun_client.totals.cache_hits}; "
                f"wall {rerun:.3f}s vs first run {parallel:.2f}s: {parallel / rerun:.0f}x faster "
                f"(ratio {rerun / parallel:.4f})"
            )

        # 4. one limit shared by four processes, against per-process limiters
        stub.state.latency_s = LATENCY_S
        stub.state.rate_burst = 2
        shared_section(stub)


if __name__ == "__main__":
    main()
