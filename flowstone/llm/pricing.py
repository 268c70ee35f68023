"""Prices per model and the running totals of tokens and cost.

Prices are USD per million tokens. The defaults below are list prices at the time of
writing and drift: override them in the LLM resource config (``prices``) or per provider.
A call to a model with no known price is counted as *unpriced* (and logged once), so a report
shows "3 unpriced calls" rather than a cost that silently reads as free.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from flowstone.llm.redaction import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Price:
    input_per_mtok: float
    output_per_mtok: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6

    def scaled(self, factor: float) -> Price:
        """This price times ``factor`` (a batch discount), for input and output alike."""
        return Price(self.input_per_mtok * factor, self.output_per_mtok * factor)


DEFAULT_PRICES: dict[str, Price] = {
    "claude-opus-4-1": Price(15.0, 75.0),
    "claude-sonnet-4-5": Price(3.0, 15.0),
    "claude-haiku-4-5": Price(1.0, 5.0),
    "claude-3-5-haiku": Price(0.8, 4.0),
    "gpt-4.1": Price(2.0, 8.0),
    "gpt-4.1-mini": Price(0.4, 1.6),
    "gpt-4o": Price(2.5, 10.0),
    "gpt-4o-mini": Price(0.15, 0.6),
    "gemini-2.5-pro": Price(1.25, 10.0),
    "gemini-2.5-flash": Price(0.3, 2.5),
    "local-baseline": Price(0.0, 0.0),
}


#: What a request sent through a provider's batch API costs, as a share of the list price: both
#: Anthropic's Message Batches and OpenAI's Batch API bill half. A kind absent here has no
#: batch API (systems.yaml refuses ``mode: batch`` on it).
BATCH_PRICE_FACTORS: dict[str, float] = {"anthropic": 0.5, "openai": 0.5}


def batch_price(kind: str, price: Price) -> Price:
    """``price`` as billed through ``kind``'s batch API."""
    if kind not in BATCH_PRICE_FACTORS:
        raise ValueError(
            f"provider kind '{kind}' has no batch API; batch prices exist for "
            f"{sorted(BATCH_PRICE_FACTORS)}"
        )
    return price.scaled(BATCH_PRICE_FACTORS[kind])


class PriceTable:
    """Looks a model up exactly, then by the longest known prefix (dated model ids)."""

    def __init__(self, prices: dict[str, Price] | None = None, *, defaults: bool = True):
        self._prices = dict(DEFAULT_PRICES) if defaults else {}
        self._prices.update(prices or {})
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def set(self, model: str, price: Price) -> None:
        with self._lock:
            self._prices[model] = price

    def lookup(self, model: str) -> Price | None:
        if model in self._prices:
            return self._prices[model]
        matches = [name for name in self._prices if model.startswith(name)]
        return self._prices[max(matches, key=len)] if matches else None

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float | None:
        """USD for the call, or None when the model has no price (logged once per model)."""
        price = self.lookup(model)
        if price is None:
            with self._lock:
                first = model not in self._warned
                self._warned.add(model)
            if first:
                log.warning("no price for model '%s': its calls are counted as unpriced", model)
            return None
        return price.cost(input_tokens, output_tokens)


@dataclass
class CostTotals:
    """Tokens, cost and call counts summed over many completions (thread-safe)."""

    calls: int = 0
    cache_hits: int = 0
    unpriced_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    by_provider: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(
        self,
        provider: str,
        input_tokens: int,
        output_tokens: int,
        cost_usd: float | None,
        *,
        cache_hit: bool,
    ) -> None:
        with self._lock:
            if cache_hit:
                self.cache_hits += 1
                return
            self.calls += 1
            self.input_tokens += input_tokens
            self.output_tokens += output_tokens
            if cost_usd is None:
                self.unpriced_calls += 1
            else:
                self.cost_usd += cost_usd
                self.by_provider[provider] = self.by_provider.get(provider, 0.0) + cost_usd

    def as_metadata(self) -> dict:
        """Plain values for Dagster metadata (provider calls, cache hits, tokens, cost)."""
        with self._lock:
            return {
                "llm_calls": self.calls,
                "llm_cache_hits": self.cache_hits,
                "llm_unpriced_calls": self.unpriced_calls,
                "llm_input_tokens": self.input_tokens,
                "llm_output_tokens": self.output_tokens,
                "llm_cost_usd": round(self.cost_usd, 6),
                "llm_cost_by_provider": {k: round(v, 6) for k, v in self.by_provider.items()},
            }
