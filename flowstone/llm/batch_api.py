"""Provider batch APIs: Anthropic's Message Batches and OpenAI's Batch API, behind one shape.

Why: a large evaluation that is in no hurry costs half through a batch API, and nothing has to
hold a worker while the provider works through it (up to 24 hours). This module only speaks
the protocols, through the official SDKs built exactly as the online adapters build them
(same base URL, key and timeout), so a batch request's body is the one the online call sends:
submit a list of requests, read a batch's state, read its results, cancel it. What to submit,
where the record of a submitted batch lives and what happens when one ends are decided by
:mod:`flowstone.llm.batch_store` and :mod:`flowstone.llm.batch_poll`.

Each request carries a ``custom_id`` chosen by the caller (the response-cache key of the
request, 64 hex characters, which Anthropic's ``^[a-zA-Z0-9_-]{1,64}$`` accepts), so a result
lands in the cache under the key the online path looks up.
"""

from __future__ import annotations

import abc
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from flowstone.llm.config import ProviderConfig
from flowstone.llm.errors import ProviderCallError
from flowstone.llm.providers.anthropic import AnthropicProvider
from flowstone.llm.providers.openai import OpenAIProvider
from flowstone.llm.types import Completion, Message, Params

#: The provider kinds with a batch API (and a batch price in ``pricing.BATCH_PRICE_FACTORS``).
BATCH_KINDS = ("anthropic", "openai")
#: OpenAI's only completion window; Anthropic's batches also end within 24 hours.
COMPLETION_WINDOW = "24h"
OPENAI_BATCH_ENDPOINT = "/v1/chat/completions"

BatchState = Literal["in_progress", "ended", "failed"]


@dataclass(frozen=True)
class BatchRequest:
    """One request of a batch: its id and the messages and parameters of the online call."""

    custom_id: str
    messages: tuple[Message, ...]
    params: Params

    def to_dict(self) -> dict[str, Any]:
        return {
            "custom_id": self.custom_id,
            "messages": [m.to_dict() for m in self.messages],
            "params": self.params.to_dict(),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> BatchRequest:
        return cls(
            raw["custom_id"],
            tuple(Message(m["role"], m["content"]) for m in raw["messages"]),
            Params.from_mapping(raw["params"]),
        )


@dataclass(frozen=True)
class BatchStatus:
    """Where a batch is: ``in_progress`` (also validating, finalizing, cancelling), ``ended``
    (results can be read, whether every request succeeded, some failed or expired, or the batch
    was cancelled) or ``failed`` (the provider refused the batch as a whole; ``detail`` says
    why). ``done`` of ``total`` requests are finished."""

    state: BatchState
    done: int
    total: int
    detail: str = ""


@dataclass
class BatchResults:
    """What an ended batch produced, by custom id: answers (unpriced), requests that failed
    (with the provider's reason) and requests the provider never got to (expired)."""

    completions: dict[str, Completion] = field(default_factory=dict)
    errored: dict[str, str] = field(default_factory=dict)
    expired: set[str] = field(default_factory=set)


class BatchAPI(abc.ABC):
    """One provider endpoint's batch API. Errors come out as ``ProviderCallError`` (with the
    HTTP status), like the online adapters' errors."""

    def __init__(self, config: ProviderConfig):
        if config.kind not in BATCH_KINDS:
            raise ValueError(
                f"{config.purpose}: provider kind '{config.kind}' has no batch API; "
                f"batch mode is available on {', '.join(BATCH_KINDS)}"
            )
        self.config = config
        self.provider: Any = None  # the online adapter of the kind: its SDK client and errors

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """An SDK call, its errors as the online adapter reports them (with the status)."""
        try:
            return fn(*args, **kwargs)
        except ProviderCallError:
            raise
        except Exception as exc:
            raise self.provider._error(exc) from None

    @abc.abstractmethod
    def submit(self, requests: Sequence[BatchRequest]) -> str:
        """Create a batch of ``requests``; returns the provider's batch id."""

    @abc.abstractmethod
    def status(self, batch_id: str) -> BatchStatus: ...

    @abc.abstractmethod
    def results(self, batch_id: str, custom_ids: Iterable[str]) -> BatchResults:
        """The results of an ended batch; a request of ``custom_ids`` with no result at all
        counts as expired (OpenAI leaves unprocessed requests out of both files)."""

    @abc.abstractmethod
    def cancel(self, batch_id: str) -> None: ...


class AnthropicBatchAPI(BatchAPI):
    """``client.messages.batches``: create, retrieve, results (a JSONL stream read from the
    batch's ``results_url``) and cancel."""

    def __init__(self, config: ProviderConfig):
        super().__init__(config)
        self.provider = AnthropicProvider(config)

    def _batches(self) -> Any:
        return self.provider.sdk_client().messages.batches

    def submit(self, requests: Sequence[BatchRequest]) -> str:
        body = [
            {"custom_id": r.custom_id, "params": self.provider._request(r.messages, r.params)}
            for r in requests
        ]
        return str(self._call(self._batches().create, requests=body).id)

    def status(self, batch_id: str) -> BatchStatus:
        batch = self._call(self._batches().retrieve, batch_id)
        counts = batch.request_counts
        total = (
            counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired
        )
        state: BatchState = "ended" if batch.processing_status == "ended" else "in_progress"
        return BatchStatus(state, total - counts.processing, total, batch.processing_status)

    def results(self, batch_id: str, custom_ids: Iterable[str]) -> BatchResults:
        out = BatchResults()
        for line in self._call(self._batches().results, batch_id):
            result = line.result
            if result.type == "succeeded":
                message = result.message
                out.completions[line.custom_id] = Completion(
                    text="".join(b.text for b in message.content if b.type == "text"),
                    model=message.model or self.config.model,
                    input_tokens=message.usage.input_tokens,
                    output_tokens=message.usage.output_tokens,
                    cost_usd=0.0,
                    latency_s=0.0,  # per request, a batch's wall time means nothing
                    provider=self.config.name,
                    stop_reason=message.stop_reason,
                )
            elif result.type == "errored":
                error = result.error.error
                out.errored[line.custom_id] = f"{error.type}: {error.message}"
            elif result.type == "canceled":
                out.errored[line.custom_id] = "canceled before it was processed"
            else:
                out.expired.add(line.custom_id)
        seen = set(out.completions) | set(out.errored) | out.expired
        out.expired |= set(custom_ids) - seen
        return out

    def cancel(self, batch_id: str) -> None:
        self._call(self._batches().cancel, batch_id)


class OpenAIBatchAPI(BatchAPI):
    """``client.files.create(purpose="batch")`` for the JSONL input, ``client.batches``
    create / retrieve / cancel, and ``client.files.content`` for the output and error files."""

    def __init__(self, config: ProviderConfig):
        super().__init__(config)
        self.provider = OpenAIProvider(config)

    def _client(self) -> Any:
        return self.provider.sdk_client()

    def submit(self, requests: Sequence[BatchRequest]) -> str:
        lines = [
            json.dumps(
                {
                    "custom_id": r.custom_id,
                    "method": "POST",
                    "url": OPENAI_BATCH_ENDPOINT,
                    "body": self.provider._request(r.messages, r.params),
                }
            )
            for r in requests
        ]
        data = ("\n".join(lines) + "\n").encode()
        client = self._client()
        uploaded = self._call(
            client.files.create, file=("requests.jsonl", io.BytesIO(data)), purpose="batch"
        )
        batch = self._call(
            client.batches.create,
            input_file_id=uploaded.id,
            endpoint=OPENAI_BATCH_ENDPOINT,
            completion_window=COMPLETION_WINDOW,
        )
        return str(batch.id)

    def status(self, batch_id: str) -> BatchStatus:
        batch = self._call(self._client().batches.retrieve, batch_id)
        counts = batch.request_counts
        total = counts.total if counts else 0
        done = (counts.completed + counts.failed) if counts else 0
        if batch.status == "failed":
            errors = (
                [e.message or e.code or "" for e in (batch.errors.data or [])]
                if batch.errors
                else []
            )
            return BatchStatus("failed", done, total, "; ".join(e for e in errors if e) or "failed")
        if batch.status in ("completed", "expired", "cancelled"):
            return BatchStatus("ended", done, total, batch.status)
        return BatchStatus("in_progress", done, total, batch.status)

    def _lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if not file_id:
            return []
        content = self._call(self._client().files.content, file_id)
        return [json.loads(line) for line in content.text.splitlines() if line.strip()]

    def results(self, batch_id: str, custom_ids: Iterable[str]) -> BatchResults:
        batch = self._call(self._client().batches.retrieve, batch_id)
        out = BatchResults()
        for line in self._lines(batch.output_file_id) + self._lines(batch.error_file_id):
            custom_id = line["custom_id"]
            response = line.get("response") or {}
            body = response.get("body") or {}
            if line.get("error") or response.get("status_code") != 200 or not body.get("choices"):
                error = line.get("error") or body.get("error") or {}
                status = response.get("status_code")
                out.errored[custom_id] = (
                    f"{status or error.get('code') or 'error'}: {error.get('message') or 'failed'}"
                )
                continue
            choice = body["choices"][0]
            usage = body.get("usage") or {}
            out.completions[custom_id] = Completion(
                text=(choice.get("message") or {}).get("content") or "",
                model=body.get("model") or self.config.model,
                input_tokens=int(usage.get("prompt_tokens", 0)),
                output_tokens=int(usage.get("completion_tokens", 0)),
                cost_usd=0.0,
                latency_s=0.0,
                provider=self.config.name,
                stop_reason=choice.get("finish_reason"),
            )
        seen = set(out.completions) | set(out.errored)
        missing = set(custom_ids) - seen
        if batch.status == "cancelled":
            out.errored.update(
                {c: "the batch was cancelled before it was processed" for c in missing}
            )
        else:
            out.expired |= missing
        return out

    def cancel(self, batch_id: str) -> None:
        self._call(self._client().batches.cancel, batch_id)


def batch_api_for(config: ProviderConfig) -> BatchAPI:
    """The batch API of ``config``'s endpoint; a kind without one is a ``ValueError``."""
    if config.kind == "anthropic":
        return AnthropicBatchAPI(config)
    if config.kind == "openai":
        return OpenAIBatchAPI(config)
    raise ValueError(
        f"{config.purpose}: provider kind '{config.kind}' has no batch API; "
        f"batch mode is available on {', '.join(BATCH_KINDS)}"
    )
