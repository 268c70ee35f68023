"""What the telemetry hooks cost on the hottest paths, against the same calls with them off.

Peers, in the same run and on the same objects, alternating rounds so that machine noise hits
both sides alike:

- a no-op ``WorkerPool.execute`` round trip (2 workers): metrics on vs off
  (``metrics.set_enabled``), and spans recorded (batch processor, in-memory exporter) vs unconfigured;
- an ``LLMClient.complete`` on the local provider (no network, no cache): metrics on vs off.

Target (issue 9): with nothing configured the overhead is negligible; metric updates are cheap.
Run: ``.venv/bin/python bench/bench_telemetry.py``
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROUNDS = 10
CALLS = 2000


def per_call_us(call: Callable[[], object], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - started) / n * 1e6


def compare(label: str, call, setup_on, setup_off, n: int = CALLS) -> tuple[float, float]:
    for _ in range(300):
        call()  # warm-up (first labelled children, caches)
    on, off = [], []
    for index in range(ROUNDS):
        sides = [(setup_off, off), (setup_on, on)]
        for setup, samples in sides if index % 2 == 0 else reversed(sides):
            setup()
            samples.append(per_call_us(call, n))
    setup_off()
    median_on, median_off = statistics.median(on), statistics.median(off)
    print(
        f"{label:<52} off {median_off:8.2f} us  on {median_on:8.2f} us  "
        f"ratio {median_on / median_off:5.3f}  (+{median_on - median_off:.2f} us/call)"
    )
    return median_on, median_off


def hook_cost_us(call: Callable[[], object], n: int = 100_000) -> float:
    """Best of 5 rounds: the CPU cost of one call, least disturbed by other load."""
    for _ in range(1000):
        call()
    return min(per_call_us(call, n) for _ in range(5))


def isolated_hooks() -> None:
    """The hooks alone, without the I/O around them (robust on a busy machine)."""
    from flowstone.telemetry import metrics, tracing

    tracing.reset()

    def pool_hook() -> None:
        metrics.pool_call("echo", "noop", 0.0001, "ok")

    def span_hook() -> None:
        tracing.finish(tracing.start_span("flowstone.pool.call", {"bridge": "echo"}), "ok")

    baseline = hook_cost_us(lambda: None)
    on = hook_cost_us(pool_hook)
    metrics.set_enabled(False)
    off = hook_cost_us(pool_hook)
    metrics.set_enabled(True)
    print(f"{'metrics.pool_call (histogram + counter)':<52} {on - baseline:6.2f} us/call")
    print(f"{'metrics.pool_call with metrics off':<52} {off - baseline:6.2f} us/call")
    print(
        f"{'span start+finish, tracing unconfigured':<52} {hook_cost_us(span_hook) - baseline:6.2f} us/call"
    )


def main() -> None:
    isolated_hooks()
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from flowstone.llm.client import LLMClient
    from flowstone.llm.config import ClientConfig, ProviderConfig
    from flowstone.telemetry import metrics, tracing
    from flowstone.workers.pool import WorkerPool

    registry_dir = Path(tempfile.mkdtemp(prefix="fs-bench-tel-"))
    tracing.reset()
    with WorkerPool(
        bridge="echo", size=2, registry_dir=registry_dir, health_interval_s=None
    ) as pool:

        def noop() -> None:
            pool.execute("echo:noop")

        compare(
            "pool no-op call: metrics on vs off",
            noop,
            lambda: metrics.set_enabled(True),
            lambda: metrics.set_enabled(False),
        )
        exporter = InMemorySpanExporter()

        def spans_on() -> None:
            tracing.configure(exporter)  # batch processor, as production uses
            exporter.clear()

        def spans_off() -> None:
            tracing.reset()
            tracing.configure(tracer_provider=None)  # decide from the (empty) environment

        metrics.set_enabled(True)
        compare("pool no-op call: spans recorded vs unconfigured", noop, spans_on, spans_off)
        tracing.reset()
    client = LLMClient(
        [ProviderConfig(name="local", kind="local", model="local-baseline")],
        ClientConfig(cache_enabled=False),
    )

    def complete() -> None:
        client.complete("what is the capital of France?")

    compare(
        "LLM complete (local provider): metrics on vs off",
        complete,
        lambda: metrics.set_enabled(True),
        lambda: metrics.set_enabled(False),
        n=500,
    )
    metrics.set_enabled(True)


if __name__ == "__main__":
    main()
