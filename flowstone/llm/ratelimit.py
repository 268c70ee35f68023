"""Client-side rate limits: token buckets for requests and tokens per minute.

Limits belong to a provider and model, not to a client object, so the buckets live in a
process-wide registry: every thread and every client in the process that talks to the same
provider+model draws from the same buckets. Across processes and hosts they share nothing
unless ``FLOWSTONE_LLM_STATE`` names a Redis (:mod:`flowstone.llm.state`): then the buckets
live there, every process draws from them, and a Redis that stops answering leaves each process
with these in-process buckets until it answers again.

The request bucket holds one request by default, which paces calls evenly at the limit; a
bucket that starts full at a minute's worth would burst past a server that also counts in
windows.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from flowstone.llm import state
from flowstone.llm.redaction import get_logger
from flowstone.llm.shared import ProcessShared

log = get_logger(__name__)


class TokenBucket:
    """Refills ``rate_per_s`` tokens a second up to ``capacity``; ``acquire`` blocks until it can
    take what it asked for. A request larger than the capacity waits for a full bucket and
    leaves it in debt, so it is served rather than refused."""

    def __init__(self, rate_per_s: float, capacity: float, clock=time.monotonic, sleep=time.sleep):
        if rate_per_s <= 0 or capacity <= 0:
            raise ValueError(
                f"token bucket needs a positive rate and capacity, got {rate_per_s}, {capacity}"
            )
        self.rate_per_s = rate_per_s
        self.capacity = capacity
        self._level = capacity
        self._clock, self._sleep = clock, sleep
        self._stamp = clock()
        self._lock = threading.Lock()

    def _refill(self, now: float) -> None:
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate_per_s)
        self._stamp = now

    def acquire(self, amount: float = 1.0) -> float:
        """Take ``amount`` tokens, waiting as needed; returns the seconds waited."""
        waited = 0.0
        need = min(amount, self.capacity)
        while True:
            with self._lock:
                now = self._clock()
                self._refill(now)
                if self._level >= need:
                    self._level -= amount
                    return waited
                delay = (need - self._level) / self.rate_per_s
            self._sleep(delay)
            waited += delay

    def adjust(self, delta: float) -> None:
        """Give back (negative ``delta``) or charge more once the true amount is known."""
        with self._lock:
            self._refill(self._clock())
            self._level = min(self.capacity, self._level - delta)


@dataclass(frozen=True)
class RateLimits:
    """Limits for one provider+model; None means unlimited on that axis."""

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    request_burst: float = 1.0


class RateLimiter:
    """The request and token buckets of one provider+model."""

    def __init__(self, key: str, limits: RateLimits):
        self.key = key
        self.limits = limits
        self.requests = (
            TokenBucket(limits.requests_per_minute / 60.0, max(1.0, limits.request_burst))
            if limits.requests_per_minute
            else None
        )
        self.tokens = (
            TokenBucket(limits.tokens_per_minute / 60.0, max(1.0, limits.tokens_per_minute / 60.0))
            if limits.tokens_per_minute
            else None
        )

    def acquire(self, estimated_tokens: int) -> float:
        """Wait for a request slot and the estimated tokens; returns seconds waited."""
        waited = 0.0
        if self.requests is not None:
            waited += self.requests.acquire(1.0)
        if self.tokens is not None:
            waited += self.tokens.acquire(float(estimated_tokens))
        if waited > 1.0:
            log.info("rate limit for %s held a request for %.1fs", self.key, waited)
        return waited

    def settle(self, estimated_tokens: int, actual_tokens: int) -> None:
        """Correct the token bucket once the provider has counted the tokens."""
        if self.tokens is not None and actual_tokens != estimated_tokens:
            self.tokens.adjust(actual_tokens - estimated_tokens)


class SharedRateLimiter(RateLimiter):
    """The buckets of one endpoint in the shared store, for every process on every host.

    The in-process buckets it inherits are the fallback: while the store does not answer
    (:class:`flowstone.llm.state.StateUnavailable`), this process paces itself alone, as it
    would without ``FLOWSTONE_LLM_STATE``, and the call goes on.
    """

    def __init__(self, key: str, limits: RateLimits, store: state.RedisState, sleep=time.sleep):
        super().__init__(key, limits)
        self.store = store
        self._sleep = sleep
        self._request_key = store.key("requests", key)
        self._token_key = store.key("tokens", key)

    def _take(self, bucket: TokenBucket, key: str, amount: float) -> float:
        """Reserve in the shared bucket and sleep out the wait it answers; the local bucket
        when the store is down."""
        try:
            delay = self.store.take(key, bucket.rate_per_s, bucket.capacity, amount)
        except state.StateUnavailable:
            return bucket.acquire(amount)
        if delay > 0:
            self._sleep(delay)
        return delay

    def acquire(self, estimated_tokens: int) -> float:
        waited = 0.0
        if self.requests is not None:
            waited += self._take(self.requests, self._request_key, 1.0)
        if self.tokens is not None:
            waited += self._take(self.tokens, self._token_key, float(estimated_tokens))
        if waited > 1.0:
            log.info("shared rate limit for %s held a request for %.1fs", self.key, waited)
        return waited

    def settle(self, estimated_tokens: int, actual_tokens: int) -> None:
        if self.tokens is None or actual_tokens == estimated_tokens:
            return
        delta = float(actual_tokens - estimated_tokens)
        try:
            self.store.adjust(self._token_key, self.tokens.rate_per_s, self.tokens.capacity, delta)
        except state.StateUnavailable:
            self.tokens.adjust(delta)


def _build(key: str, config: tuple[RateLimits, state.StateConfig]) -> RateLimiter:
    limits, where = config
    store = state.shared_state() if where.shared else None
    if store is None:
        return RateLimiter(key, limits)
    return SharedRateLimiter(key, limits, store)


_limiters: ProcessShared[tuple[RateLimits, state.StateConfig], RateLimiter] = ProcessShared(_build)


def limiter_for(endpoint: str, limits: RateLimits) -> RateLimiter:
    """The process-wide limiter of an endpoint (``ProviderConfig.endpoint``: kind, base URL,
    model, credential); new limits replace old ones. With ``FLOWSTONE_LLM_STATE`` set it
    draws from buckets shared by every process (raises ``ConfigError`` when it is malformed)."""
    return _limiters.get(endpoint, (limits, state.current_config()))


def reset_limiters() -> None:
    """Forget every limiter (tests and benchmarks start from full buckets)."""
    _limiters.clear()
