"""Fixtures for the telemetry tests: the loopback LLM stub, span capture, scrape helpers.

``stub_server``, ``stub`` and the autouse ``fresh_llm_registries`` come from
tests/support/llm_stub.py (shared with tests/llm); they start tests/support/llm_stub_server.py
on 127.0.0.1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support import llm_stub

from flowstone.llm.breaker import BreakerConfig
from flowstone.llm.client import LLMClient
from flowstone.llm.config import ClientConfig, ProviderConfig
from flowstone.llm.retry import RetryPolicy
from flowstone.telemetry import tracing

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # for telemetry_helpers (tests run with --import-mode=importlib)

ANTHROPIC_KEY = "sk-ant-api03-TESTKEYtelemetry0123456789"
FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)

stub_server = llm_stub.stub_server
stub = llm_stub.stub
fresh_llm_registries = llm_stub.fresh_llm_registries


@pytest.fixture
def make_client(stub, tmp_path: Path):
    """``make_client(name=..., cache=True, failure_threshold=3)``: an Anthropic-SDK client on
    the stub with fast retries."""

    def build(name: str = "anthropic", *, cache: bool = True, failure_threshold: int = 3):
        provider = ProviderConfig(
            name=name,
            kind="anthropic",
            model="claude-haiku-4-5",
            base_url=stub.url,
            api_key=ANTHROPIC_KEY,
            timeout_s=5.0,
        )
        config = ClientConfig(
            retry=FAST_RETRY,
            breaker=BreakerConfig(failure_threshold=failure_threshold, recovery_timeout_s=30.0),
            cache_enabled=cache,
            cache_path=str(tmp_path / f"cache-{name}.sqlite"),
        )
        return LLMClient([provider], config)

    return build


@pytest.fixture
def spans():
    """Spans on for this test, kept in the SDK's InMemorySpanExporter (exported as they end)."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracing.configure(exporter, batch=False)
    yield exporter
    tracing.reset()  # the next span decides again from the environment
