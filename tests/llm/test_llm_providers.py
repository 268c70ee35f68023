"""Each provider adapter against the stub over HTTP, through its official SDK."""

from __future__ import annotations

import pytest

from flowstone.llm.types import Message


@pytest.mark.parametrize("kind", ["anthropic", "openai", "gemini"])
def test_complete_reads_text_usage_and_prices_it(stub, make_client, provider, kind):
    client = make_client(provider(kind), cache=False)
    completion = client.complete(
        [Message("system", "Be brief."), Message("user", "What is the capital of France?")],
        params={"max_tokens": 20},
    )
    assert completion.text == "stub answer: What is the capital of France?"
    assert completion.provider == kind
    assert completion.input_tokens > 0 and completion.output_tokens == 8
    assert completion.cost_usd > 0
    assert completion.cache_hit is False
    sent = stub.state.requests[-1]
    assert sent["api"] == kind
    if kind == "anthropic":
        assert sent["body"]["system"] == "Be brief." and sent["body"]["max_tokens"] == 20
    if kind == "openai":
        assert sent["body"]["messages"][0] == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize("kind", ["anthropic", "openai", "gemini"])
def test_stream_yields_chunks_then_the_completion(stub, make_client, provider, kind):
    client = make_client(provider(kind), cache=False)
    chunks = list(client.stream("please stream these five words"))
    text = "".join(c.text for c in chunks)
    assert text == "stub answer: please stream these five words"
    assert len([c for c in chunks if c.text]) >= 5
    final = chunks[-1].completion
    assert final is not None and final.text == text
    assert final.output_tokens == 7 and final.cost_usd > 0
    assert client.totals.calls == 1


def test_local_baseline_is_deterministic_and_offline(stub, make_client, provider):
    client = make_client(provider("local"), cache=False)
    first = client.complete("Instructions here.\n\nThe sky is blue. It rains.")
    second = client.complete("Instructions here.\n\nThe sky is blue. It rains.")
    assert first.text == second.text == "The sky is blue."
    assert stub.calls == 0
    assert client.totals.unpriced_calls == 0


@pytest.mark.parametrize("kind", ["anthropic", "openai", "gemini"])
def test_health_reports_a_reachable_provider(make_client, provider, kind):
    client = make_client(provider(kind))
    assert client.health()[kind].ok


def test_health_reports_an_unreachable_provider_and_routing_skips_it(stub, make_client, provider):
    dead = provider("openai", name="dead", base_url="http://127.0.0.1:9/v1", timeout_s=0.5)
    client = make_client(dead, provider("local"), cache=False)
    health = client.health()
    assert not health["dead"].ok and health["local"].ok
    assert client.complete("Only the local one. Yes.").provider == "local"
