"""Errors of the LLM layer. Each names the provider and model, and never carries a secret."""

from __future__ import annotations

from flowstone.errors import FlowStoneError
from flowstone.llm.redaction import redact


class LLMError(FlowStoneError):
    """Base class: the message is redacted when the error is built."""

    def __init__(self, message: str):
        super().__init__(redact(message))


class MissingSecretError(LLMError):
    """A provider's key is not configured; raised when a call is made, not when configured."""


class ProviderCallError(LLMError):
    """One failed attempt at a provider, classified for the retry policy and the breaker.

    ``status`` is the HTTP status, or a word ("timeout", "connection", "malformed") when there
    was none. ``retry_after_s`` is what the server asked us to wait, when it said.
    """

    def __init__(
        self,
        provider: str,
        model: str,
        status: int | str,
        detail: str,
        *,
        retryable: bool,
        retry_after_s: float | None = None,
    ):
        self.provider = provider
        self.model = model
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        super().__init__(f"provider '{provider}' model '{model}' failed with {status}: {detail}")


class RetryExhaustedError(LLMError):
    """Every attempt allowed by the retry policy failed with a retryable error."""

    def __init__(self, provider: str, model: str, attempts: int, last: ProviderCallError):
        self.provider = provider
        self.model = model
        self.attempts = attempts
        self.last_status = last.status
        super().__init__(
            f"provider '{provider}' model '{model}' still failing after {attempts} attempt(s); "
            f"last status {last.status}: {last}. Check the provider's status or raise the retry "
            "limits in the LLM resource config."
        )


class CircuitOpenError(LLMError):
    """The provider's breaker is open: calls fail fast until its recovery timeout passes."""

    def __init__(self, provider: str, retry_in_s: float):
        self.provider = provider
        self.retry_in_s = retry_in_s
        super().__init__(
            f"circuit breaker for provider '{provider}' is open; next trial in {retry_in_s:.1f}s"
        )


class NoProviderAvailableError(LLMError):
    """Every provider in the chain was skipped or failed; ``failures`` says why, per provider."""

    def __init__(self, failures: dict[str, str]):
        self.failures = dict(failures)
        detail = "; ".join(f"{name}: {why}" for name, why in failures.items()) or "none configured"
        super().__init__(f"no LLM provider could serve the request ({detail})")
