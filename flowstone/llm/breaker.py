"""A circuit breaker per provider: stop calling a provider that keeps failing.

closed    calls flow; ``failure_threshold`` consecutive failed calls open the circuit.
open      calls fail fast (the router skips the provider) for ``recovery_timeout_s``.
half-open up to ``half_open_max_calls`` trial calls go through; ``success_threshold``
          successes close the circuit, any failure opens it again.

A "failed call" is one whose retries were exhausted on a transient error: a 400 or 401 says
nothing about the provider's health and does not count. Breakers are process-wide per
provider name, like the rate limits, so every client in a step sees the same state. State
changes are logged and kept in ``transitions`` for asset metadata.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import StrEnum

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


_breakers: ProcessShared[BreakerConfig, CircuitBreaker] = ProcessShared(CircuitBreaker)


def breaker_for(endpoint: str, config: BreakerConfig, name: str | None = None) -> CircuitBreaker:
    """The process-wide breaker of an endpoint (``ProviderConfig.endpoint``); a changed config
    replaces it. ``name``, the provider's configured name, labels its metrics (the first
    client to ask names it: two names on one endpoint share one breaker)."""
    breaker = _breakers.get(endpoint, config)
    if name and breaker.provider == breaker.endpoint:
        breaker.provider = name
    return breaker


def all_breakers() -> dict[str, CircuitBreaker]:
    """Every breaker of this process by endpoint (the breaker-state gauge reads them)."""
    with _breakers._lock:
        return {name: breaker for name, (_, breaker) in _breakers._items.items()}


def reset_breakers() -> None:
    _breakers.clear()
