"""The provider interface and the error classification shared by the SDK adapters."""

from __future__ import annotations

import abc
import email.utils
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from flowstone.llm.config import ProviderConfig
from flowstone.llm.errors import ProviderCallError
from flowstone.llm.retry import is_retryable_status
from flowstone.llm.secrets import resolve_secret
from flowstone.llm.types import Completion, Message, Params, StreamChunk


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str
    latency_s: float = 0.0


def parse_retry_after(headers) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return float(raw_ms) / 1000.0
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(raw) if raw else None
        return None if parsed is None else max(0.0, parsed.timestamp() - time.time())


def classify_http_failure(
    provider: str, model: str, exc: BaseException
) -> ProviderCallError | None:
    """Map transport exceptions (httpx/httpx2/requests, by name) to a retryable error."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {
        "TimeoutException",
        "Timeout",
        "ReadTimeout",
        "ConnectTimeout",
        "APITimeoutError",
        "TimeoutError",
    }:
        return ProviderCallError(
            provider, model, "timeout", "the request timed out", retryable=True
        )
    if names & {
        "ConnectError",
        "ConnectionError",
        "RemoteProtocolError",
        "ReadError",
        "APIConnectionError",
        "NetworkError",
        "ProtocolError",
    }:
        return ProviderCallError(
            provider,
            model,
            "connection",
            f"connection failed ({type(exc).__name__})",
            retryable=True,
        )
    return None


def status_error(
    provider: str, model: str, status: int, message: str, headers=None
) -> ProviderCallError:
    return ProviderCallError(
        provider,
        model,
        status,
        message,
        retryable=is_retryable_status(status),
        retry_after_s=parse_retry_after(headers),
    )


class Provider(abc.ABC):
    """One configured endpoint. Subclasses make exactly one HTTP attempt per call (the SDK's
    own retries are off) and raise ``ProviderCallError``; the client adds retries, limits,
    the breaker and the cache around them."""

    kind: str = ""

    def __init__(self, config: ProviderConfig):
        self.config = config
        self.name = config.name
        self.model = config.model
        self._sdk_client = None
        self._lock = threading.Lock()

    @property
    def capabilities(self) -> tuple[str, ...]:
        return self.config.capabilities

    def api_key(self) -> str:
        """The key, resolved on first use so a keyless provider can still be configured."""
        if self.config.api_key:
            from flowstone.llm.redaction import register_secret

            register_secret(self.config.api_key)
            return self.config.api_key
        ref = self.config.key_ref
        if ref is None:
            raise ValueError(f"{self.config.purpose}: no api_key or api_key_ref configured")
        return resolve_secret(ref, purpose=self.config.purpose)

    def sdk_client(self):
        """The SDK client, built once per provider object (thread-safe; SDK clients are)."""
        with self._lock:
            if self._sdk_client is None:
                self._sdk_client = self._build_sdk_client()
            return self._sdk_client

    def prepare(self) -> None:
        """Build the SDK client if it is not built yet. The client calls this before it takes
        a rate-limit token, so that the token is spent on a request sent at once, not on one
        that waits for the SDK import."""
        self.sdk_client()

    def probe(self, call) -> Health:
        """Health from one cheap SDK call (``call()``): its latency, or the classified error."""
        start = time.perf_counter()
        try:
            call()
        except Exception as exc:
            try:
                error = self._error(exc)
            except Exception as other:
                return Health(False, str(other))
            return Health(False, str(error), time.perf_counter() - start)
        return Health(True, "ok", time.perf_counter() - start)

    def final_chunk(
        self,
        parts: list[str],
        model: str,
        input_tokens: int,
        output_tokens: int,
        start: float,
        stop_reason: str | None,
    ) -> StreamChunk:
        """The empty last chunk of a stream, carrying the whole completion."""
        return StreamChunk(
            "",
            Completion(
                "".join(parts),
                model,
                input_tokens,
                output_tokens,
                0.0,
                time.perf_counter() - start,
                self.name,
                stop_reason=stop_reason,
            ),
        )

    def _error(self, exc: Exception) -> ProviderCallError:  # pragma: no cover - overridden
        raise exc

    def sdk_error(self, exc: Exception, sdk) -> ProviderCallError:
        """Translate an error of the Anthropic or OpenAI SDK (both are generated by Stainless and
        share their exception classes) into a classified `ProviderCallError`."""
        if isinstance(exc, sdk.APIStatusError):
            return status_error(
                self.name, self.model, exc.status_code, exc.message, exc.response.headers
            )
        return self.classify_error(exc, (sdk.APIResponseValidationError, ValueError))

    def classify_error(
        self, exc: Exception, malformed: tuple[type[Exception], ...] = (ValueError,)
    ) -> ProviderCallError:
        """What every SDK shares once its own status errors are handled: an unreadable reply
        (retryable) or a transport failure; anything else is re-raised as it is."""
        if isinstance(exc, malformed):
            return ProviderCallError(
                self.name,
                self.model,
                "malformed",
                f"unreadable reply ({type(exc).__name__})",
                retryable=True,
            )
        classified = classify_http_failure(self.name, self.model, exc)
        if classified is not None:
            return classified
        raise exc

    def _build_sdk_client(self):  # pragma: no cover - local provider has none
        raise NotImplementedError

    @abc.abstractmethod
    def complete(self, messages: Sequence[Message], params: Params) -> Completion:
        """One attempt; raises ``ProviderCallError`` (or ``MissingSecretError``)."""

    @abc.abstractmethod
    def stream(self, messages: Sequence[Message], params: Params) -> Iterator[StreamChunk]:
        """Text as it arrives; the last chunk carries the complete ``Completion``."""

    @abc.abstractmethod
    def health(self) -> Health:
        """A cheap call that shows whether the provider answers with these credentials."""
