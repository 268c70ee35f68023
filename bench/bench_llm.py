"""LLM layer benchmark against the local stub provider (OpenAI wire format, real SDK, HTTP).

1. Rate-limited throughput: the stub answers in 200 ms and enforces 120 requests/min (429
   beyond it). 150 requests from 8 threads through the client limiter: throughput as a share
   of the limit (target >= 95%) and 429s reaching the caller (target 0). Peer: the same
   load without the client limiter (server pushes back, retries absorb it).
2. A 50-case suite completed in parallel (8 in flight) against sequentially: the ratio.
3. A rerun of the same suite through the response cache: provider calls (target 0) and
   the wall-time ratio against the first run.

Run: .venv/bin/python bench/bench_llm.py   (about two minutes)
"""

from __future__ import annotations

import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The stub provider is a test helper (tests/support, not shipped): put tests/ on sys.path the
# way tests/conftest.py does, so it imports as ``support.llm_stub_server``.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.llm_stub_server import StubLLMServer  # noqa: E402

from flowstone.llm.client import LLMClient  # noqa: E402
from flowstone.llm.config import ClientConfig, ProviderConfig  # noqa: E402
from flowstone.llm.ratelimit import RateLimits, reset_limiters  # noqa: E402
from flowstone.llm.retry import RetryPolicy  # noqa: E402

LIMIT_PER_MIN = 120
THROUGHPUT_REQUESTS = 150
PEER_REQUESTS = 30
SUITE_SIZE = 50
LATENCY_S = 0.2


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


def main() -> None:
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


if __name__ == "__main__":
    main()
