"""Google Gemini through the official ``google-genai`` SDK.

The SDK takes ``http_options.base_url``, so it can be pointed at a local endpoint or a proxy
as well as at Google's API. Its own retries are switched off (one attempt) so that our policy
and rate limiter govern every request.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from flowstone.llm.errors import ProviderCallError
from flowstone.llm.providers.base import Health, Provider, status_error
from flowstone.llm.types import Completion, Message, Params, StreamChunk, split_system


class GeminiProvider(Provider):
    kind = "gemini"

    def _build_sdk_client(self):
        from google import genai
        from google.genai import types

        http_options = types.HttpOptions(
            base_url=self.config.base_url,
            timeout=int(self.config.timeout_s * 1000),
            retry_options=types.HttpRetryOptions(attempts=1),
        )
        return genai.Client(api_key=self.api_key(), http_options=http_options)

    def _request(self, messages: Sequence[Message], params: Params) -> dict:
        from google.genai import types

        system, turns = split_system(messages)
        contents = [
            types.Content(
                role="model" if m.role == "assistant" else "user",
                parts=[types.Part(text=m.content)],
            )
            for m in turns
        ]
        config = types.GenerateContentConfig(
            system_instruction=system,
            max_output_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop_sequences=list(params.stop) or None,
        )
        return {"model": self.model, "contents": contents, "config": config}

    def _error(self, exc: Exception) -> ProviderCallError:
        from google.genai import errors

        if isinstance(exc, errors.APIError):
            headers = getattr(getattr(exc, "response", None), "headers", None)
            return status_error(
                self.name, self.model, int(exc.code), str(exc.message or exc.status), headers
            )
        return self.classify_error(exc)

    @staticmethod
    def _usage(reply) -> tuple[int, int]:
        usage = getattr(reply, "usage_metadata", None)
        if usage is None:
            return 0, 0
        return usage.prompt_token_count or 0, usage.candidates_token_count or 0

    def complete(self, messages: Sequence[Message], params: Params) -> Completion:
        client = self.sdk_client()
        start = time.perf_counter()
        try:
            reply = client.models.generate_content(**self._request(messages, params))
            text = reply.text or ""
        except ProviderCallError:
            raise
        except Exception as exc:
            raise self._error(exc) from None
        input_tokens, output_tokens = self._usage(reply)
        finish = reply.candidates[0].finish_reason if reply.candidates else None
        return Completion(
            text,
            reply.model_version or self.model,
            input_tokens,
            output_tokens,
            0.0,
            time.perf_counter() - start,
            self.name,
            stop_reason=str(getattr(finish, "value", finish)) if finish else None,
        )

    def stream(self, messages: Sequence[Message], params: Params) -> Iterator[StreamChunk]:
        client = self.sdk_client()
        start = time.perf_counter()
        parts: list[str] = []
        input_tokens = output_tokens = 0
        try:
            for chunk in client.models.generate_content_stream(**self._request(messages, params)):
                if chunk.text:
                    parts.append(chunk.text)
                    yield StreamChunk(chunk.text)
                if chunk.usage_metadata is not None:
                    input_tokens, output_tokens = self._usage(chunk)
        except ProviderCallError:
            raise
        except Exception as exc:
            raise self._error(exc) from None
        yield self.final_chunk(parts, self.model, input_tokens, output_tokens, start, None)

    def health(self) -> Health:
        return self.probe(lambda: self.sdk_client().models.get(model=self.model))
