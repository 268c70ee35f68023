"""The values that cross the LLM interface: messages in, completions and stream chunks out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    """One turn of a conversation; ``system`` turns are lifted out for APIs that want them apart."""

    role: Role
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


Prompt = str | Sequence[Message] | Sequence[dict]


def as_messages(prompt: Prompt) -> tuple[Message, ...]:
    """Normalise a bare string, ``Message`` objects or role/content dicts to messages."""
    if isinstance(prompt, str):
        return (Message("user", prompt),)
    out = []
    for item in prompt:
        if isinstance(item, Message):
            out.append(item)
        elif isinstance(item, dict) and {"role", "content"} <= set(item):
            if item["role"] not in ("system", "user", "assistant"):
                raise ValueError(
                    f"message role must be system, user or assistant, got {item['role']!r}"
                )
            out.append(Message(item["role"], str(item["content"])))
        else:
            raise ValueError(
                f"a message must be a Message or a dict with role and content, got {item!r}"
            )
    if not out:
        raise ValueError("a prompt needs at least one message")
    return tuple(out)


def split_system(messages: Sequence[Message]) -> tuple[str | None, list[Message]]:
    """Join system turns into one instruction and return it with the remaining turns."""
    system = [m.content for m in messages if m.role == "system"]
    rest = [m for m in messages if m.role != "system"]
    return ("\n\n".join(system) if system else None), rest


@dataclass(frozen=True)
class Completion:
    """What one model call produced and what it cost.

    ``cost_usd`` is what this call spent: a cache hit spent nothing, so it reports 0.0 while
    keeping the token counts of the original call.
    """

    text: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_s: float
    provider: str
    cache_hit: bool = False
    stop_reason: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def with_cost(self, cost_usd: float) -> Completion:
        return replace(self, cost_usd=cost_usd)


@dataclass(frozen=True)
class StreamChunk:
    """A piece of streamed text; the last chunk of a stream carries the full ``completion``."""

    text: str
    completion: Completion | None = None


@dataclass(frozen=True)
class Params:
    """Sampling parameters that change a model's output (and therefore the cache key)."""

    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_mapping(cls, values: dict | None) -> Params:
        values = dict(values or {})
        unknown = set(values) - {"max_tokens", "temperature", "top_p", "stop"}
        if unknown:
            raise ValueError(
                f"unknown LLM parameter(s) {sorted(unknown)}; use max_tokens, temperature, top_p, stop"
            )
        if "stop" in values and values["stop"] is not None:
            values["stop"] = tuple(values["stop"])
        params = cls(**values)
        if params.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {params.max_tokens}")
        if not 0.0 <= params.temperature <= 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {params.temperature}")
        return params

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.top_p is not None:
            out["top_p"] = self.top_p
        if self.stop:
            out["stop"] = list(self.stop)
        return out


def estimate_tokens(text: str) -> int:
    """A cheap upper-ish estimate (4 characters a token) used before the provider counts."""
    return max(1, (len(text) + 3) // 4)
