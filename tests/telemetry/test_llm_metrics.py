"""LLM metrics through the official Anthropic SDK against the loopback provider stub."""

from __future__ import annotations

import pytest
from telemetry_helpers import sample, scrape

from flowstone.llm.errors import LLMError, ProviderCallError, RetryExhaustedError
from flowstone.telemetry.metrics import registry, serve_metrics

MODEL = "claude-haiku-4-5"


def value(name: str, **labels: str) -> float:
    return registry().get_sample_value(name, labels) or 0.0


def test_calls_tokens_cost_and_cache_hits(make_client, stub):
    provider = "anthropic-ok"
    client = make_client(provider)
    labels = {"provider": provider, "model": MODEL}
    misses = value("flowstone_llm_cache_misses_total")
    first = client.complete("what is the capital of France?")
    again = client.complete("what is the capital of France?")
    assert not first.cache_hit and again.cache_hit and stub.calls == 1
    assert value("flowstone_llm_calls_total", **labels, outcome="ok") == 1
    assert value("flowstone_llm_tokens_total", **labels, direction="input") == first.input_tokens
    assert value("flowstone_llm_tokens_total", **labels, direction="output") == first.output_tokens
    assert first.cost_usd > 0
    assert value("flowstone_llm_cost_usd_total", **labels) == pytest.approx(first.cost_usd)
    assert value("flowstone_llm_call_seconds_count", **labels) == 1
    assert value("flowstone_llm_cache_hits_total", **labels) == 1
    assert value("flowstone_llm_cache_misses_total") == misses + 1
    chunks = list(client.stream("stream this please"))
    final = chunks[-1].completion
    assert final is not None
    assert value("flowstone_llm_calls_total", **labels, outcome="ok") == 2
    assert value("flowstone_llm_tokens_total", **labels, direction="output") == (
        first.output_tokens + final.output_tokens
    )


def test_errors_by_kind_breaker_state_and_circuit_open(make_client, stub):
    provider = "anthropic-faulty"
    client = make_client(provider, cache=False, failure_threshold=2)
    labels = {"provider": provider, "model": MODEL}
    stub.inject("429:0")
    client.complete("a rate limited then fine call")  # the retry cures it
    assert value("flowstone_llm_errors_total", provider=provider, kind="rate_limited") == 1
    assert value("flowstone_llm_calls_total", **labels, outcome="ok") == 1
    stub.inject("401")
    with pytest.raises(ProviderCallError):
        client.complete("a call with a bad key")
    assert value("flowstone_llm_errors_total", provider=provider, kind="auth") == 1
    for _ in range(2):  # two calls whose three attempts all fail open the breaker
        stub.inject("500", "529", "500")
        with pytest.raises(RetryExhaustedError):
            client.complete("an overloaded provider")
    assert value("flowstone_llm_errors_total", provider=provider, kind="server_error") == 4
    assert value("flowstone_llm_errors_total", provider=provider, kind="overloaded") == 2
    assert value("flowstone_llm_calls_total", **labels, outcome="failed") == 3
    assert value("flowstone_llm_breaker_transitions_total", provider=provider, state="open") == 1
    calls = stub.calls
    with pytest.raises(LLMError, match="circuit breaker open"):
        client.complete("refused without a request")
    assert stub.calls == calls  # no request left the process
    assert value("flowstone_llm_calls_total", **labels, outcome="circuit_open") == 1
    assert value("flowstone_llm_errors_total", provider=provider, kind="circuit_open") == 1
    server = serve_metrics(0)  # the breaker gauge is read at scrape time, over HTTP
    try:
        _, text = scrape(server.url)
    finally:
        server.close()
    assert sample(text, "flowstone_llm_breaker_state", provider=provider, state="open") == 1
    assert sample(text, "flowstone_llm_breaker_state", provider=provider, state="closed") == 0
    assert sample(text, "flowstone_llm_errors_total", provider=provider, kind="auth") == 1


def test_a_failing_hook_never_fails_the_call(make_client, stub, caplog, monkeypatch):
    from flowstone.telemetry import metrics

    client = make_client("anthropic-hook", cache=False)
    family = metrics._get().llm_calls
    monkeypatch.setattr(family, "children", {})
    monkeypatch.setattr(family, "metric", object())  # .labels() now raises AttributeError
    monkeypatch.setattr(metrics, "_warned", set())
    completion = client.complete("still answered")
    assert completion.text.startswith("stub answer")
    assert "metrics hook llm_call failed" in caplog.text
