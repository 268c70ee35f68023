"""The worker pool: N warm worker processes behind ``execute`` and ``execute_stream``.

Concurrency model (threads, no asyncio): a caller's own thread does the I/O of its call on the
worker it acquired (write the request, read the reply with a deadline). That keeps a no-op round
trip to two pipe writes and two reads with no hand-off between threads. Three pool threads do the
rest:

- the *supervisor* spawns every worker, waits for ready frames and restores the pool's size.
  Spawning from one long-lived thread matters: Linux sends the parent-death signal when the
  *thread* that forked a child exits, so a worker started from a short-lived caller thread would
  die with it;
- the *health* thread pings idle workers on an interval, samples resident memory, recycles old or
  fat workers and expires sessions;
- retiring workers are stopped by short-lived threads so that a slow exit blocks nobody.

Waiting callers queue FIFO (each with its own Event, so a release wakes exactly one) up to
``queue_size``; past that a call fails at once with PoolSaturatedError.

``overflow`` (as SQLAlchemy's ``max_overflow``) absorbs a burst without keeping more warm workers
forever: a call that has to queue also asks the supervisor for one extra worker, up to
``overflow`` of them beyond ``size``. An overflow worker serves the queue like any other, is never
replaced when it dies or is recycled, and the health pass retires it once it has been idle for
``overflow_idle_s``. A session bound to one is lost with it, as with a recycled worker.

A worker is checked alive (one ``waitid``) before it is handed a call: one that died while idle
is replaced and the call goes to another. A request that provably never reached a worker (the
pipe was closed, or the worker died with all of it unread) is sent again whatever its
idempotency; only a request the worker may have read obeys ``idempotent`` and ``max_retries``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import threading
import time
import weakref
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from flowstone.telemetry import metrics, tracing
from flowstone.workers.bridge import BridgeInfo, validate_bridge
from flowstone.workers.errors import (
    PoolClosedError,
    PoolError,
    PoolSaturatedError,
    ProtocolError,
    RemoteError,
    SessionLostError,
    UnknownCommandError,
    WorkerCrashedError,
    WorkerOutOfMemoryError,
    WorkerStartError,
    WorkerTimeoutError,
    error_from_wire,
)
from flowstone.workers.process import ExitInfo, WorkerProcess, classify_exit
from flowstone.workers.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    FrameTimeout,
    StreamClosed,
    get_codec,
)
from flowstone.workers.registry import PidRegistry, reap_orphans
from flowstone.workers.sessions import SESSION_MODES, SessionTable
from flowstone.workers.stats import PoolStats

_DEFAULT: Any = object()

_OUTCOMES: tuple[tuple[type[BaseException], str], ...] = (
    (RemoteError, "error"),
    (WorkerTimeoutError, "timeout"),
    (WorkerOutOfMemoryError, "out_of_memory"),
    (WorkerCrashedError, "crash"),
    (ProtocolError, "crash"),
    (PoolSaturatedError, "saturated"),
    (PoolClosedError, "closed"),
    (SessionLostError, "session_lost"),
    (UnknownCommandError, "unknown_command"),
)


def call_outcome(error: BaseException) -> str:
    """The metrics/tracing outcome of a failed call: a small fixed vocabulary."""
    for cls, outcome in _OUTCOMES:
        if isinstance(error, cls):
            return outcome
    return "error"


def map_concurrently(
    pool: Any, command: str, items: Iterable[Any], *, timeout: Any = _DEFAULT, concurrency: int = 2
) -> list[Any]:
    """``pool.execute`` over many args from ``concurrency`` threads; order kept, first error raised.

    Shared by WorkerPool and PoolClient so both batch the same way.
    """
    work = list(items)
    results: list[Any] = [None] * len(work)
    errors: list[BaseException] = []
    cursor = iter(range(len(work)))  # next() on a range iterator is atomic under the GIL
    kwargs = {} if timeout is _DEFAULT else {"timeout": timeout}

    def run() -> None:
        for index in cursor:
            if errors:
                return
            try:
                results[index] = pool.execute(command, work[index], **kwargs)
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [
        threading.Thread(target=run, daemon=True)
        for _ in range(max(1, min(concurrency, len(work))))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


@dataclass
class PoolConfig:
    """Everything that shapes a pool; the Dagster resource and the CLI map onto these fields."""

    bridge: str = "echo"
    size: int = 2
    bridge_options: dict[str, Any] = field(default_factory=dict)
    default_timeout_s: float | None = 300.0
    queue_size: int = 1000
    queue_timeout_s: float = 300.0
    session_mode: str = "hint"
    session_ttl_s: float = 3600.0
    max_sessions: int = 10_000
    max_requests: int | None = None
    max_age_s: float | None = None
    max_rss_mb: float | None = None
    memory_limit_mb: int | None = None
    health_interval_s: float | None = 10.0
    health_timeout_s: float = 10.0
    max_retries: int = 1
    start_timeout_s: float = 120.0
    max_start_failures: int = 5
    overflow: int = 0
    overflow_idle_s: float = 30.0
    stop_grace_s: float = 3.0
    codec: str = "json"
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    registry_dir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    pythonpath: list[str] = field(default_factory=list)

    def check(self) -> None:
        problems = []
        if self.size < 1:
            problems.append(f"size must be >= 1, got {self.size}")
        if self.session_mode not in SESSION_MODES:
            problems.append(
                f"session_mode must be one of {SESSION_MODES}, got '{self.session_mode}'"
            )
        if self.queue_size < 0:
            problems.append(f"queue_size must be >= 0, got {self.queue_size}")
        if self.max_retries < 0:
            problems.append(f"max_retries must be >= 0, got {self.max_retries}")
        if self.overflow < 0:
            problems.append(f"overflow must be >= 0, got {self.overflow}")
        if self.overflow_idle_s <= 0:
            problems.append(f"overflow_idle_s must be positive, got {self.overflow_idle_s}")
        for name in (
            "max_requests",
            "max_age_s",
            "max_rss_mb",
            "memory_limit_mb",
            "default_timeout_s",
        ):
            value = getattr(self, name)
            if value is not None and value <= 0:
                problems.append(f"{name} must be positive or None, got {value}")
        if problems:
            raise ValueError("invalid worker pool config: " + "; ".join(problems))


class _Waiter:
    __slots__ = ("event", "worker", "error", "strict_worker_id")

    def __init__(self, strict_worker_id: int | None):
        self.event = threading.Event()
        self.worker: WorkerProcess | None = None
        self.error: PoolError | None = None
        self.strict_worker_id = strict_worker_id


_live_pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


def live_pools() -> list[WorkerPool]:
    """The pools of this process not closed yet, for /metrics to report their live state."""
    return list(_live_pools)


@atexit.register
def _close_live_pools() -> None:
    for pool in list(_live_pools):
        with contextlib.suppress(Exception):
            pool.close()


class WorkerPool:
    """A supervised set of worker processes running one bridge.

    >>> with WorkerPool(bridge="echo", size=2) as pool:
    ...     pool.execute("echo:echo", {"value": 1})
    1
    """

    def __init__(self, config: PoolConfig | None = None, **overrides: Any):
        unknown = set(overrides) - {f.name for f in fields(PoolConfig)}
        if unknown:
            raise TypeError(f"unknown worker pool option(s): {', '.join(sorted(unknown))}")
        self.config = replace(config or PoolConfig(), **overrides)
        self.config.check()
        self.bridge: BridgeInfo = validate_bridge(self.config.bridge)
        self._codec = get_codec(self.config.codec)
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._workers: dict[int, WorkerProcess] = {}
        self._idle: dict[int, WorkerProcess] = {}
        self._starting: dict[int, WorkerProcess] = {}
        self._waiters: deque[_Waiter] = deque()
        self._sessions = SessionTable(self.config.session_ttl_s, self.config.max_sessions)
        self._graveyard: dict[int, ExitInfo] = {}  # worker id -> how it died (for strict sessions)
        self._stats = PoolStats()
        self._request_ids = iter(range(1, 1 << 62))
        # Spawns to do: (due time, overflow?). One entry is one worker to start.
        self._spawn_due: list[tuple[float, bool]] = []
        # Overflow workers due to spawn, being started or alive: what ``overflow`` caps.
        self._overflow_claimed = 0
        self._start_failures = 0
        self._start_error: PoolError | None = None
        self._closed = False
        self._started = False
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._registry: PidRegistry | None = None
        self._threads: list[threading.Thread] = []
        self.reaped_orphans: list[int] = []

    # Lifecycle ---------------------------------------------------------------------------

    def start(self, wait: bool = True) -> WorkerPool:
        """Reap workers of dead pools, spawn ``size`` workers concurrently, optionally wait."""
        if self._started:
            return self
        self._started = True
        self.reaped_orphans = reap_orphans(self.config.registry_dir)
        self._registry = PidRegistry(self.config.registry_dir)
        _live_pools.add(self)
        with self._lock:
            self._spawn_due.extend([(0.0, False)] * self.config.size)
        for target, name in ((self._supervise, "supervisor"), (self._health_loop, "health")):
            thread = threading.Thread(target=target, name=f"flowstone-pool-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if wait:
            self.await_ready(self.config.start_timeout_s)
        return self

    def await_ready(self, timeout: float | None = None, count: int | None = None) -> None:
        """Block until ``count`` (default: all) workers are ready; raise the start error if any."""
        want = self.config.size if count is None else count
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ready:
            while True:
                ready = sum(
                    1
                    for w in self._workers.values()
                    if w.state in ("idle", "busy") and not w.overflow
                )
                if ready >= want:
                    return
                if self._start_error is not None:
                    raise self._start_error
                if self._closed:
                    raise PoolClosedError("the worker pool was closed while starting")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise WorkerStartError(
                        f"only {ready} of {want} '{self.bridge.name}' workers were ready after "
                        f"{timeout:.1f}s; raise start_timeout_s if the bridge loads a large model"
                    )
                self._ready.wait(remaining)

    def close(self) -> None:
        """Stop every worker (EOF, then SIGTERM, then SIGKILL) and the pool's threads."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            waiters = list(self._waiters)
            self._waiters.clear()
            workers = list(self._workers.values())
            self._workers.clear()
            self._idle.clear()
            self._ready.notify_all()
        for waiter in waiters:
            waiter.error = PoolClosedError(
                "the worker pool was closed while this call waited for a worker"
            )
            waiter.event.set()
        stoppers = []
        for worker in workers:
            busy = worker.state == "busy"
            worker.state = "dead"
            if busy:
                worker.kill()
            else:
                thread = threading.Thread(
                    target=worker.stop, args=(self.config.stop_grace_s,), daemon=True
                )
                thread.start()
                stoppers.append(thread)
        for thread in stoppers:
            thread.join(self.config.stop_grace_s * 2 + 2)
        # Only now stop the supervisor: its exit fires the parent-death signal of its children.
        self._stop.set()
        self._wake()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(5)
        if self._registry is not None:
            self._registry.remove()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        _live_pools.discard(self)

    def __enter__(self) -> WorkerPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # Calls -------------------------------------------------------------------------------

    def execute(
        self,
        command: str,
        args: Any = None,
        *,
        timeout: float | None = _DEFAULT,
        session_id: str | None = None,
        session_mode: str | None = None,
        idempotent: bool | None = None,
    ) -> Any:
        """Run one command on a worker and return its result.

        ``args`` is a dict (keyword arguments), a list (positional) or None. ``timeout`` (seconds,
        None for none) kills and replaces the worker when exceeded. A streaming command's chunks
        come back as a list.
        """
        chunks: list[Any] = []
        streaming = self._is_streaming(command)
        calls = self._invoke(
            command, args, timeout, session_id, session_mode, idempotent, streaming
        )
        try:
            while True:
                chunks.append(next(calls))
        except StopIteration as done:
            return chunks if streaming else done.value

    def execute_stream(
        self,
        command: str,
        args: Any = None,
        *,
        timeout: float | None = _DEFAULT,
        session_id: str | None = None,
        session_mode: str | None = None,
        idempotent: bool | None = None,
    ) -> Iterator[Any]:
        """Yield the chunks of a streaming command as the worker produces them.

        A non-streaming command yields its one result. Stopping early drains the rest of the
        stream (within the call's timeout) so the worker stays warm.
        """
        streaming = self._is_streaming(command)
        calls = self._invoke(
            command, args, timeout, session_id, session_mode, idempotent, streaming
        )
        if streaming:
            yield from calls
        else:
            result = yield from calls
            yield result

    def map(
        self,
        command: str,
        items: Iterable[Any],
        *,
        timeout: float | None = _DEFAULT,
        concurrency: int | None = None,
    ) -> list[Any]:
        """Run ``command`` once per args item, ``concurrency`` (default: pool size) at a time.

        Results keep the order of ``items``; the first error is raised after in-flight calls end.
        """
        return map_concurrently(
            self, command, items, timeout=timeout, concurrency=concurrency or self.config.size
        )

    def _is_streaming(self, command: str) -> bool:
        spec = self.bridge.spec_for(command)
        return bool(spec and spec.streaming)

    def _invoke(
        self,
        command: str,
        args: Any,
        timeout: float | None,
        session_id: str | None,
        session_mode: str | None,
        idempotent: bool | None,
        streaming: bool = True,
    ) -> Generator[Any, None, Any]:
        """One call as metrics and traces see it: latency (queue wait and retries included),
        outcome, and a span naming the bridge, the command and the worker that served it.
        Yields a streaming command's chunks; returns a non-streaming command's result."""
        started = time.perf_counter()
        spec = self.bridge.spec_for(command)
        label = spec.name if spec is not None else "unknown"  # never a caller's free text
        span = tracing.start_span(
            "flowstone.pool.call",
            {"flowstone.pool.bridge": self.bridge.name, "flowstone.pool.command": label},
        )
        outcome, error = "ok", None
        try:
            return (
                yield from self._call(
                    command, args, timeout, session_id, session_mode, idempotent, streaming, span
                )
            )
        except GeneratorExit:
            outcome = "cancelled"  # a stream's consumer stopped early; the worker was drained
            raise
        except BaseException as exc:
            outcome, error = call_outcome(exc), exc
            raise
        finally:
            metrics.pool_call(self.bridge.name, label, time.perf_counter() - started, outcome)
            tracing.finish(span, outcome, error)

    def _call(
        self,
        command: str,
        args: Any,
        timeout: float | None,
        session_id: str | None,
        session_mode: str | None,
        idempotent: bool | None,
        streaming: bool,
        span: Any,
    ) -> Generator[Any, None, Any]:
        spec = self.bridge.spec_for(command)
        if spec is None:
            known = ", ".join(f"{self.bridge.name}:{c}" for c in sorted(self.bridge.commands))
            raise UnknownCommandError(
                f"bridge '{self.bridge.name}' has no command '{command}'; commands: {known}"
            )
        if timeout is _DEFAULT:
            timeout = self.config.default_timeout_s
        mode = session_mode or self.config.session_mode
        if mode not in SESSION_MODES:
            raise ValueError(f"session_mode must be one of {SESSION_MODES}, got '{mode}'")
        retryable = spec.idempotent if idempotent is None else idempotent
        attempt = 0
        # Workers found dead before they got the request: bounded, so a bridge whose workers
        # die as soon as they are ready fails the call instead of cycling forever.
        lost, max_lost = 0, 2 * (self.config.size + self.config.overflow) + 1
        while True:
            started = time.monotonic()
            worker = self._acquire(session_id, mode, started + self.config.queue_timeout_s)
            if worker.exited():  # died while idle: replace it, and hand the call to another
                exit_info = self._discard(worker, "unhealthy")
                self._stats.incr("dead_idle")
                lost += 1
                if lost > max_lost:
                    raise self._lost_workers_error(command, worker, exit_info, lost)
                continue
            span.set_attribute("flowstone.pool.worker_pid", worker.pid)
            span.set_attribute("flowstone.pool.attempts", attempt + 1)
            request = {
                "id": next(self._request_ids),
                "command": command,
                "args": args,
                "timeout_ms": None if timeout is None else int(timeout * 1000),
            }
            deadline = None if timeout is None else time.monotonic() + timeout
            yielded = False
            frames = worker.frames(request, deadline) if streaming else iter(())
            try:
                if not streaming:
                    final = worker.call(request, deadline)
                for frame in frames:
                    if "chunk" in frame:
                        yielded = True
                        try:
                            yield frame["chunk"]
                        except GeneratorExit:
                            self._drain(worker, frames)
                            raise
                        continue
                    final = frame
            except FrameTimeout:
                self._discard(worker, "timeout")
                self._stats.record_call(time.monotonic() - started, ok=False)
                self._stats.incr("timeouts")
                raise WorkerTimeoutError(
                    f"'{command}' did not finish within {timeout:g}s on worker pid {worker.pid}; the "
                    "worker was killed and a replacement started (raise the timeout for slow calls)",
                    command=command,
                    pid=worker.pid,
                    timeout_s=timeout,
                ) from None
            except (StreamClosed, ProtocolError, OSError) as exc:
                # Asked before the discard closes the pipes: did the request ever reach it?
                undelivered = (
                    not yielded
                    and isinstance(exc, StreamClosed | BrokenPipeError)
                    and worker.request_undelivered()
                )
                exit_info = self._discard(worker, "crash")
                if self._closed:
                    self._stats.record_call(time.monotonic() - started, ok=False)
                    raise PoolClosedError(
                        f"the worker pool was closed during '{command}'"
                    ) from None
                if undelivered and lost < max_lost:
                    lost += 1  # never read: sending it again cannot run it twice
                    self._stats.incr("redelivered")
                    continue
                self._stats.record_call(time.monotonic() - started, ok=False)
                error = self._crash_error(command, worker, exit_info, exc)
                if retryable and not yielded and attempt < self.config.max_retries:
                    attempt += 1
                    self._stats.incr("retries")
                    continue
                raise error from None
            except GeneratorExit:
                raise  # the consumer stopped a stream; _drain already released or replaced the worker
            except BaseException:
                # KeyboardInterrupt or similar mid-call: the worker's state is unknown.
                self._discard(worker, "interrupted")
                raise
            ok = bool(final.get("success"))
            self._release(worker, ok)
            self._stats.record_call(time.monotonic() - started, ok)
            if ok:
                return final.get("result")
            raise error_from_wire(final.get("error") or {})

    def _drain(self, worker: WorkerProcess, frames: Iterator[dict[str, Any]]) -> None:
        """A stream consumer stopped early: read the rest so the worker can be reused."""
        try:
            for _ in frames:
                pass
        except BaseException:
            self._discard(worker, "abandoned stream")
            return
        self._release(worker, True)

    def _lost_workers_error(
        self, command: str, worker: WorkerProcess, exit_info: ExitInfo, lost: int
    ) -> PoolError:
        return WorkerCrashedError(
            f"'{command}' was never run: {lost} '{self.bridge.name}' workers in a row died before "
            f"it reached one (the last, pid {worker.pid}, {exit_info.description}); check the "
            "workers' stderr",
            command=command,
            pid=worker.pid,
            exit=exit_info.to_dict(),
        )

    def _crash_error(
        self, command: str, worker: WorkerProcess, exit_info: ExitInfo, exc: BaseException
    ) -> PoolError:
        if isinstance(exc, ProtocolError):
            return ProtocolError(
                f"worker pid {worker.pid} broke the frame protocol during '{command}': {exc}; it was "
                "replaced",
                command=command,
                pid=worker.pid,
            )
        cls = WorkerOutOfMemoryError if exit_info.kind == "out_of_memory" else WorkerCrashedError
        hint = {
            "out_of_memory": "raise memory_limit_mb or send smaller batches",
            "segfault": "a native library crashed; check the worker's stderr",
        }.get(exit_info.kind, "check the worker's stderr")
        return cls(
            f"worker pid {worker.pid} died during '{command}': it {exit_info.description}; the pool "
            f"started a replacement ({hint})",
            command=command,
            pid=worker.pid,
            exit=exit_info.to_dict(),
        )

    # Dispatch ----------------------------------------------------------------------------

    def _acquire(self, session_id: str | None, mode: str, queue_deadline: float) -> WorkerProcess:
        with self._lock:
            if self._closed:
                raise PoolClosedError("the worker pool is closed")
            if self._start_error is not None and not self._workers:
                raise self._start_error
            strict_id: int | None = None
            worker: WorkerProcess | None = None
            if session_id is not None:
                binding = self._sessions.get(session_id)
                if binding is not None and binding.worker_id in self._workers:
                    worker = self._idle.pop(binding.worker_id, None)
                    if worker is not None:
                        self._stats.incr("affinity_hits")
                    elif mode == "strict":
                        strict_id = binding.worker_id
                    else:
                        self._stats.incr("affinity_misses")
                elif binding is not None and mode == "strict":
                    self._sessions.drop(session_id)
                    died = self._graveyard.get(binding.worker_id)
                    how = f" (it {died.description})" if died else ""
                    raise SessionLostError(
                        f"session '{session_id}' lived on worker pid {binding.worker_pid}, which is "
                        f"gone{how}; its state is lost: start the session again",
                        session_id=session_id,
                        pid=binding.worker_pid,
                    )
                elif binding is not None:
                    self._stats.incr("affinity_misses")
            if worker is None and strict_id is None and self._idle:
                worker = self._idle.pop(next(iter(self._idle)))
            if worker is not None:
                worker.state = "busy"
                if session_id is not None:
                    self._sessions.bind(session_id, worker.id, worker.pid)
                return worker
            if len(self._waiters) >= self.config.queue_size:
                self._stats.incr("saturated")
                raise PoolSaturatedError(
                    f"pool saturated: all {self.config.size} '{self.bridge.name}' workers are busy and "
                    f"{len(self._waiters)} calls already wait (queue_size={self.config.queue_size}); "
                    "add workers or slow down",
                    queue_depth=len(self._waiters),
                )
            waiter = _Waiter(strict_id)
            self._waiters.append(waiter)
            # A strict session waits for its own worker: an extra one could not serve it.
            overflow = strict_id is None and self._claim_overflow()
        if overflow:
            self._wake()
        waiter.event.wait(max(0.0, queue_deadline - time.monotonic()))
        with self._lock:
            if waiter.worker is None and waiter.error is None:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                self._stats.incr("saturated")
                raise PoolSaturatedError(
                    f"pool saturated: no '{self.bridge.name}' worker became free within "
                    f"{self.config.queue_timeout_s:g}s (queue_timeout_s); add workers or raise the timeout",
                    queue_depth=len(self._waiters),
                )
            if waiter.error is not None:
                raise waiter.error
            worker = waiter.worker
            assert worker is not None
            if session_id is not None:
                self._sessions.bind(session_id, worker.id, worker.pid)
            return worker

    def _claim_overflow(self) -> bool:
        """Schedule one overflow spawn if the cap allows (lock held); True when scheduled."""
        if self._closed or self._overflow_claimed >= self.config.overflow:
            return False
        self._overflow_claimed += 1
        self._spawn_due.append((0.0, True))
        return True

    def _hand_off(self, worker: WorkerProcess) -> None:
        """Give a free worker to the first waiter that accepts it, else mark it idle (lock held)."""
        for waiter in self._waiters:
            if waiter.strict_worker_id is None or waiter.strict_worker_id == worker.id:
                self._waiters.remove(waiter)
                worker.state = "busy"
                waiter.worker = worker
                waiter.event.set()
                return
        worker.state = "idle"
        self._idle[worker.id] = worker

    def _release(self, worker: WorkerProcess, ok: bool) -> None:
        worker.requests += 1
        worker.last_used = time.monotonic()
        if not ok:
            worker.failures += 1
        due = self._recycling_due(worker)
        if due is not None:
            self._retire(worker, *due)
            return
        with self._lock:
            if self._closed or worker.id not in self._workers:
                return
            self._hand_off(worker)

    def _recycling_due(self, worker: WorkerProcess) -> tuple[str, str] | None:
        """Why ``worker`` should be retired now, as (reason, metrics kind), or None.

        Checked each time a call hands a worker back, not only by the health loop: under steady
        traffic a worker is never idle when the health loop looks, and a leaking one would
        otherwise grow without bound between checks (seen in the 30-minute soak: 3 GB against
        a 150 MB bound). Reading RSS costs about a microsecond (``WorkerProcess.rss_bytes``).
        """
        cfg = self.config
        if worker.recycle_reason is not None:
            return worker.recycle_reason, "requested"
        if cfg.max_requests is not None and worker.requests >= cfg.max_requests:
            return (
                f"served {worker.requests} requests (max_requests={cfg.max_requests})",
                "max_requests",
            )
        if cfg.max_rss_mb is not None:
            rss = worker.rss_bytes()
            if rss is not None and rss > cfg.max_rss_mb * 1024 * 1024:
                return (
                    f"resident memory {rss / 1048576:.0f} MB above max_rss_mb={cfg.max_rss_mb:g}",
                    "max_rss",
                )
        if cfg.max_age_s is not None and time.monotonic() - worker.spawned_at > cfg.max_age_s:
            return f"older than max_age_s={cfg.max_age_s:g}", "max_age"
        return None

    def _retire(self, worker: WorkerProcess, reason: str, kind: str = "requested") -> None:
        """Take a healthy worker out of service, stop it gently and start its replacement (none
        for an overflow worker); ``kind`` is the reason as a metrics label (max_requests,
        max_age, max_rss; ``overflow_idle`` when an idle overflow worker is let go)."""
        with self._lock:
            if self._workers.pop(worker.id, None) is None:
                return
            self._idle.pop(worker.id, None)
            worker.state = "retiring"
            worker.recycle_reason = reason
            self._graveyard[worker.id] = ExitInfo("exit_code", 0, None, f"was recycled: {reason}")
            self._fail_strict_waiters(worker)
            if worker.overflow:
                self._overflow_claimed -= 1
            elif not self._closed:
                self._spawn_due.append((0.0, False))
        if worker.overflow:
            self._stats.incr("overflow_retired")
        if kind != "overflow_idle":  # a shrink, not a recycling: nothing replaces it
            self._stats.incr("recycled")
            metrics.pool_recycle(self.bridge.name, kind)
        self._wake()

        def stop() -> None:
            worker.stop(self.config.stop_grace_s)
            worker.state = "dead"
            if self._registry is not None:
                self._registry.discard(worker.pid)

        threading.Thread(target=stop, name=f"flowstone-retire-{worker.pid}", daemon=True).start()

    def _discard(self, worker: WorkerProcess, reason: str) -> ExitInfo:
        """Remove a broken worker, reap it, schedule a replacement; returns how it ended."""
        with self._lock:
            known = self._workers.pop(worker.id, None) is not None
            self._idle.pop(worker.id, None)
            worker.state = "dead"
            if known and worker.overflow:
                self._overflow_claimed -= 1  # not replaced: the next burst starts another
            elif known and not self._closed:
                self._spawn_due.append((0.0, False))
        code = (
            worker.kill()
            if reason in ("timeout", "interrupted", "abandoned stream", "unhealthy")
            else None
        )
        if code is None:
            code = worker.wait(2.0)
            if code is None:
                code = worker.kill()
            else:
                worker.kill()  # closes the pipes; the process is already reaped
        exit_info = classify_exit(code, self.config.memory_limit_mb)
        with self._lock:
            self._graveyard[worker.id] = exit_info
            if len(self._graveyard) > 1000:
                self._graveyard.pop(next(iter(self._graveyard)))
            self._fail_strict_waiters(worker)
        if reason == "crash":
            self._stats.incr("crashes")
        if known:
            oom = exit_info.kind == "out_of_memory"
            metrics.pool_replacement(self.bridge.name, "out_of_memory" if oom else reason)
        if self._registry is not None:
            self._registry.discard(worker.pid)
        self._wake()
        return exit_info

    def _fail_strict_waiters(self, worker: WorkerProcess) -> None:
        for waiter in [w for w in self._waiters if w.strict_worker_id == worker.id]:
            self._waiters.remove(waiter)
            waiter.error = SessionLostError(
                f"the session's worker pid {worker.pid} is gone while the call waited for it; "
                "its state is lost: start the session again",
                pid=worker.pid,
            )
            waiter.event.set()

    # Supervisor: spawning and readiness ------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _spawn_one(self, overflow: bool = False) -> WorkerProcess:
        cfg = self.config
        worker = WorkerProcess.spawn(
            target=self.bridge.target,
            name=self.bridge.name,
            options=cfg.bridge_options,
            codec=self._codec,
            max_frame_bytes=cfg.max_frame_bytes,
            memory_limit_mb=cfg.memory_limit_mb,
            env=cfg.env,
            pythonpath=cfg.pythonpath,
        )
        worker.overflow = overflow
        if self._registry is not None:
            self._registry.add(worker.pid)
        self._stats.incr("started")
        if overflow:
            self._stats.incr("overflow_started")
        metrics.pool_worker_started(self.bridge.name)
        return worker

    def _supervise(self) -> None:
        starting = self._starting  # stdout fd -> worker; written by this thread only
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                due = [overflow for t, overflow in self._spawn_due if t <= now]
                self._spawn_due = [entry for entry in self._spawn_due if entry[0] > now]
                closed = self._closed
            for overflow in due if not closed else ():
                try:
                    worker = self._spawn_one(overflow)
                except Exception as exc:  # never let the supervisor die: callers would wait forever
                    self._start_failed(
                        None,
                        WorkerStartError(f"cannot spawn a worker process: {exc}"),
                        overflow=overflow,
                    )
                    continue
                starting[worker.stdout_fd] = worker
                poller.register(worker.stdout_fd, select.POLLIN)
            for fd, worker in list(starting.items()):
                if now - worker.spawned_at > self.config.start_timeout_s:
                    self._forget_starting(starting, poller, fd)
                    worker.kill()
                    self._start_failed(
                        worker,
                        WorkerStartError(
                            f"worker pid {worker.pid} did not report ready within "
                            f"{self.config.start_timeout_s:g}s (start_timeout_s)"
                        ),
                    )
            with self._lock:
                pending = [t for t, _ in self._spawn_due]
            wait_s = 0.5 if not pending else max(0.0, min(pending) - time.monotonic())
            try:
                events = poller.poll(min(wait_s, 0.5) * 1000.0)
            except OSError:
                events = []
            for fd, _ in events:
                if fd == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
                    continue
                ready = starting.get(fd)
                if ready is not None:
                    self._check_ready(starting, poller, fd, ready)
        for fd, worker in list(starting.items()):
            self._forget_starting(starting, poller, fd)
            worker.kill()

    @staticmethod
    def _forget_starting(starting: dict[int, WorkerProcess], poller: select.poll, fd: int) -> None:
        starting.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError):
            poller.unregister(fd)

    def _check_ready(
        self,
        starting: dict[int, WorkerProcess],
        poller: select.poll,
        fd: int,
        worker: WorkerProcess,
    ) -> None:
        try:
            frame = worker.reader.read(time.monotonic())
        except FrameTimeout:
            return  # part of the ready frame so far
        except (StreamClosed, ProtocolError, OSError) as exc:
            self._forget_starting(starting, poller, fd)
            code = worker.wait(2.0)
            worker.kill()
            info = classify_exit(code, self.config.memory_limit_mb)
            self._start_failed(
                worker,
                WorkerStartError(
                    f"worker pid {worker.pid} {info.description} before it was ready ({exc})",
                    exit=info.to_dict(),
                ),
            )
            return
        self._forget_starting(starting, poller, fd)
        if isinstance(frame, dict) and frame.get("ready") is True:
            worker.ready_at = worker.last_used = time.monotonic()
            with self._lock:
                if self._closed:
                    worker.state = "dead"
                else:
                    if not worker.overflow:
                        self._start_failures = 0
                    self._workers[worker.id] = worker
                    self._hand_off(worker)
                    self._ready.notify_all()
                    return
            worker.stop(self.config.stop_grace_s)
            return
        error = frame.get("error") if isinstance(frame, dict) else None
        message = (error or {}).get("message") or f"unexpected first frame {str(frame)[:200]}"
        worker.wait(2.0)
        worker.kill()
        tb = (error or {}).get("traceback") or ""
        self._start_failed(worker, WorkerStartError(message + (f"\n{tb}" if tb else "")))

    def _start_failed(
        self, worker: WorkerProcess | None, error: WorkerStartError, overflow: bool = False
    ) -> None:
        if worker is not None and self._registry is not None:
            self._registry.discard(worker.pid)
        self._stats.incr("start_failures")
        metrics.pool_start_failure(self.bridge.name)
        if overflow or (worker is not None and worker.overflow):
            # Not retried and not counted toward max_start_failures: the base workers serve on.
            self._stats.incr("overflow_start_failures")
            with self._lock:
                self._overflow_claimed -= 1
            return
        with self._lock:
            self._start_failures += 1
            if self._closed:
                return
            if self._start_failures >= self.config.max_start_failures:
                self._start_error = WorkerStartError(
                    f"'{self.bridge.name}' workers failed to start {self._start_failures} times in a "
                    f"row; the pool stopped restarting them. Last error: {error}"
                )
                for waiter in list(self._waiters):
                    waiter.error = self._start_error
                    waiter.event.set()
                self._waiters.clear()
            else:
                backoff = min(5.0, 0.2 * 2 ** (self._start_failures - 1))
                self._spawn_due.append((time.monotonic() + backoff, False))
            self._ready.notify_all()

    # Health ------------------------------------------------------------------------------

    def _health_loop(self) -> None:
        interval = self.config.health_interval_s
        while interval and not self._stop.wait(interval):
            self.check_health()

    def check_health(self) -> dict[str, int]:
        """One health pass: dead idle workers, unanswered pings, memory and age recycling, and
        overflow workers idle for longer than ``overflow_idle_s`` let go."""
        with self._lock:
            self._sessions.expire()
            idle = list(self._idle.values())
            for worker in idle:
                self._idle.pop(worker.id, None)
                worker.state = "busy"
        outcome = {"checked": len(idle), "replaced": 0, "recycled": 0, "overflow_retired": 0}
        cfg = self.config
        for worker in idle:
            if worker.overflow and time.monotonic() - worker.last_used > cfg.overflow_idle_s:
                self._retire(
                    worker,
                    f"idle overflow worker, overflow_idle_s={cfg.overflow_idle_s:g}",
                    "overflow_idle",
                )
                outcome["overflow_retired"] += 1
                continue
            try:
                request = {
                    "id": next(self._request_ids),
                    "command": "ping",
                    "args": None,
                    "timeout_ms": None,
                }
                for _ in worker.frames(request, time.monotonic() + cfg.health_timeout_s):
                    pass
            except (FrameTimeout, StreamClosed, ProtocolError, OSError):
                self._stats.incr("health_failures")
                self._discard(worker, "unhealthy")
                outcome["replaced"] += 1
                continue
            due = self._recycling_due(worker)
            if due is not None:
                self._retire(worker, *due)
                outcome["recycled"] += 1
            else:
                with self._lock:
                    if self._closed or worker.id not in self._workers:
                        continue
                    self._hand_off(worker)
        return outcome

    # Introspection ----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters, latency percentiles, queue depth and worker states."""
        snapshot = self._stats.snapshot()
        with self._lock:
            states = [w.state for w in self._workers.values()]
            snapshot.update(
                bridge=self.bridge.name,
                size=self.config.size,
                overflow=self.config.overflow,
                workers_alive=len(states),
                workers_overflow=sum(1 for w in self._workers.values() if w.overflow),
                workers_idle=states.count("idle"),
                workers_busy=states.count("busy"),
                workers_starting=len(self._starting),
                workers_pending=len(self._spawn_due),
                queue_depth=len(self._waiters),
                sessions=len(self._sessions),
                closed=self._closed,
            )
        return snapshot

    def workers(self) -> list[dict[str, Any]]:
        """One row a worker: pid, state, RSS, uptime, requests served."""
        with self._lock:
            workers = list(self._workers.values()) + list(self._starting.values())
            sessions = {w.id: self._sessions.count_for(w.id) for w in workers}
        rows = []
        for worker in workers:
            row = worker.describe()
            row["sessions"] = sessions[worker.id]
            rows.append(row)
        return rows

    def worker_pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in self._workers.values()]
