"""Anthropic's Messages API through the official ``anthropic`` SDK.

The 2.x SDK's ``messages.create`` takes no sampling parameters (temperature, top_p): they are
not sent to Anthropic, though they stay part of the cache key like every other parameter.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from flowstone.llm.errors import ProviderCallError
from flowstone.llm.providers.base import Health, Provider
from flowstone.llm.types import Completion, Message, Params, StreamChunk, split_system


class AnthropicProvider(Provider):
    kind = "anthropic"

    def _build_sdk_client(self):
        import anthropic

        return anthropic.Anthropic(
            api_key=self.api_key(),
            base_url=self.config.base_url,
            timeout=self.config.timeout_s,
            max_retries=0,  # our retry policy decides, with the rate limiter in the loop
        )

    def _request(self, messages: Sequence[Message], params: Params) -> dict:
        system, turns = split_system(messages)
        request: dict = {
            "model": self.model,
            "max_tokens": params.max_tokens,
            "messages": [m.to_dict() for m in turns],
        }
        if system:
            request["system"] = system
        if params.stop:
            request["stop_sequences"] = list(params.stop)
        return request

    def _error(self, exc: Exception) -> ProviderCallError:
        import anthropic

        return self.sdk_error(exc, anthropic)

    def complete(self, messages: Sequence[Message], params: Params) -> Completion:
        client = self.sdk_client()
        start = time.perf_counter()
        try:
            reply = client.messages.create(**self._request(messages, params))
            text = "".join(block.text for block in reply.content if block.type == "text")
            usage = reply.usage
        except ProviderCallError:
            raise
        except Exception as exc:
            raise self._error(exc) from None
        return Completion(
            text=text,
            model=reply.model or self.model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost_usd=0.0,
            latency_s=time.perf_counter() - start,
            provider=self.name,
            stop_reason=reply.stop_reason,
        )

    def stream(self, messages: Sequence[Message], params: Params) -> Iterator[StreamChunk]:
        client = self.sdk_client()
        start = time.perf_counter()
        parts: list[str] = []
        input_tokens = output_tokens = 0
        model, stop_reason = self.model, None
        try:
            events = client.messages.create(**self._request(messages, params), stream=True)
            for event in events:
                if event.type == "message_start":
                    model = event.message.model or model
                    input_tokens = event.message.usage.input_tokens
                    output_tokens = event.message.usage.output_tokens or 0
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    parts.append(event.delta.text)
                    yield StreamChunk(event.delta.text)
                elif event.type == "message_delta":
                    output_tokens = event.usage.output_tokens
                    stop_reason = event.delta.stop_reason
        except ProviderCallError:
            raise
        except Exception as exc:
            raise self._error(exc) from None
        yield self.final_chunk(parts, model, input_tokens, output_tokens, start, stop_reason)

    def health(self) -> Health:
        return self.probe(lambda: self.sdk_client().models.list(limit=1))
