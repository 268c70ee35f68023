"""Retries, breakers, fallback and rate limits against injected faults on the stub."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from flowstone.llm.breaker import BreakerConfig, BreakerState
from flowstone.llm.errors import NoProviderAvailableError, ProviderCallError, RetryExhaustedError
from flowstone.llm.ratelimit import RateLimits
from flowstone.llm.retry import RetryPolicy


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_every_transient_fault_is_retried_then_succeeds(stub, make_client, provider, kind):
    client = make_client(provider(kind), retry=RetryPolicy(6, 0.01, 0.05), cache=False)
    stub.inject("429:0.01", "500", "529", "drop", "malformed")
    completion = client.complete("survive this")
    assert completion.text == "stub answer: survive this"
    assert stub.calls == 6
    for fault in ("429", "500", "529", "drop", "malformed"):
        assert stub.state.counts[fault] == 1


def test_retry_after_is_honoured(stub, make_client, provider):
    client = make_client(provider("openai"), cache=False)
    stub.inject("429:0.6")
    start = time.perf_counter()
    client.complete("wait for me")
    assert time.perf_counter() - start >= 0.55
    assert stub.calls == 2


def test_slow_reply_times_out_and_is_retried(stub, make_client, provider):
    client = make_client(provider("anthropic", timeout_s=0.3), cache=False)
    stub.inject("slow:1.0")
    assert client.complete("be quick").text == "stub answer: be quick"
    assert stub.state.counts["slow"] == 1 and stub.calls == 2


def test_retry_exhausted_names_provider_model_and_last_status(stub, make_client, provider):
    client = make_client(provider("anthropic"), retry=RetryPolicy(3, 0.01, 0.02), cache=False)
    stub.inject("500", "529", "529")
    with pytest.raises(RetryExhaustedError) as info:
        client.complete("doomed")
    message = str(info.value)
    assert "'anthropic'" in message and "claude-haiku-4-5" in message and "529" in message
    assert "3 attempt" in message
    assert info.value.last_status == 529
    assert stub.calls == 3


@pytest.mark.parametrize("status", ["400", "401", "403", "404"])
def test_permanent_errors_are_not_retried(stub, make_client, provider, status):
    client = make_client(provider("openai"), cache=False)
    stub.inject(status)
    with pytest.raises(ProviderCallError) as info:
        client.complete("no point retrying")
    assert info.value.status == int(status) and not info.value.retryable
    assert stub.calls == 1


class _Clock:
    """A breaker clock the test moves: no wall-clock window between "open" and "half open"."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_fails_fast_then_recovers_through_half_open(
    stub, make_client, provider, monkeypatch
):
    breaker = BreakerConfig(failure_threshold=2, recovery_timeout_s=0.4)
    client = make_client(
        provider("openai"), retry=RetryPolicy(1, 0.01, 0.01), breaker=breaker, cache=False
    )
    clock = _Clock()
    monkeypatch.setattr(client.breakers["openai"], "_clock", clock)
    stub.inject("500", "500")
    for _ in range(2):
        with pytest.raises(RetryExhaustedError):
            client.complete("fail")
    assert client.breaker_states() == {"openai": "open"}
    calls = stub.calls
    with pytest.raises(NoProviderAvailableError, match="circuit breaker open"):
        client.complete("fail fast")
    assert stub.calls == calls  # no request reached the provider while open
    clock.now += 0.3
    assert client.breakers["openai"].state is BreakerState.OPEN  # not before its timeout
    clock.now += 0.2
    assert client.breakers["openai"].state is BreakerState.HALF_OPEN
    assert client.complete("trial call").text == "stub answer: trial call"
    assert client.breaker_states() == {"openai": "closed"}
    assert client.breakers["openai"].transitions == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


def test_failed_half_open_trial_reopens(stub, make_client, provider, monkeypatch):
    breaker = BreakerConfig(failure_threshold=1, recovery_timeout_s=0.2)
    client = make_client(
        provider("anthropic"), retry=RetryPolicy(1, 0.01, 0.01), breaker=breaker, cache=False
    )
    clock = _Clock()
    monkeypatch.setattr(client.breakers["anthropic"], "_clock", clock)
    stub.inject("529")
    with pytest.raises(RetryExhaustedError):
        client.complete("a")
    clock.now += 0.25
    assert client.breakers["anthropic"].state is BreakerState.HALF_OPEN
    stub.inject("529")
    with pytest.raises(RetryExhaustedError):
        client.complete("b")
    assert client.breaker_states() == {"anthropic": "open"}


def test_fallback_to_next_provider_when_the_first_is_exhausted(stub, make_client, provider):
    client = make_client(
        provider("anthropic"), provider("openai"), retry=RetryPolicy(2, 0.01, 0.02), cache=False
    )
    stub.inject("529", "529")
    completion = client.complete("fall back please")
    assert completion.provider == "openai"
    assert [r["api"] for r in stub.state.requests] == ["anthropic", "anthropic", "openai"]


def test_fallback_when_first_provider_has_no_key(stub, make_client, provider, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    client = make_client(provider("anthropic", api_key=None), provider("openai"), cache=False)
    assert client.complete("keyless first").provider == "openai"


def test_open_breaker_is_skipped_by_the_router(stub, make_client, provider):
    breaker = BreakerConfig(failure_threshold=1, recovery_timeout_s=30)
    client = make_client(
        provider("anthropic"),
        provider("openai"),
        retry=RetryPolicy(1, 0.01, 0.01),
        breaker=breaker,
        cache=False,
    )
    stub.inject("500")
    assert client.complete("first").provider == "openai"  # anthropic failed, opened
    stub.reset()
    assert client.complete("second").provider == "openai"
    assert [r["api"] for r in stub.state.requests] == ["openai"]


def test_routing_strategies(stub, make_client, provider):
    cheap = provider("openai", name="cheap", model="gpt-4o-mini")
    dear = provider(
        "anthropic",
        name="dear",
        model="claude-opus-4-1",
        capabilities=("long_context",),
        capability_rank=9,
    )
    assert (
        make_client(dear, cheap, strategy="cheapest", cache=False).complete("x").provider == "cheap"
    )
    assert (
        make_client(cheap, dear, strategy="most_capable", cache=False).complete("x").provider
        == "dear"
    )
    rr = make_client(cheap, dear, strategy="round_robin", cache=False)
    assert [rr.complete("x").provider for _ in range(4)] == ["cheap", "dear", "cheap", "dear"]
    fast = make_client(cheap, dear, strategy="fastest", cache=False)
    stub.state.latency_s = 0.15
    fast.complete("measure cheap", provider="cheap")
    stub.state.latency_s = 0.0
    fast.complete("measure dear", provider="dear")
    assert fast.complete("x").provider == "dear"
    capable = make_client(cheap, dear, cache=False)
    assert capable.complete("x", required_capabilities=["long_context"]).provider == "dear"


def test_rate_limit_is_respected_under_parallel_load(stub, make_client, provider):
    """Client paced at 600/min (10/s) against a server enforcing the same: no 429 appears."""
    stub.state.requests_per_minute = 600
    stub.state.rate_burst = 2
    client = make_client(
        provider("openai", limits=RateLimits(requests_per_minute=600)), cache=False
    )
    # One call first, so that the elapsed time below is pacing, not the SDK client's build.
    assert client.complete("warm up").text == "stub answer: warm up"
    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: client.complete(f"parallel {i}"), range(20)))
    elapsed = time.perf_counter() - start
    assert len(results) == 20
    assert stub.state.counts[429] == 0
    assert elapsed >= 1.8  # 20 requests at 10/s, the first one free
    assert elapsed < 6.0


def test_a_cold_client_is_paced_from_its_first_request(stub, make_client, provider, monkeypatch):
    """Threads that start on a client whose SDK client is not built yet: none holds a rate
    limit token while the SDK loads, so they do not reach the server together when it has."""
    from flowstone.llm.providers.openai import OpenAIProvider

    stub.state.requests_per_minute = 600  # 10/s, at most two at once
    stub.state.rate_burst = 2
    build = OpenAIProvider._build_sdk_client

    def slow_build(self):
        time.sleep(1.5)  # importing the SDK on a busy host
        return build(self)

    monkeypatch.setattr(OpenAIProvider, "_build_sdk_client", slow_build)
    client = make_client(
        provider("openai", limits=RateLimits(requests_per_minute=120)), cache=False
    )
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: client.complete(f"cold {i}"), range(4)))
    assert [r.text for r in results] == [f"stub answer: cold {i}" for i in range(4)]
    assert stub.state.counts[429] == 0
    assert stub.calls == 4  # no request was refused and sent again


def test_without_client_limits_the_server_429s_are_absorbed_by_retries(stub, make_client, provider):
    stub.state.requests_per_minute = 600
    stub.state.rate_burst = 1
    client = make_client(provider("openai"), retry=RetryPolicy(20, 0.01, 0.05), cache=False)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: client.complete(f"burst {i}"), range(10)))
    assert len(results) == 10
    assert stub.state.counts[429] > 0  # the server did push back
