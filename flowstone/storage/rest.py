"""Read and write partitions of an HTTP API, with retries that cannot double-apply a write.

Why: remote APIs rate-limit (429), fail transiently (5xx) and time out. Loads retry those with
exponential backoff (honouring ``Retry-After``); a 404 means the source has nothing for that
partition, which is a clear :class:`NoDataForPartitionError`, not an empty result. Writes carry
an ``Idempotency-Key`` derived from method, URL and body, so a write retried after a lost
response (or re-run with the same data) is recognised by the server and not applied twice.
"""

from __future__ import annotations

import hashlib
import io
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from flowstone.storage.codec import from_json_bytes, to_json_bytes
from flowstone.storage.errors import CodecError, NoDataForPartitionError, StorageError
from flowstone.storage.keys import validate_partition_key

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
IDEMPOTENCY_HEADER = "Idempotency-Key"


class RetryableHTTPError(StorageError):
    """A response worth retrying (429/5xx); carries the server's Retry-After if any."""

    def __init__(self, response: httpx.Response):
        self.status_code = response.status_code
        self.retry_after = _retry_after_seconds(response)
        super().__init__(
            f"{response.request.method} {response.request.url} returned HTTP "
            f"{response.status_code}: {response.text[:200]}"
        )


def _retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, RetryableHTTPError | httpx.TimeoutException | httpx.TransportError)


@dataclass
class RestSettings:
    """How to reach one partitioned HTTP resource.

    ``url_template`` may use ``{asset}``, ``{partition_key}`` and, for multi-partitions, one
    placeholder per dimension (``{suite}``, ``{system}``). Values are URL-encoded.
    """

    url_template: str
    method: Literal["POST", "PUT"] = "PUT"
    format: Literal["json", "csv"] = "json"
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_seconds: float = 30.0
    max_attempts: int = 5
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0


class RestPartitionClient:
    """Loads and stores partitions over HTTP; ``client`` can be shared or injected."""

    def __init__(self, settings: RestSettings, client: httpx.Client | None = None):
        self.settings = settings
        self._client = client

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                timeout=self.settings.timeout_seconds, headers=dict(self.settings.headers)
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # ----------------------------------------------------------------- URLs

    def url_for(self, asset: str, partition: str | Mapping[str, str] | None) -> str:
        values: dict[str, str] = {"asset": quote(asset, safe="/")}
        if isinstance(partition, str):
            values["partition_key"] = quote(validate_partition_key(partition), safe="")
        elif partition is not None:
            for dim, key in partition.items():
                validate_partition_key(key, what=f"partition key of dimension {dim!r}")
                values[dim] = quote(key, safe="")
            values["partition_key"] = quote(
                "|".join(partition[d] for d in sorted(partition)), safe=""
            )
        wanted = {f for _, f, _, _ in string.Formatter().parse(self.settings.url_template) if f}
        missing = sorted(wanted - values.keys())
        if missing:
            raise StorageError(
                f"url_template {self.settings.url_template!r} uses {missing}, which asset "
                f"'{asset}' (partition {partition!r}) does not provide; available: "
                f"{sorted(values)}"
            )
        return self.settings.url_template.format_map(values)

    # ----------------------------------------------------------------- transport

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        s = self.settings

        def wait(retry_state: Any) -> float:
            base = wait_exponential(
                multiplier=s.backoff_initial_seconds, max=s.backoff_max_seconds
            )(retry_state)
            exc = retry_state.outcome.exception() if retry_state.outcome else None
            hinted = getattr(exc, "retry_after", None)
            return min(max(base, hinted or 0.0), s.backoff_max_seconds)

        def attempt() -> httpx.Response:
            response = self.client.request(method, url, **kwargs)
            if response.status_code in RETRY_STATUSES:
                raise RetryableHTTPError(response)
            return response

        retrying = Retrying(
            retry=retry_if_exception(_is_retryable),
            stop=stop_after_attempt(s.max_attempts),
            wait=wait,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except (RetryableHTTPError, httpx.HTTPError) as exc:
            raise StorageError(
                f"{method} {url} failed after {s.max_attempts} attempt(s): {exc}. "
                "The service is down or overloaded; retry the run later."
            ) from exc

    # ----------------------------------------------------------------- load / store

    def load(self, url: str, *, what: str = "partition") -> Any:
        response = self._send("GET", url)
        if response.status_code == 404:
            raise NoDataForPartitionError(
                f"no data for {what} at {url} (HTTP 404); check that the source has produced "
                "this partition, or that the url_template is right"
            )
        if response.status_code >= 400:
            raise StorageError(f"GET {url} for {what} returned HTTP {response.status_code}: "
                               f"{response.text[:200]}")  # fmt: skip
        if self.settings.format == "csv":
            import pandas as pd

            return pd.read_csv(io.BytesIO(response.content))
        return from_json_bytes(response.content)

    def encode_body(self, data: Any) -> tuple[bytes, str]:
        is_frame = type(data).__name__ == "DataFrame" and type(data).__module__.startswith("pandas")
        if self.settings.format == "csv":
            if not is_frame:
                raise CodecError(
                    f"format 'csv' needs a pandas DataFrame, got {type(data).__name__}; return "
                    "a DataFrame or set format='json'"
                )
            return data.to_csv(index=False).encode(), "text/csv"
        if is_frame:
            return data.to_json(orient="records", date_format="iso").encode(), "application/json"
        return to_json_bytes(data), "application/json"

    @staticmethod
    def idempotency_key(method: str, url: str, body: bytes) -> str:
        """Same method, URL and body -> same key, also across processes and re-runs."""
        return hashlib.sha256(method.encode() + b" " + url.encode() + b"\n" + body).hexdigest()

    def store(self, url: str, data: Any, *, what: str = "partition") -> httpx.Response:
        body, content_type = self.encode_body(data)
        method = self.settings.method
        headers = {
            "Content-Type": content_type,
            IDEMPOTENCY_HEADER: self.idempotency_key(method, url, body),
        }
        response = self._send(method, url, content=body, headers=headers)
        if response.status_code >= 400:
            raise StorageError(
                f"{method} {url} for {what} returned HTTP {response.status_code}: "
                f"{response.text[:200]}; the write was not accepted"
            )
        return response
