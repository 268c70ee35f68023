"""OpenAI Chat Completions through the official ``openai`` SDK.

``base_url`` points the same adapter at any OpenAI-compatible server (vLLM, Ollama, LM Studio);
those usually take any key, so a local server can be configured with ``api_key: "local"``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from flowstone.llm.errors import ProviderCallError
from flowstone.llm.providers.base import Health, Provider
from flowstone.llm.types import Completion, Message, Params, StreamChunk


class OpenAIProvider(Provider):
    kind = "openai"

    def _build_sdk_client(self):
        import openai

        return openai.OpenAI(
            api_key=self.api_key(),
            base_url=self.config.base_url,
            timeout=self.config.timeout_s,
            max_retries=0,
        )

    def _request(self, messages: Sequence[Message], params: Params) -> dict:
        request: dict = {
            "model": self.model,
            "messages": [m.to_dict() for m in messages],
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
        }
        if params.top_p is not None:
            request["top_p"] = params.top_p
        if params.stop:
            request["stop"] = list(params.stop)
        return request

    def _error(self, exc: Exception) -> ProviderCallError:
        import openai

        return self.sdk_error(exc, openai)

    def complete(self, messages: Sequence[Message], params: Params) -> Completion:
        client = self.sdk_client()
        start = time.perf_counter()
        try:
            reply = client.chat.completions.create(**self._request(messages, params))
            if not reply.choices:
                raise ProviderCallError(
                    self.name, self.model, "malformed", "reply has no choices", retryable=True
                )
            choice = reply.choices[0]
            usage = reply.usage
        except ProviderCallError:
            raise
        except Exception as exc:
            raise self._error(exc) from None
        return Completion(
            text=choice.message.content or "",
            model=reply.model or self.model,
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
            cost_usd=0.0,
            latency_s=time.perf_counter() - start,
            provider=self.name,
            stop_reason=choice.finish_reason,
        )

    def stream(self, messages: Sequence[Message], params: Params) -> Iterator[StreamChunk]:
        client = self.sdk_client()
        start = time.perf_counter()
        parts: list[str] = []
        input_tokens = output_tokens = 0
        model, stop_reason = self.model, None
        try:
            chunks = client.chat.completions.create(
                **self._request(messages, params),
                stream=True,
                stream_options={"include_usage": True},
            )
            for chunk in chunks:
                model = chunk.model or model
                if chunk.usage is not None:
                    input_tokens, output_tokens = (
                        chunk.usage.prompt_tokens,
                        chunk.usage.completion_tokens,
                    )
                for choice in chunk.choices:
                    if choice.delta and choice.delta.content:
                        parts.append(choice.delta.content)
                        yield StreamChunk(choice.delta.content)
                    if choice.finish_reason:
                        stop_reason = choice.finish_reason
        except ProviderCallError:
            raise
        except Exception as exc:
            raise self._error(exc) from None
        yield self.final_chunk(parts, model, input_tokens, output_tokens, start, stop_reason)

    def health(self) -> Health:
        return self.probe(lambda: self.sdk_client().models.list())
