"""Choosing the order in which providers are tried.

Strategies: ``fallback`` (configured order), ``cheapest`` (estimated cost of this request from
the price table), ``fastest`` (measured latency, a moving average; providers not yet measured
go first so each gets measured), ``most_capable`` (providers declaring every required
capability, highest ``capability_rank`` first), ``round_robin`` (rotating start). Whatever
the strategy, the rest of the order is the fallback chain, and providers whose breaker is
open or whose last health check failed are skipped.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Sequence

from flowstone.llm.breaker import CircuitBreaker
from flowstone.llm.pricing import PriceTable
from flowstone.llm.providers.base import Provider
from flowstone.llm.types import Message, Params, estimate_tokens

LATENCY_SMOOTHING = 0.3  # weight of the newest sample in the moving average


class Router:
    def __init__(
        self,
        providers: Sequence[Provider],
        breakers: dict[str, CircuitBreaker],
        prices: PriceTable,
        strategy: str = "fallback",
    ):
        self.providers = list(providers)
        self.breakers = breakers
        self.prices = prices
        self.strategy = strategy
        self._latency: dict[str, float] = {}
        self._unhealthy: dict[str, str] = {}
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def record_latency(self, provider: str, latency_s: float) -> None:
        with self._lock:
            old = self._latency.get(provider)
            self._latency[provider] = (
                latency_s if old is None else old + LATENCY_SMOOTHING * (latency_s - old)
            )

    def latency(self, provider: str) -> float | None:
        with self._lock:
            return self._latency.get(provider)

    def mark_health(self, provider: str, ok: bool, detail: str = "") -> None:
        with self._lock:
            if ok:
                self._unhealthy.pop(provider, None)
            else:
                self._unhealthy[provider] = detail or "health check failed"

    def estimated_cost(
        self, provider: Provider, messages: Sequence[Message], params: Params
    ) -> float:
        price = self.prices.lookup(provider.model)
        if price is None:
            return math.inf
        prompt_tokens = estimate_tokens("".join(m.content for m in messages))
        return price.cost(prompt_tokens, params.max_tokens)

    def _ordered(self, candidates: list[Provider], messages, params) -> list[Provider]:
        if self.strategy == "cheapest":
            return sorted(candidates, key=lambda p: self.estimated_cost(p, messages, params))
        if self.strategy == "fastest":
            with self._lock:
                latency = dict(self._latency)
            return sorted(candidates, key=lambda p: latency.get(p.name, -1.0))
        if self.strategy == "most_capable":
            return sorted(candidates, key=lambda p: -p.config.capability_rank)
        if self.strategy == "round_robin" and candidates:
            start = next(self._turn) % len(candidates)
            return candidates[start:] + candidates[:start]
        return candidates

    def order(
        self,
        messages: Sequence[Message],
        params: Params,
        *,
        only: str | None = None,
        required_capabilities: Sequence[str] = (),
    ) -> tuple[list[Provider], dict[str, str]]:
        """Providers to try, in order, and the reason each other provider was skipped."""
        skipped: dict[str, str] = {}
        candidates = []
        for provider in self.providers:
            if only is not None and provider.name != only:
                continue
            missing = [c for c in required_capabilities if c not in provider.capabilities]
            if missing:
                skipped[provider.name] = f"lacks capability {', '.join(missing)}"
                continue
            candidates.append(provider)
        if only is not None and not candidates and only not in skipped:
            known = ", ".join(p.name for p in self.providers)
            raise KeyError(f"unknown provider '{only}'; configured: {known}")
        ordered = []
        for provider in self._ordered(candidates, messages, params):
            breaker = self.breakers[provider.name]
            with self._lock:
                unhealthy = self._unhealthy.get(provider.name)
            if not breaker.available():
                skipped[provider.name] = (
                    f"circuit breaker {breaker.state} (retry in {breaker.retry_in_s():.1f}s)"
                )
            elif unhealthy:
                skipped[provider.name] = f"unhealthy: {unhealthy}"
            else:
                ordered.append(provider)
        return ordered, skipped
