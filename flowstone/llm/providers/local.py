"""A deterministic provider with no network: the same prompt always gets the same reply.

It lets pipelines, demos and tests run with no keys. ``options.mode`` chooses the reply:
``lead`` (default) is the first sentence of the last paragraph of the last user turn (for a
templated prompt, usually the question or passage), ``echo`` is that whole turn.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence

from flowstone.llm.providers.base import Health, Provider
from flowstone.llm.types import Completion, Message, Params, StreamChunk, estimate_tokens

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class LocalBaselineProvider(Provider):
    kind = "local"

    def _reply(self, messages: Sequence[Message], params: Params) -> str:
        user_turns = [m.content for m in messages if m.role == "user"] or [messages[-1].content]
        text = user_turns[-1].strip()
        if self.config.options.get("mode", "lead") == "echo":
            reply = text
        else:
            paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()] or [text]
            reply = _SENTENCE_END.split(paragraphs[-1])[0]
        words = reply.split()
        return " ".join(words[: params.max_tokens])

    def prepare(self) -> None:
        """No SDK client to build."""

    def complete(self, messages: Sequence[Message], params: Params) -> Completion:
        start = time.perf_counter()
        text = self._reply(messages, params)
        prompt = "\n".join(m.content for m in messages)
        return Completion(
            text,
            self.model,
            estimate_tokens(prompt),
            estimate_tokens(text),
            0.0,
            time.perf_counter() - start,
            self.name,
            stop_reason="end_turn",
        )

    def stream(self, messages: Sequence[Message], params: Params) -> Iterator[StreamChunk]:
        completion = self.complete(messages, params)
        for index, word in enumerate(completion.text.split(" ")):
            yield StreamChunk(word if index == 0 else " " + word)
        yield StreamChunk("", completion)

    def health(self) -> Health:
        return Health(True, "local baseline: always available")
