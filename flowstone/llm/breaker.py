"""A circuit breaker per provider: stop calling a provider that keeps failing.

closed    calls flow; ``failure_threshold`` consecutive failed calls open the circuit.
open      calls fail fast (the router skips the provider) for ``recovery_timeout_s``.
half-open up to ``half_open_max_calls`` trial calls go through; ``success_threshold``
          successes close the circuit, any failure opens it again.

A "failed call" is one whose retries were exhausted on a transient error: a 400 or 401 says
nothing about the provider's health and does not count. Breakers are process-wide per
endpoint, like the rate limits, so every client in a step sees the same state; with
``FLOWSTONE_LLM_STATE`` set the state lives in Redis (:mod:`flowstone.llm.state`) and every
process on every host sees it: a provider one step found dead is not called by the others. State
changes are logged (by the process that made them) and kept in ``transitions`` for asset
metadata.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import StrEnum

from flowstone.llm import state as shared_state
from flowstone.llm.redaction import get_logger
from flowstone.llm.shared import ProcessShared
from flowstone.telemetry import metrics

log = get_logger(__name__)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerConfig:
    failure_threshold: int = 5
    recovery_timeout_s: float = 30.0
    half_open_max_calls: int = 1
    success_threshold: int = 1

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.half_open_max_calls < 1 or self.success_threshold < 1:
            raise ValueError("breaker thresholds must be >= 1")
        if self.recovery_timeout_s < 0:
            raise ValueError("breaker recovery_timeout_s must be >= 0")


class CircuitBreaker:
    def __init__(self, provider: str, config: BreakerConfig, clock=time.monotonic):
        # ``provider`` labels the breaker's metrics and log lines; ``endpoint`` is what it
        # guards (the registry builds it with the endpoint, the first client names it)
        self.provider = provider
        self.endpoint = provider
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._successes = 0
        self._trials = 0
        self._opened_at = 0.0
        self.transitions: list[tuple[str, str]] = []

    def _move(self, new: BreakerState, why: str) -> None:
        if new is self._state:
            return
        log.warning(
            "circuit breaker for provider '%s' (%s): %s -> %s (%s)",
            self.provider,
            self.endpoint,
            self._state,
            new,
            why,
        )
        self.transitions.append((str(self._state), str(new)))
        metrics.llm_breaker_transition(self.provider, str(new))
        self._state = new
        self._failures = self._successes = self._trials = 0
        if new is BreakerState.OPEN:
            self._opened_at = self._clock()

    def _tick(self) -> None:
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self.config.recovery_timeout_s
        ):
            self._move(BreakerState.HALF_OPEN, "recovery timeout passed")

    @property
    def state(self) -> BreakerState:
        with self._lock:
            self._tick()
            return self._state

    def retry_in_s(self) -> float:
        with self._lock:
            if self._state is not BreakerState.OPEN:
                return 0.0
            return max(0.0, self.config.recovery_timeout_s - (self._clock() - self._opened_at))

    def available(self) -> bool:
        """Whether a call would be let through now (without claiming a half-open trial)."""
        with self._lock:
            self._tick()
            if self._state is BreakerState.OPEN:
                return False
            if self._state is BreakerState.HALF_OPEN:
                return self._trials < self.config.half_open_max_calls
            return True

    def try_acquire(self) -> bool:
        """Claim permission for one call; in half-open this uses up one trial slot."""
        with self._lock:
            self._tick()
            if self._state is BreakerState.OPEN:
                return False
            if self._state is BreakerState.HALF_OPEN:
                if self._trials >= self.config.half_open_max_calls:
                    return False
                self._trials += 1
            return True

    def record_success(self) -> None:
        with self._lock:
            if self._state is BreakerState.HALF_OPEN:
                self._successes += 1
                if self._successes >= self.config.success_threshold:
                    self._move(BreakerState.CLOSED, f"{self._successes} trial call(s) succeeded")
                else:
                    self._trials = max(0, self._trials - 1)
            else:
                self._failures = 0

    def record_failure(self) -> None:
        with self._lock:
            if self._state is BreakerState.HALF_OPEN:
                self._move(BreakerState.OPEN, "a trial call failed")
            elif self._state is BreakerState.CLOSED:
                self._failures += 1
                if self._failures >= self.config.failure_threshold:
                    self._move(BreakerState.OPEN, f"{self._failures} consecutive failed calls")

    def release(self) -> None:
        """Give back a half-open trial slot that ended neither in success nor failure."""
        with self._lock:
            if self._state is BreakerState.HALF_OPEN and self._trials:
                self._trials -= 1


class SharedCircuitBreaker(CircuitBreaker):
    """A breaker whose state lives in the shared store: each decision is one atomic script on
    the server (see ``flowstone.llm.state``), so an open breaker refuses calls in every
    process, and half-open trials are counted across all of them.

    The in-process state it inherits mirrors the last answer and is the fallback: while the
    store does not answer, this process goes on from what it last saw, alone.
    """

    def __init__(
        self,
        provider: str,
        config: BreakerConfig,
        store: shared_state.RedisState,
        clock=time.monotonic,
    ):
        super().__init__(provider, config, clock)
        self.store = store
        self._key = store.key("breaker", self.endpoint)

    def _ask(self, op: str) -> shared_state.BreakerReply | None:
        try:
            reply = self.store.breaker(
                self._key,
                op,
                failure_threshold=self.config.failure_threshold,
                recovery_timeout_s=self.config.recovery_timeout_s,
                half_open_max_calls=self.config.half_open_max_calls,
                success_threshold=self.config.success_threshold,
            )
        except shared_state.StateUnavailable:
            return None
        with self._lock:
            new = BreakerState(reply.state)
            if reply.moved_from and reply.moved_from != reply.state:
                log.warning(
                    "circuit breaker for provider '%s' (%s, shared): %s -> %s (%s)",
                    self.provider,
                    self.endpoint,
                    reply.moved_from,
                    new,
                    reply.why,
                )
                self.transitions.append((reply.moved_from, str(new)))
                metrics.llm_breaker_transition(self.provider, str(new))
            if new is not self._state:
                self._failures = self._successes = self._trials = 0
            self._state = new
            if new is BreakerState.OPEN:
                self._opened_at = self._clock() - self.config.recovery_timeout_s + reply.retry_in_s
        return reply

    @property
    def state(self) -> BreakerState:
        reply = self._ask("peek")
        return BreakerState(reply.state) if reply is not None else super().state

    def retry_in_s(self) -> float:
        reply = self._ask("peek")
        return reply.retry_in_s if reply is not None else super().retry_in_s()

    def available(self) -> bool:
        reply = self._ask("peek")
        return reply.allowed if reply is not None else super().available()

    def try_acquire(self) -> bool:
        reply = self._ask("acquire")
        return reply.allowed if reply is not None else super().try_acquire()

    def record_success(self) -> None:
        if self._ask("success") is None:
            super().record_success()

    def record_failure(self) -> None:
        if self._ask("failure") is None:
            super().record_failure()

    def release(self) -> None:
        if self._ask("release") is None:
            super().release()


def _build(endpoint: str, config: tuple[BreakerConfig, shared_state.StateConfig]) -> CircuitBreaker:
    breaker_config, where = config
    store = shared_state.shared_state() if where.shared else None
    if store is None:
        return CircuitBreaker(endpoint, breaker_config)
    return SharedCircuitBreaker(endpoint, breaker_config, store)


_breakers: ProcessShared[tuple[BreakerConfig, shared_state.StateConfig], CircuitBreaker] = (
    ProcessShared(_build)
)


def breaker_for(endpoint: str, config: BreakerConfig, name: str | None = None) -> CircuitBreaker:
    """The process-wide breaker of an endpoint (``ProviderConfig.endpoint``); a changed config
    replaces it. ``name``, the provider's configured name, labels its metrics (the first
    client to ask names it: two names on one endpoint share one breaker). With
    ``FLOWSTONE_LLM_STATE`` set its state is shared by every process (raises ``ConfigError``
    when the variable is malformed: at client construction, before any call)."""
    breaker = _breakers.get(endpoint, (config, shared_state.current_config()))
    if name and breaker.provider == breaker.endpoint:
        breaker.provider = name
    return breaker


def all_breakers() -> dict[str, CircuitBreaker]:
    """Every breaker of this process by endpoint (the breaker-state gauge reads them)."""
    with _breakers._lock:
        return {name: breaker for name, (_, breaker) in _breakers._items.items()}


def reset_breakers() -> None:
    _breakers.clear()
