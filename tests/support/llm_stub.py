"""Fixtures for tests that call LLM providers through the loopback stub server.

tests/llm and tests/telemetry both run support.llm_stub_server and reset the process-wide
breakers and rate limiters around each test; fixtures do not cross test folders, so each had a
copy. A conftest.py imports the fixtures it wants from here (importing registers them there):
``stub = llm_stub.stub`` after ``from support import llm_stub``.
"""

from __future__ import annotations

import pytest

from flowstone.llm.breaker import reset_breakers
from flowstone.llm.ratelimit import reset_limiters
from support.llm_stub_server import StubLLMServer


@pytest.fixture(scope="session")
def stub_server():
    """One StubLLMServer on 127.0.0.1 for the session (of the folder that imports it)."""
    with StubLLMServer() as server:
        yield server


@pytest.fixture
def stub(stub_server):
    """The session's stub, cleared before and after the test: no recorded requests, faults or
    scripted replies, no latency, no rate limit, any API key accepted."""
    stub_server.reset()
    stub_server.state.latency_s = 0.0
    stub_server.state.requests_per_minute = None
    stub_server.state.expected_key = None
    yield stub_server
    stub_server.reset()


@pytest.fixture(autouse=True)
def fresh_llm_registries():
    """Breakers and rate limits are process-wide; each test starts from closed and full."""
    reset_breakers()
    reset_limiters()
    yield
    reset_breakers()
    reset_limiters()
