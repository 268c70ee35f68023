"""Step-like processes that call the stub provider, for the shared-state tests and the bench.

Why a module of its own: ``multiprocessing`` with the spawn start method (a fresh interpreter,
as a Celery or multiprocess-executor step is) imports the target by module name, so it must
live in an importable module, not in a test file. Each process sets its own
``FLOWSTONE_LLM_STATE``, builds an ``LLMClient`` on the stub, imports the SDK, says it is
ready, waits for the common start signal and then sends its requests from a few threads; it
reports what reached the caller: answers, errors by kind, and the wall-clock end of each call.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

STATE_ENV = "FLOWSTONE_LLM_STATE"


@dataclass(frozen=True)
class Load:
    """What one process sends, and how its client is configured."""

    base_url: str
    requests: int
    state_url: str | None = None
    requests_per_minute: float | None = None
    threads: int = 4
    max_attempts: int = 1  # 1: a 429 from the server reaches the caller as an error
    failure_threshold: int = 5
    recovery_timeout_s: float = 30.0
    tag: str = "load"
    api_key: str = "sk-shared-state-000000000"
    extra_env: dict[str, str] = field(default_factory=dict)


def build_client(load: Load):
    """The client a step would build: one OpenAI-compatible provider on the stub."""
    from flowstone.llm.breaker import BreakerConfig
    from flowstone.llm.client import LLMClient
    from flowstone.llm.config import ClientConfig, ProviderConfig
    from flowstone.llm.ratelimit import RateLimits
    from flowstone.llm.retry import RetryPolicy

    provider = ProviderConfig(
        "openai",
        "openai",
        "gpt-4o-mini",
        base_url=load.base_url,
        api_key=load.api_key,
        timeout_s=10.0,
        limits=RateLimits(requests_per_minute=load.requests_per_minute),
    )
    config = ClientConfig(
        retry=RetryPolicy(max_attempts=load.max_attempts, initial_backoff_s=0.1, max_backoff_s=2.0),
        breaker=BreakerConfig(
            failure_threshold=load.failure_threshold, recovery_timeout_s=load.recovery_timeout_s
        ),
        cache_enabled=False,
        max_concurrency=load.threads,
    )
    return LLMClient([provider], config)


def error_kind(exc: BaseException) -> str:
    """``status:429`` for a provider status that reached the caller, ``refused`` for an open
    breaker, else the exception's type."""
    from flowstone.llm.errors import (
        CircuitOpenError,
        NoProviderAvailableError,
        ProviderCallError,
        RetryExhaustedError,
    )

    if isinstance(exc, RetryExhaustedError):
        return f"status:{exc.last_status}"
    if isinstance(exc, ProviderCallError):
        return f"status:{exc.status}"
    if isinstance(exc, CircuitOpenError):
        return "refused"
    if isinstance(exc, NoProviderAvailableError):
        return "refused" if "circuit" in str(exc) or "breaker" in str(exc) else "unavailable"
    return type(exc).__name__


def run(load: Load, ready: Any, go: Any, results: Any) -> None:
    """The body of one process (see the module's docstring)."""
    if load.state_url is None:
        os.environ.pop(STATE_ENV, None)
    else:
        os.environ[STATE_ENV] = load.state_url
    os.environ.update(load.extra_env)
    client = build_client(load)
    for provider in client.providers:
        provider.prepare()  # import the SDK before the start, not inside the measured window
    ready.put(os.getpid())
    if not go.wait(120):
        results.put({"pid": os.getpid(), "ok": 0, "errors": ["never started"], "ends": []})
        return
    ends: list[float] = []
    errors: list[str] = []

    def one(i: int) -> None:
        try:
            client.complete(f"{load.tag} {os.getpid()} request {i}", use_cache=False)
        except Exception as exc:
            errors.append(error_kind(exc))
        else:
            ends.append(time.time())

    with ThreadPoolExecutor(load.threads) as pool:
        list(pool.map(one, range(load.requests)))
    results.put({"pid": os.getpid(), "ok": len(ends), "errors": errors, "ends": ends})


@dataclass
class Outcome:
    """What every process reported, with the common start time."""

    started: float
    reports: list[dict]

    @property
    def ok(self) -> int:
        return sum(r["ok"] for r in self.reports)

    @property
    def errors(self) -> list[str]:
        return [e for r in self.reports for e in r["errors"]]

    @property
    def elapsed(self) -> float:
        ends = [t for r in self.reports for t in r["ends"]]
        return (max(ends) - self.started) if ends else 0.0

    @property
    def per_minute(self) -> float:
        """Answered requests per minute, from the start signal to the last answer."""
        return self.ok / self.elapsed * 60 if self.elapsed else 0.0


def run_processes(loads: list[Load], timeout_s: float = 180.0) -> Outcome:
    """Start one spawned process per load, release them together, collect their reports.
    Bounded: processes still alive after ``timeout_s`` are terminated and the call raises."""
    ctx = multiprocessing.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=run, args=(load, ready, go, results)) for load in loads]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            ready.get(timeout=timeout_s)
        started = time.time()
        go.set()
        reports = [results.get(timeout=timeout_s) for _ in procs]
        for proc in procs:
            proc.join(30)
        return Outcome(started, reports)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(10)
