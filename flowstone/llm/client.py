"""``LLMClient``: the one object the rest of FlowStone calls to talk to a model.

Per request: normalise the prompt, look every candidate provider up in the cache, then walk
the router's order; for each provider claim its breaker, retry transient failures (each
attempt waits for the provider+model rate limit), and on success price, cache and account the
completion. A provider that fails after its retries (or has no key) falls through to the next.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from flowstone.llm.batch import complete_many
from flowstone.llm.breaker import breaker_for
from flowstone.llm.cache import ResponseCache, cache_key, open_cache
from flowstone.llm.config import ClientConfig, ProviderConfig
from flowstone.llm.errors import (
    CircuitOpenError,
    LLMError,
    MissingSecretError,
    NoProviderAvailableError,
    ProviderCallError,
    RetryExhaustedError,
)
from flowstone.llm.pricing import CostTotals, Price, PriceTable
from flowstone.llm.providers import build_provider
from flowstone.llm.providers.base import Health, Provider
from flowstone.llm.ratelimit import RateLimiter, limiter_for
from flowstone.llm.redaction import get_logger, install_log_redaction
from flowstone.llm.retry import call_with_retry
from flowstone.llm.router import Router
from flowstone.llm.types import (
    Completion,
    Message,
    Params,
    Prompt,
    StreamChunk,
    as_messages,
    estimate_tokens,
)
from flowstone.telemetry import metrics, tracing

log = get_logger(__name__)
T = TypeVar("T")


def _span_attributes(provider: Provider) -> dict[str, str]:
    return {
        "flowstone.llm.provider": provider.name,
        "gen_ai.provider.name": provider.kind,
        "gen_ai.request.model": provider.model,
    }


def _record_success(provider: Provider, span, completion: Completion, priced: bool) -> None:
    """One successful provider call, as metrics and the span see it (plain and streamed)."""
    metrics.llm_call(
        provider.name,
        provider.model,
        "ok",
        seconds=completion.latency_s,
        input_tokens=completion.input_tokens,
        output_tokens=completion.output_tokens,
        cost_usd=completion.cost_usd if priced else None,
    )
    _record_usage(span, completion)


def _record_usage(span, completion: Completion) -> None:
    """Tokens, cost and cache use of a completion on its span (nothing when spans are off)."""
    if not span.is_recording():
        return
    span.set_attribute("gen_ai.response.model", completion.model)
    span.set_attribute("gen_ai.usage.input_tokens", completion.input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", completion.output_tokens)
    span.set_attribute("flowstone.llm.cost_usd", completion.cost_usd)
    span.set_attribute("flowstone.llm.cache_hit", completion.cache_hit)


def _attempt_counter(provider: Provider, fn: Callable[[], T]) -> Callable[[], T]:
    """``fn`` with each failed attempt counted by error kind (a 429 that a retry cured still
    tells an operator the limit is tight)."""

    def attempt() -> T:
        try:
            return fn()
        except ProviderCallError as exc:
            metrics.llm_error(provider.name, metrics.llm_error_kind(exc.status))
            raise

    return attempt


def _admission(
    provider: Provider, limiter: RateLimiter | None, estimated_tokens: int
) -> Callable[[], None] | None:
    """What runs before each attempt on ``provider``: wait for its rate limit.

    The provider prepares its SDK client first. Building one imports the SDK (a second or more
    on a busy host) under the provider's lock; a thread that took its token before that would
    hold the token while every other thread took theirs at the paced rate and queued on the
    lock, and all of them would reach the server together when the build ended.
    """
    if limiter is None:
        return None

    def admit() -> None:
        provider.prepare()
        limiter.acquire(estimated_tokens)

    return admit


class LLMClient:
    def __init__(
        self,
        providers: Sequence[ProviderConfig],
        config: ClientConfig | None = None,
        *,
        prices: PriceTable | None = None,
        cache: ResponseCache | None = None,
    ):
        if not providers:
            raise ValueError("an LLM client needs at least one provider")
        names = [p.name for p in providers]
        if len(set(names)) != len(names):
            raise ValueError(f"provider names must be unique, got {names}")
        install_log_redaction()
        self.config = config or ClientConfig()
        self.prices = prices or PriceTable()
        for p in providers:
            if p.input_price_per_mtok is not None and p.output_price_per_mtok is not None:
                self.prices.set(p.model, Price(p.input_price_per_mtok, p.output_price_per_mtok))
        self.providers: list[Provider] = [build_provider(p) for p in providers]
        self.breakers = {
            p.name: breaker_for(p.config.endpoint, self.config.breaker, p.name)
            for p in self.providers
        }
        self.router = Router(self.providers, self.breakers, self.prices, self.config.strategy)
        self._cache = cache
        self._cache_lock = threading.Lock()
        self.totals = CostTotals()

    # -- plumbing -------------------------------------------------------------------------
    @property
    def cache(self) -> ResponseCache | None:
        """Opened lazily so that building a client (e.g. at definitions load) touches no file,
        and once: threads of a client that start together share one store instead of each
        opening its own connection to a new file."""
        if not self.config.cache_enabled:
            return None
        if self._cache is None:
            with self._cache_lock:
                if self._cache is None:
                    self._cache = open_cache(self.config.cache_path)
        return self._cache

    def _limiter(self, provider: Provider) -> RateLimiter | None:
        limits = provider.config.limits
        if limits.requests_per_minute is None and limits.tokens_per_minute is None:
            return None
        return limiter_for(provider.config.endpoint, limits)

    def _price(self, completion: Completion, configured_model: str) -> tuple[Completion, bool]:
        """The completion with its cost, and whether a price was known. The model the server
        reports (often a dated id) is looked up first, then the model configured."""
        price = self.prices.lookup(completion.model) or self.prices.lookup(configured_model)
        if price is None:
            self.prices.cost(configured_model, 0, 0)  # logs the missing price once
            return completion.with_cost(0.0), False
        return completion.with_cost(
            price.cost(completion.input_tokens, completion.output_tokens)
        ), True

    def _account(
        self, completion: Completion, totals: CostTotals | None, priced: bool = True
    ) -> None:
        for target in (self.totals, totals):
            if target is not None:
                target.add(
                    completion.provider,
                    completion.input_tokens,
                    completion.output_tokens,
                    completion.cost_usd if priced else None,
                    cache_hit=completion.cache_hit,
                )

    def _cached(
        self, candidates: Sequence[Provider], messages, params, repeat: int = 0
    ) -> Completion | None:
        cache = self.cache
        if cache is None:
            return None
        start = time.perf_counter()
        for provider in candidates:
            key = cache_key(provider.config.endpoint, provider.model, messages, params, repeat)
            hit = cache.get(key)
            if hit is not None:
                metrics.llm_cache_lookup(provider.name, provider.model)
                return Completion(
                    hit.text,
                    hit.model,
                    hit.input_tokens,
                    hit.output_tokens,
                    0.0,
                    time.perf_counter() - start,
                    hit.provider,
                    cache_hit=True,
                    stop_reason=hit.stop_reason,
                )
        metrics.llm_cache_lookup(None)
        return None

    # -- the interface ----------------------------------------------------------------------
    def complete(
        self,
        prompt: Prompt,
        *,
        params: Params | dict | None = None,
        use_cache: bool = True,
        provider: str | None = None,
        required_capabilities: Sequence[str] = (),
        totals: CostTotals | None = None,
        repeat: int = 0,
    ) -> Completion:
        """One completion, from the cache or the first provider in the route that succeeds.
        ``repeat`` > 0 asks the same request again on purpose (an evaluation's repeats): the
        cache keeps each repeat apart."""
        with tracing.span("flowstone.llm.complete") as span:
            completion = self._complete(
                span, prompt, params, use_cache, provider, required_capabilities, totals, repeat
            )
            _record_usage(span, completion)
            if span.is_recording():
                span.set_attribute("flowstone.llm.provider", completion.provider)
            tracing.mark(span, "cache_hit" if completion.cache_hit else "ok")
            return completion

    def _complete(
        self,
        span,
        prompt: Prompt,
        params: Params | dict | None,
        use_cache: bool,
        provider: str | None,
        required_capabilities: Sequence[str],
        totals: CostTotals | None,
        repeat: int = 0,
    ) -> Completion:
        messages = as_messages(prompt)
        params = params if isinstance(params, Params) else Params.from_mapping(params)
        everyone, skipped = self.router.order(
            messages, params, only=provider, required_capabilities=required_capabilities
        )
        if use_cache:
            # Any provider that could serve this request may have answered it before, even
            # one whose breaker is open now: a stored answer costs nothing.
            cached_from = [
                p
                for p in self.providers
                if (provider is None or p.name == provider)
                and all(c in p.capabilities for c in required_capabilities)
            ]
            hit = self._cached(cached_from, messages, params, repeat)
            if hit is not None:
                self._account(hit, totals)
                return hit
        failures: dict[str, str] = dict(skipped)
        self._count_refusals(skipped)
        errors: list[LLMError] = []
        for candidate in everyone:
            try:
                completion, priced = self._call(candidate, messages, params)
            except LLMError as exc:
                failures[candidate.name] = str(exc)
                errors.append(exc)
                log.warning("provider '%s' failed, trying the next one: %s", candidate.name, exc)
                continue
            if use_cache and self.cache is not None:
                self.cache.put(
                    cache_key(candidate.config.endpoint, candidate.model, messages, params, repeat),
                    completion,
                )
            self._account(completion, totals, priced)
            return completion
        error = errors[0] if len(errors) == 1 and len(failures) == 1 else None
        error = error or NoProviderAvailableError(failures)
        tracing.mark(span, "failed")  # the span records the exception as it escapes
        raise error

    def _count_refusals(self, skipped: dict[str, str]) -> None:
        """Count the providers the router skipped because their breaker is open: requests
        they would have served, refused without a network call."""
        for provider in self.providers:
            if provider.name in skipped and not self.breakers[provider.name].available():
                metrics.llm_call(provider.name, provider.model, "circuit_open")
                metrics.llm_error(provider.name, "circuit_open")

    def _call(
        self, provider: Provider, messages: Sequence[Message], params: Params
    ) -> tuple[Completion, bool]:
        with tracing.span("flowstone.llm.provider_call", _span_attributes(provider)) as span:
            try:
                completion, priced = self._call_provider(provider, messages, params)
            except LLMError as exc:
                outcome = "circuit_open" if isinstance(exc, CircuitOpenError) else "failed"
                metrics.llm_call(provider.name, provider.model, outcome)
                if isinstance(exc, CircuitOpenError | MissingSecretError):
                    kind = "circuit_open" if outcome == "circuit_open" else "missing_secret"
                    metrics.llm_error(provider.name, kind)
                tracing.mark(span, outcome)  # the span records the exception as it escapes
                raise
            _record_success(provider, span, completion, priced)
            tracing.mark(span, "ok")
            return completion, priced

    def _call_provider(
        self, provider: Provider, messages: Sequence[Message], params: Params
    ) -> tuple[Completion, bool]:
        breaker = self.breakers[provider.name]
        if not breaker.try_acquire():
            raise CircuitOpenError(provider.name, breaker.retry_in_s())
        limiter = self._limiter(provider)
        estimate = estimate_tokens("".join(m.content for m in messages)) + params.max_tokens
        try:
            completion = call_with_retry(
                _attempt_counter(provider, lambda: provider.complete(messages, params)),
                provider=provider.name,
                model=provider.model,
                policy=self.config.retry,
                before_attempt=_admission(provider, limiter, estimate),
            )
        except RetryExhaustedError:
            breaker.record_failure()
            raise
        except ProviderCallError:
            breaker.release()  # a 4xx says nothing about the provider's health
            raise
        except LLMError:
            breaker.release()
            raise
        breaker.record_success()
        if limiter is not None:
            limiter.settle(estimate, completion.input_tokens + completion.output_tokens)
        self.router.record_latency(provider.name, completion.latency_s)
        return self._price(completion, provider.model)

    def stream(
        self,
        prompt: Prompt,
        *,
        params: Params | dict | None = None,
        provider: str | None = None,
        totals: CostTotals | None = None,
    ) -> Iterator[StreamChunk]:
        """Stream text; failures before the first chunk are retried and fall back, later ones raise."""
        messages = as_messages(prompt)
        params = params if isinstance(params, Params) else Params.from_mapping(params)
        candidates, skipped = self.router.order(messages, params, only=provider)
        failures = dict(skipped)
        self._count_refusals(skipped)
        estimate = estimate_tokens("".join(m.content for m in messages)) + params.max_tokens
        for candidate in candidates:
            breaker = self.breakers[candidate.name]
            if not breaker.try_acquire():
                failures[candidate.name] = "circuit breaker open"
                metrics.llm_call(candidate.name, candidate.model, "circuit_open")
                metrics.llm_error(candidate.name, "circuit_open")
                continue
            limiter = self._limiter(candidate)

            def start(
                candidate: Provider = candidate,
            ) -> tuple[StreamChunk, Iterator[StreamChunk]]:
                chunks = candidate.stream(messages, params)
                return next(chunks), chunks

            # not a current span: this generator's frame outlives the caller's context
            span = tracing.start_span("flowstone.llm.stream", _span_attributes(candidate))
            try:
                first, rest = call_with_retry(
                    _attempt_counter(candidate, start),
                    provider=candidate.name,
                    model=candidate.model,
                    policy=self.config.retry,
                    before_attempt=_admission(candidate, limiter, estimate),
                )
            except RetryExhaustedError as exc:
                breaker.record_failure()
                failures[candidate.name] = str(exc)
                metrics.llm_call(candidate.name, candidate.model, "failed")
                tracing.finish(span, "failed", exc)
                continue
            except LLMError as exc:
                breaker.release()
                failures[candidate.name] = str(exc)
                if isinstance(exc, MissingSecretError):
                    metrics.llm_error(candidate.name, "missing_secret")
                metrics.llm_call(candidate.name, candidate.model, "failed")
                tracing.finish(span, "failed", exc)
                continue
            try:
                chunk = first
                while True:
                    if chunk.completion is not None:
                        completion, priced = self._price(chunk.completion, candidate.model)
                        self._account(completion, totals, priced)
                        self.router.record_latency(candidate.name, completion.latency_s)
                        _record_success(candidate, span, completion, priced)
                        yield StreamChunk(chunk.text, completion)
                    else:
                        yield chunk
                    chunk = next(rest)
            except StopIteration:
                breaker.record_success()
                tracing.finish(span, "ok")
                return
            except ProviderCallError as exc:
                breaker.record_failure()
                metrics.llm_error(candidate.name, metrics.llm_error_kind(exc.status))
                metrics.llm_call(candidate.name, candidate.model, "failed")
                tracing.finish(span, "failed", exc)
                raise
            except GeneratorExit:
                tracing.finish(span, "cancelled")
                raise
            except BaseException as exc:
                tracing.finish(span, "failed", exc)
                raise
        raise NoProviderAvailableError(failures)

    def health(self) -> dict[str, Health]:
        """Check every provider now and remember the result for routing."""
        out = {}
        for provider in self.providers:
            result = provider.health()
            self.router.mark_health(provider.name, result.ok, result.detail)
            out[provider.name] = result
        return out

    def breaker_states(self) -> dict[str, str]:
        return {name: str(b.state) for name, b in self.breakers.items()}

    def complete_many(
        self,
        prompts: Sequence[Prompt],
        *,
        params: Params | dict | None = None,
        use_cache: bool = True,
        concurrency: int | None = None,
        progress: Callable[[int], None] | None = None,
        labels: Sequence[str] | None = None,
        totals: CostTotals | None = None,
        repeats: Sequence[int] | None = None,
    ) -> list[Completion]:
        """One completion per prompt, in order, up to ``concurrency`` (the configured
        ``max_concurrency`` by default) in flight; see :func:`flowstone.llm.batch.complete_many`."""
        return complete_many(
            self,
            prompts,
            params=params,
            use_cache=use_cache,
            concurrency=concurrency or self.config.max_concurrency,
            progress=progress,
            labels=labels,
            totals=totals,
            repeats=repeats,
        )
