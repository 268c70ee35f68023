"""One identity per endpoint: two OpenAI-compatible servers serving one model name never
share a cached answer, a breaker or a rate limit; two systems on one endpoint share them."""

from __future__ import annotations

import pytest
from support.llm_stub_server import StubLLMServer

from flowstone.llm.breaker import BreakerConfig, BreakerState
from flowstone.llm.client import LLMClient
from flowstone.llm.config import ClientConfig, ProviderConfig
from flowstone.llm.errors import LLMError
from flowstone.llm.retry import RetryPolicy

KEY = "sk-proj-TESTKEYdoNotLeakEither9876543210"


@pytest.fixture
def two_hosts():
    """Two vLLM-like servers speaking the OpenAI protocol, each naming itself in its reply."""
    first, second = StubLLMServer().start(), StubLLMServer().start()
    first.state.reply = lambda prompt: "answer from host A"
    second.state.reply = lambda prompt: "answer from host B"
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


def client_for(server: StubLLMServer, tmp_path, name: str = "openai", **config) -> LLMClient:
    provider = ProviderConfig(
        name=name, kind="openai", model="llama-3-8b", base_url=server.openai_url, api_key=KEY
    )
    return LLMClient(
        [provider],
        ClientConfig(
            retry=RetryPolicy(max_attempts=1),
            breaker=BreakerConfig(failure_threshold=2, recovery_timeout_s=300),
            cache_path=str(tmp_path / "shared-cache.sqlite"),  # one cache file for both
            **config,
        ),
    )


def test_the_same_model_on_two_hosts_never_answers_for_the_other(two_hosts, tmp_path):
    first, second = two_hosts
    a, b = client_for(first, tmp_path), client_for(second, tmp_path)
    assert a.providers[0].config.endpoint != b.providers[0].config.endpoint
    assert a.complete("Which host?").text == "answer from host A"
    reply = b.complete("Which host?")
    assert reply.text == "answer from host B" and not reply.cache_hit
    assert second.calls == 1
    # each host's answer is cached under its own endpoint: a rerun costs nothing
    assert b.complete("Which host?").cache_hit and second.calls == 1


def test_an_open_breaker_on_one_host_does_not_refuse_the_other(two_hosts, tmp_path):
    first, second = two_hosts
    a, b = client_for(first, tmp_path, cache_enabled=False), client_for(second, tmp_path)
    first.inject("500", "500")
    for _ in range(2):
        with pytest.raises(LLMError):
            a.complete("Anyone there?")
    assert a.breakers["openai"].state is BreakerState.OPEN
    assert b.breakers["openai"].state is BreakerState.CLOSED
    assert b.complete("Anyone there?").text == "answer from host B"


def test_two_systems_on_one_endpoint_share_its_breaker_and_limiter(two_hosts, tmp_path):
    first, _ = two_hosts
    one = client_for(first, tmp_path, name="system-one")
    other = client_for(first, tmp_path, name="system-two")  # another name, the same endpoint
    assert one.breakers["system-one"] is other.breakers["system-two"]
    limited = ProviderConfig(
        name="x",
        kind="openai",
        model="llama-3-8b",
        base_url=first.openai_url + "/",  # a trailing slash is the same server
        api_key=KEY,
    )
    assert limited.endpoint == one.providers[0].config.endpoint


def test_the_endpoint_names_the_credential_by_hash_only():
    by_ref = ProviderConfig(name="o", kind="openai", model="m", api_key_ref="env:TEAM_A_OPENAI_KEY")
    other_ref = ProviderConfig(
        name="o", kind="openai", model="m", api_key_ref="env:TEAM_B_OPENAI_KEY"
    )
    by_value = ProviderConfig(name="o", kind="openai", model="m", api_key=KEY)
    assert by_ref.endpoint != other_ref.endpoint  # two credentials: two budgets, two breakers
    assert by_ref.endpoint.startswith("openai:m@https://api.openai.com/v1#")
    assert KEY not in by_value.endpoint and "TEAM_A" not in by_ref.endpoint
