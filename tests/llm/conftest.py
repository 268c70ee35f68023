"""Fixtures for the LLM tests: one stub provider server on 127.0.0.1 for the session, and
clients pointed at it through the official SDKs with small backoffs.

``stub_server``, ``stub`` and the autouse ``fresh_registries`` (breakers and rate limits reset
around each test) come from tests/support/llm_stub.py, shared with the telemetry tests."""

from __future__ import annotations

import pytest
from support import llm_stub

from flowstone.llm.breaker import BreakerConfig
from flowstone.llm.client import LLMClient
from flowstone.llm.config import ClientConfig, ProviderConfig
from flowstone.llm.retry import RetryPolicy

ANTHROPIC_KEY = "sk-ant-api03-TESTKEYdoNotLeak0123456789"
OPENAI_KEY = "sk-proj-TESTKEYdoNotLeakEither9876543210"
GEMINI_KEY = "AIzaTESTKEYdoNotLeak000000000000000"
FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)

stub_server = llm_stub.stub_server
stub = llm_stub.stub
fresh_registries = llm_stub.fresh_llm_registries


def _provider(stub, kind: str, name: str | None = None, **overrides) -> ProviderConfig:
    defaults = {
        "anthropic": ("claude-haiku-4-5", stub.url, ANTHROPIC_KEY),
        "openai": ("gpt-4o-mini", stub.openai_url, OPENAI_KEY),
        "gemini": ("gemini-2.5-flash", stub.url, GEMINI_KEY),
        "local": ("local-baseline", None, None),
    }
    model, url, key = defaults[kind]
    values = {
        "name": name or kind,
        "kind": kind,
        "model": model,
        "base_url": url,
        "api_key": key,
        "timeout_s": 5.0,
    }
    values.update(overrides)
    return ProviderConfig(**values)


@pytest.fixture
def provider(stub):
    """``provider("openai", name=..., **overrides)``: a ProviderConfig pointed at the stub."""
    return lambda kind, name=None, **overrides: _provider(stub, kind, name, **overrides)


@pytest.fixture
def keys():
    return {"anthropic": ANTHROPIC_KEY, "openai": OPENAI_KEY, "gemini": GEMINI_KEY}


@pytest.fixture
def make_client(stub, tmp_path):
    def build(
        *providers: ProviderConfig,
        retry=FAST_RETRY,
        breaker=None,
        cache=True,
        strategy="fallback",
        limits=None,
    ):
        config = ClientConfig(
            strategy=strategy,
            retry=retry,
            breaker=breaker or BreakerConfig(failure_threshold=3, recovery_timeout_s=0.5),
            cache_enabled=cache,
            cache_path=str(tmp_path / "llm_cache.sqlite"),
        )
        return LLMClient(list(providers) or [_provider(stub, "anthropic")], config)

    return build
