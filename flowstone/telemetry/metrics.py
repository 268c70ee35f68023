"""Prometheus metrics of the worker pool, the LLM client and the notification outbox.

Why one module: every metric FlowStone exposes is defined here, in one registry per process,
with names prefixed ``flowstone_``, so an operator reads one file to learn what to scrape and
the instrumented code only calls small hooks (``pool_call``, ``llm_call``, ``outbox_sent``...).

Rules the hooks keep:

- cheap: labelled children are cached in a dict, so an update is a dict lookup plus
  prometheus_client's own locked increment (about a microsecond);
- never raise: a failing hook logs one warning (with the traceback) and the call it watched
  goes on; telemetry must not fail a run;
- lazy: prometheus_client is imported on the first update, not when the code location loads;
- bounded labels: label values come from configuration (bridge, command, provider, model,
  channel) or from small fixed vocabularies (outcome, reason, error kind), never from input.

Gauges of live state (workers by state, queue depth, breaker state) are read at scrape time
from the objects themselves, so they need no hook and cannot drift. The outbox's pending rows
are read from its database by :class:`OutboxCollector` through the outbox's public backlog
read, which the standalone exporter (``flowstone metrics serve``) adds because those rows
outlive any one process.

Processes: the registry holds what this process did. Long-lived processes (``flowstone pool
serve``) expose it directly. For short-lived ones (Dagster step processes), set
``PROMETHEUS_MULTIPROC_DIR`` to a shared empty folder in every process: prometheus_client then
writes counters and histograms there, and ``flowstone metrics serve`` sums them over processes.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any, Protocol, TypeVar

log = logging.getLogger("flowstone.telemetry")

F = TypeVar("F", bound=Callable[..., Any])

POOL_CALL_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
LLM_CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
BREAKER_STATES = ("closed", "open", "half_open")
_BREAKER_SEVERITY = {"closed": 0, "half_open": 1, "open": 2}
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class _Family:
    """A labelled metric with its children cached by label tuple (skips ``labels()``'s checks)."""

    __slots__ = ("metric", "children")

    def __init__(self, metric: Any):
        self.metric = metric
        self.children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        child = self.children.get(labels)
        if child is None:
            child = self.metric.labels(*labels) if labels else self.metric
            self.children[labels] = child
        return child


class _Metrics:
    """Every metric FlowStone updates from its code paths, in one registry."""

    def __init__(self) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Histogram,
            PlatformCollector,
            ProcessCollector,
        )

        self.registry = registry = CollectorRegistry()

        def counter(name: str, doc: str, labels: list[str]) -> _Family:
            return _Family(Counter(name, doc, labels, registry=registry))

        def histogram(name: str, doc: str, labels: list[str], buckets: tuple) -> _Family:
            return _Family(Histogram(name, doc, labels, buckets=buckets, registry=registry))

        # Worker pool (flowstone.workers.pool)
        self.pool_call_seconds = histogram(
            "flowstone_pool_call_seconds",
            "Duration of worker pool calls, queue wait and retries included.",
            ["bridge", "command"],
            POOL_CALL_BUCKETS,
        )
        self.pool_calls = counter(
            "flowstone_pool_calls",
            "Worker pool calls by outcome (ok, error, timeout, crash, out_of_memory, saturated, "
            "closed, session_lost, unknown_command, cancelled).",
            ["bridge", "command", "outcome"],
        )
        self.pool_replacements = counter(
            "flowstone_pool_worker_replacements",
            "Workers killed or lost and replaced, by reason (timeout, crash, out_of_memory, "
            "unhealthy, interrupted, abandoned_stream).",
            ["bridge", "reason"],
        )
        self.pool_recycles = counter(
            "flowstone_pool_worker_recycles",
            "Healthy workers retired and replaced, by reason (max_requests, max_age, max_rss).",
            ["bridge", "reason"],
        )
        self.pool_workers_started = counter(
            "flowstone_pool_workers_started", "Worker processes spawned.", ["bridge"]
        )
        self.pool_start_failures = counter(
            "flowstone_pool_worker_start_failures",
            "Workers that died or timed out before reporting ready.",
            ["bridge"],
        )
        # LLM client (flowstone.llm.client, flowstone.llm.breaker)
        self.llm_calls = counter(
            "flowstone_llm_calls",
            "Provider calls (retries included in one call) by outcome: ok, failed, circuit_open.",
            ["provider", "model", "outcome"],
        )
        self.llm_call_seconds = histogram(
            "flowstone_llm_call_seconds",
            "Duration of successful provider calls as the provider reported it.",
            ["provider", "model"],
            LLM_CALL_BUCKETS,
        )
        self.llm_tokens = counter(
            "flowstone_llm_tokens",
            "Tokens billed by providers (cache hits excluded), by direction: input, output.",
            ["provider", "model", "direction"],
        )
        self.llm_cost = counter(
            "flowstone_llm_cost_usd",
            "Cost of provider calls in US dollars, for models with a known price.",
            ["provider", "model"],
        )
        self.llm_errors = counter(
            "flowstone_llm_errors",
            "Failed provider attempts by kind (rate_limited, overloaded, server_error, auth, "
            "client_error, not_found, timeout, connection, malformed) and calls refused before "
            "any attempt (circuit_open, missing_secret).",
            ["provider", "kind"],
        )
        self.llm_cache_hits = counter(
            "flowstone_llm_cache_hits",
            "Completions served from the response cache.",
            ["provider", "model"],
        )
        self.llm_cache_misses = counter(
            "flowstone_llm_cache_misses", "Response cache lookups that found nothing.", []
        )
        self.llm_breaker_transitions = counter(
            "flowstone_llm_breaker_transitions",
            "Circuit breaker state changes, by the state entered.",
            ["provider", "state"],
        )
        # Notification outbox (flowstone.notifications.outbox)
        self.outbox_enqueued = counter(
            "flowstone_outbox_enqueued", "Notification rows written to the outbox.", ["channel"]
        )
        self.outbox_suppressed = counter(
            "flowstone_outbox_suppressed",
            "Notifications not written because the same fact was sent within the window.",
            ["channel"],
        )
        self.outbox_sent = counter(
            "flowstone_outbox_sent", "Notifications delivered by a channel.", ["channel"]
        )
        self.outbox_failed = counter(
            "flowstone_outbox_failed",
            "Delivery attempts that failed (the row waits and is tried again).",
            ["channel"],
        )
        self.outbox_retries = counter(
            "flowstone_outbox_retries",
            "Delivery attempts of rows that had been tried before.",
            ["channel"],
        )
        registry.register(LiveStateCollector())
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)


_lock = threading.Lock()
_metrics: _Metrics | None = None
_enabled = os.environ.get("FLOWSTONE_METRICS", "1").strip().lower() not in ("0", "false", "off")
_warned: set[str] = set()


def _get() -> _Metrics:
    global _metrics, _enabled
    if _metrics is None:
        with _lock:
            if _metrics is None:
                try:
                    _metrics = _Metrics()
                except Exception:
                    # e.g. PROMETHEUS_MULTIPROC_DIR names a missing folder: say so once and
                    # stop trying on every call; the raise reaches serve_metrics' caller
                    _enabled = False
                    log.warning("Prometheus metrics are off in this process", exc_info=True)
                    raise
    return _metrics


def registry() -> Any:
    """The process registry (a ``prometheus_client.CollectorRegistry``), created on first use."""
    return _get().registry


def set_enabled(enabled: bool) -> None:
    """Turn the hooks on or off for this process (``FLOWSTONE_METRICS=0`` starts it off)."""
    global _enabled
    _enabled = bool(enabled)


def _hook(fn: F) -> F:
    """Run ``fn`` only while metrics are on; log its first failure instead of raising it."""
    name = fn.__name__

    @functools.wraps(fn)
    def safe(*args: Any, **kwargs: Any) -> None:
        if not _enabled:
            return
        try:
            fn(*args, **kwargs)
        except Exception:
            if _enabled and name not in _warned:  # (off: _get has said why, once)
                _warned.add(name)
                log.warning(
                    "metrics hook %s failed; the call it watched is unaffected and later "
                    "failures of this hook are not logged",
                    name,
                    exc_info=True,
                )

    return safe  # type: ignore[return-value]


# -- worker pool hooks ---------------------------------------------------------------------------


@_hook
def pool_call(bridge: str, command: str, seconds: float, outcome: str) -> None:
    m = _get()
    m.pool_call_seconds(bridge, command).observe(seconds)
    m.pool_calls(bridge, command, outcome).inc()


@_hook
def pool_replacement(bridge: str, reason: str) -> None:
    _get().pool_replacements(bridge, reason.replace(" ", "_")).inc()


@_hook
def pool_recycle(bridge: str, reason: str) -> None:
    _get().pool_recycles(bridge, reason).inc()


@_hook
def pool_worker_started(bridge: str) -> None:
    _get().pool_workers_started(bridge).inc()


@_hook
def pool_start_failure(bridge: str) -> None:
    _get().pool_start_failures(bridge).inc()


# -- LLM hooks -----------------------------------------------------------------------------------


def llm_error_kind(status: int | str) -> str:
    """A small fixed vocabulary for a ``ProviderCallError.status`` (an HTTP status or a word)."""
    if isinstance(status, str):
        return status if status in ("timeout", "connection", "malformed") else "other"
    if status == 429:
        return "rate_limited"
    if status == 529:
        return "overloaded"
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not_found"
    if status == 408:
        return "timeout"
    if 500 <= status <= 599:
        return "server_error"
    if 400 <= status <= 499:
        return "client_error"
    return "other"


@_hook
def llm_call(
    provider: str,
    model: str,
    outcome: str,
    *,
    seconds: float | None = None,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cost_usd: float | None = None,
) -> None:
    m = _get()
    m.llm_calls(provider, model, outcome).inc()
    if seconds is not None:
        m.llm_call_seconds(provider, model).observe(seconds)
    if input_tokens:
        m.llm_tokens(provider, model, "input").inc(input_tokens)
    if output_tokens:
        m.llm_tokens(provider, model, "output").inc(output_tokens)
    if cost_usd:
        m.llm_cost(provider, model).inc(cost_usd)


@_hook
def llm_error(provider: str, kind: str) -> None:
    _get().llm_errors(provider, kind).inc()


@_hook
def llm_cache_lookup(hit_provider: str | None, model: str | None = None) -> None:
    m = _get()
    if hit_provider is None:
        m.llm_cache_misses().inc()
    else:
        m.llm_cache_hits(hit_provider, model or "").inc()


@_hook
def llm_breaker_transition(provider: str, state: str) -> None:
    _get().llm_breaker_transitions(provider, state).inc()


# -- outbox hooks --------------------------------------------------------------------------------


@_hook
def outbox_enqueued(channel: str, suppressed: bool = False) -> None:
    m = _get()
    (m.outbox_suppressed if suppressed else m.outbox_enqueued)(channel).inc()


@_hook
def outbox_delivery(channel: str, ok: bool, retry: bool) -> None:
    m = _get()
    if retry:
        m.outbox_retries(channel).inc()
    (m.outbox_sent if ok else m.outbox_failed)(channel).inc()


# -- scrape-time collectors ----------------------------------------------------------------------


def _gauge(name: str, doc: str, labels: list[str]) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(name, doc, labels=labels)


class LiveStateCollector:
    """Worker pool and breaker state read from the live objects of this process at scrape time.

    Looks modules up in ``sys.modules`` rather than importing them: a process that never built
    a pool or an LLM client has nothing to report and pays nothing.
    """

    def describe(self) -> list:
        return []  # names vary with what is alive; skip the registry's duplicate check

    def collect(self) -> Iterator[Any]:
        yield from self._pools()
        yield from self._breakers()

    def _pools(self) -> Iterator[Any]:
        pool_module = sys.modules.get("flowstone.workers.pool")
        if pool_module is None:
            return
        workers = _gauge(
            "flowstone_pool_workers",
            "Worker processes by state: idle, busy, starting, pending (waiting to be spawned).",
            ["bridge", "state"],
        )
        size = _gauge("flowstone_pool_size", "Configured worker count.", ["bridge"])
        queue = _gauge("flowstone_pool_queue_depth", "Calls waiting for a free worker.", ["bridge"])
        sessions = _gauge("flowstone_pool_sessions", "Sessions bound to a worker.", ["bridge"])
        totals: dict[str, dict[str, float]] = {}
        try:
            for pool in pool_module.live_pools():
                stats = pool.stats()
                row = totals.setdefault(stats["bridge"], {})
                for key in (
                    "workers_idle",
                    "workers_busy",
                    "workers_starting",
                    "workers_pending",
                    "size",
                    "queue_depth",
                    "sessions",
                ):
                    row[key] = row.get(key, 0) + stats[key]
        except Exception:
            log.warning("cannot read worker pool state for /metrics", exc_info=True)
            return
        for bridge, row in sorted(totals.items()):
            for state in ("idle", "busy", "starting", "pending"):
                workers.add_metric([bridge, state], row[f"workers_{state}"])
            size.add_metric([bridge], row["size"])
            queue.add_metric([bridge], row["queue_depth"])
            sessions.add_metric([bridge], row["sessions"])
        yield from (workers, size, queue, sessions)

    def _breakers(self) -> Iterator[Any]:
        breaker_module = sys.modules.get("flowstone.llm.breaker")
        if breaker_module is None:
            return
        gauge = _gauge(
            "flowstone_llm_breaker_state",
            "1 for the state each provider's circuit breaker is in (closed, open, half_open).",
            ["provider", "state"],
        )
        try:
            current: dict[str, str] = {}
            for breaker in breaker_module.all_breakers().values():
                # one name on two endpoints: the label shows the worse of their states
                state, seen = str(breaker.state), current.get(breaker.provider)
                if seen is None or _BREAKER_SEVERITY[state] > _BREAKER_SEVERITY[seen]:
                    current[breaker.provider] = state
        except Exception:
            log.warning("cannot read circuit breaker state for /metrics", exc_info=True)
            return
        for provider, state in sorted(current.items()):
            for candidate in BREAKER_STATES:
                gauge.add_metric([provider, candidate], 1.0 if candidate == state else 0.0)
        yield gauge


class Backlog(Protocol):
    """One channel's undelivered rows, as the outbox reports them."""

    @property
    def pending(self) -> int: ...

    @property
    def retrying(self) -> int: ...

    @property
    def oldest_created_at(self) -> datetime | None: ...


class OutboxCollector:
    """Unsent notification rows per channel, read at scrape time through ``read``.

    The rows outlive the processes that wrote and deliver them, so only the database knows how
    many wait. The outbox owns its table and this module owns the gauges: ``read`` is the
    outbox's public backlog read bound to one database, and ``where`` names that database for
    log lines (``flowstone.notifications.outbox.backlog_gauges`` builds both). The outbox calls
    this module's hooks, so this module never imports the outbox.

    ``flowstone_outbox_up`` is 0 when the database cannot be read (the error is logged); a
    database that does not exist yet means nothing was ever queued.
    """

    def __init__(self, read: Callable[[], Mapping[str, Backlog]], where: str):
        self.read = read
        self.where = where

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Any]:
        up = _gauge("flowstone_outbox_up", "1 if the outbox database could be read.", [])
        pending = _gauge(
            "flowstone_outbox_pending",
            "Notification rows not yet delivered (pending or being sent).",
            ["channel"],
        )
        retrying = _gauge(
            "flowstone_outbox_retrying",
            "Undelivered rows that failed at least once and wait for another attempt.",
            ["channel"],
        )
        oldest = _gauge(
            "flowstone_outbox_oldest_pending_age_seconds",
            "Age of the oldest undelivered row.",
            ["channel"],
        )
        try:
            backlog = self.read()
        except Exception as exc:
            log.warning("cannot read the notification outbox at %s: %s", self.where, exc)
            up.add_metric([], 0.0)
            yield up
            return
        now = time.time()
        for channel, row in backlog.items():
            pending.add_metric([channel], row.pending)
            retrying.add_metric([channel], row.retrying)
            first = row.oldest_created_at
            age = 0.0 if first is None else max(0.0, now - first.timestamp())
            oldest.add_metric([channel], age)
        up.add_metric([], 1.0)
        yield from (up, pending, retrying, oldest)


# -- exposition ----------------------------------------------------------------------------------


class _Forward:
    """Puts the process registry inside another registry without registering anything on it."""

    def __init__(self, source: Any):
        self.source = source

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Any]:
        yield from self.source.collect()


def exporter_registry(outbox: OutboxCollector | None = None) -> Any:
    """What ``flowstone metrics serve`` exposes: this process's metrics (or, when
    ``PROMETHEUS_MULTIPROC_DIR`` is set, the sum over every process that wrote there) plus,
    when given, the outbox gauges read from its database."""
    from prometheus_client import CollectorRegistry

    combined = CollectorRegistry()
    multiproc_dir = os.environ.get(MULTIPROC_ENV)
    if multiproc_dir:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(combined, path=multiproc_dir)
        combined.register(LiveStateCollector())
    else:
        combined.register(_Forward(registry()))
    if outbox is not None:
        combined.register(outbox)
    return combined


class MetricsServer:
    """A running /metrics HTTP endpoint; ``close()`` stops it."""

    def __init__(self, host: str, port: int, httpd: Any, thread: threading.Thread):
        self.host, self.port = host, port
        self._httpd, self._thread = httpd, thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def serve_metrics(port: int = 0, host: str = "127.0.0.1", source: Any = None) -> MetricsServer:
    """Serve ``source`` (default: the process registry) on http://host:port/metrics in a daemon
    thread. Port 0 picks a free port (read it from ``.port``). Loopback by default: metrics
    name models and providers, so exposing them wider is a deliberate choice."""
    from prometheus_client import start_http_server

    try:
        httpd, thread = start_http_server(port, addr=host, registry=source or registry())
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; "
            "choose another --metrics-port (0 picks a free one)",
        ) from exc
    return MetricsServer(host, int(httpd.server_port), httpd, thread)
