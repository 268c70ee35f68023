"""Retrying transient provider failures with tenacity.

Transient: 429 (rate limited), 5xx, 529 (overloaded), timeouts, dropped connections and
malformed replies. Permanent: 400, 401, 403, 404 and other 4xx, which cannot succeed on a
second try and are raised at once. Waits grow exponentially with full jitter, and a server's
Retry-After wins when it asks for longer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from flowstone.llm.errors import ProviderCallError, RetryExhaustedError
from flowstone.llm.redaction import get_logger

log = get_logger(__name__)
T = TypeVar("T")

RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUSES or 500 <= status <= 599


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one provider before giving up on it (and falling back)."""

    max_attempts: int = 5
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_backoff_s < 0 or self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("backoff must satisfy 0 <= initial_backoff_s <= max_backoff_s")


def _wait(policy: RetryPolicy) -> Callable[[RetryCallState], float]:
    jittered = wait_random_exponential(
        multiplier=policy.initial_backoff_s, max=policy.max_backoff_s
    )

    def wait(state: RetryCallState) -> float:
        backoff = jittered(state)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ProviderCallError) and exc.retry_after_s is not None:
            return max(backoff, min(exc.retry_after_s, policy.max_retry_after_s))
        return backoff

    return wait


def call_with_retry(
    fn: Callable[[], T],
    *,
    provider: str,
    model: str,
    policy: RetryPolicy,
    before_attempt: Callable[[], None] | None = None,
) -> T:
    """Run ``fn`` until it succeeds, fails permanently, or the policy's attempts run out.

    ``before_attempt`` runs before every attempt (the rate limiter: a retry is a request too).
    Raises the permanent ``ProviderCallError`` as is, or ``RetryExhaustedError`` naming the
    provider, the model and the last status.
    """

    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "retrying provider '%s' model '%s' (attempt %d of %d failed: %s); waiting %.2fs",
            provider,
            model,
            state.attempt_number,
            policy.max_attempts,
            getattr(exc, "status", type(exc).__name__),
            state.upcoming_sleep,
        )

    def attempt() -> T:
        if before_attempt is not None:
            before_attempt()
        return fn()

    retrying = Retrying(
        stop=stop_after_attempt(policy.max_attempts),
        wait=_wait(policy),
        retry=retry_if_exception(lambda exc: isinstance(exc, ProviderCallError) and exc.retryable),
        before_sleep=log_retry,
        reraise=True,
    )
    try:
        return retrying(attempt)
    except ProviderCallError as exc:
        if not exc.retryable:
            raise
        attempts = retrying.statistics.get("attempt_number", policy.max_attempts)
        raise RetryExhaustedError(provider, model, attempts, exc) from exc
