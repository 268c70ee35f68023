"""Rate limits and breakers shared across processes through FLOWSTONE_LLM_STATE (Redis).

Processes are spawned (a fresh interpreter each, like a Celery or multiprocess-executor step)
and call the loopback stub, which enforces its own requests-per-minute limit and answers 429
beyond it. Each test uses a key prefix of its own on the machine's Redis (or one started for
the session), so tests never see each other's buckets. Rates are measured over windows of
several seconds with generous margins; counts are exact.
"""

from __future__ import annotations

import logging
import uuid

import pytest
from support.apt import CannotInstall
from support.llm_processes import Load, run_processes
from support.net import free_port
from support.redis_server import redis_server

from flowstone.errors import ConfigError
from flowstone.llm import state
from flowstone.llm.breaker import BreakerConfig, SharedCircuitBreaker, breaker_for
from flowstone.llm.client import LLMClient
from flowstone.llm.config import ClientConfig, ProviderConfig
from flowstone.llm.errors import LLMError
from flowstone.llm.ratelimit import RateLimiter, RateLimits, SharedRateLimiter, limiter_for
from flowstone.llm.retry import RetryPolicy
from flowstone.ops.checks.llm_state import check_llm_state

LIMIT = 60.0  # per minute, client and server: one request a second


@pytest.fixture(scope="session")
def redis_base():
    try:
        with redis_server() as url:
            yield url
    except CannotInstall as exc:
        pytest.skip(str(exc))


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    monkeypatch.delenv(state.ENV, raising=False)
    state.reset_shared_state()
    yield
    state.reset_shared_state()


@pytest.fixture
def state_url(redis_base):
    """A FLOWSTONE_LLM_STATE of this test's own (a fresh key prefix), deleted afterwards."""
    url = f"{redis_base}?prefix=flowstone-test:{uuid.uuid4().hex[:12]}"
    yield url
    store = state.RedisState(state.parse_state_url(url))
    try:
        store.clear()
    finally:
        store.close()


def _provider(stub, **limits) -> ProviderConfig:
    return ProviderConfig(
        "openai",
        "openai",
        "gpt-4o-mini",
        base_url=stub.openai_url,
        api_key="sk-shared-state-000000000",  # the processes' key: the same endpoint
        timeout_s=10.0,
        limits=RateLimits(**limits),
    )


def _client(stub, breaker: BreakerConfig | None = None, **limits) -> LLMClient:
    return LLMClient(
        [_provider(stub, **limits)],
        ClientConfig(
            retry=RetryPolicy(max_attempts=1),
            breaker=breaker or BreakerConfig(),
            cache_enabled=False,
        ),
    )


@pytest.mark.slow
def test_processes_share_one_limit_and_no_429_reaches_a_caller(stub, state_url):
    stub.state.requests_per_minute = LIMIT
    stub.state.rate_burst = 2
    stub.state.latency_s = 0.05
    loads = [
        Load(
            stub.openai_url,
            requests=6,
            state_url=state_url,
            requests_per_minute=LIMIT,
            threads=3,
            max_attempts=3,
            tag=f"p{i}",
        )
        for i in range(3)
    ]
    outcome = run_processes(loads)
    assert outcome.errors == []
    assert outcome.ok == 18
    # the server refused (almost) nothing: three processes drew from one bucket; each on its
    # own would offer three times the limit and be refused every other request
    assert stub.state.counts[429] <= 2
    # 18 requests paced at one a second take ~17 s; the combined rate stays at the limit
    assert outcome.elapsed > 12
    assert outcome.per_minute <= LIMIT * 1.3


@pytest.mark.slow
def test_an_open_breaker_in_one_process_refuses_calls_in_another(stub, state_url, monkeypatch):
    breaker = BreakerConfig(failure_threshold=1, recovery_timeout_s=60)
    stub.inject("500")
    opener = Load(
        stub.openai_url, requests=1, state_url=state_url, threads=1, failure_threshold=1,
        recovery_timeout_s=60, tag="opener",
    )  # fmt: skip
    outcome = run_processes([opener])
    assert outcome.errors == ["status:500"]
    assert stub.state.counts["requests"] == 1

    monkeypatch.setenv(state.ENV, state_url)
    client = _client(stub, breaker)
    assert isinstance(client.breakers["openai"], SharedCircuitBreaker)
    assert client.breaker_states() == {"openai": "open"}
    with pytest.raises(LLMError, match="breaker"):
        client.complete("refused without a request", use_cache=False)
    assert stub.state.counts["requests"] == 1  # no request left this process


def test_half_open_trials_are_counted_across_processes(state_url, monkeypatch):
    """Two breakers on one key stand for two processes: one trial between them."""
    monkeypatch.setenv(state.ENV, state_url)
    config = BreakerConfig(failure_threshold=1, recovery_timeout_s=0.0)
    store = state.shared_state()
    assert store is not None
    first = SharedCircuitBreaker("endpoint-x", config, store)
    second = SharedCircuitBreaker("endpoint-x", config, store)
    assert first.try_acquire()
    first.record_failure()  # open; recovery 0 s: half-open at the next look
    assert first.try_acquire() is True  # the one trial
    assert second.try_acquire() is False  # the other process waits for its outcome
    first.record_success()
    assert second.state == "closed" and second.try_acquire()
    assert ("closed", "open") in first.transitions


def test_token_budget_is_shared_and_settled(state_url, monkeypatch):
    """Two limiters on one key stand for two processes: what one takes, the other waits for;
    what one gives back at settle, the other gets at once."""
    monkeypatch.setenv(state.ENV, state_url)
    store = state.shared_state()
    assert store is not None
    limits = RateLimits(tokens_per_minute=600)  # 10 a second, a bucket of 10
    first = SharedRateLimiter("endpoint-z", limits, store)
    second = SharedRateLimiter("endpoint-z", limits, store)
    assert first.acquire(10) == 0.0
    first.settle(10, 1)  # the provider counted 1 token: 9 go back to everyone
    assert second.acquire(9) == 0.0
    assert first.acquire(10) > 0.0  # the bucket is empty for both


def test_redis_down_falls_back_to_per_process_limits_with_one_warning(stub, monkeypatch, caplog):
    monkeypatch.setenv(state.ENV, f"redis://127.0.0.1:{free_port()}/0")
    client = _client(stub, requests_per_minute=600, tokens_per_minute=600_000)
    assert isinstance(client._limiter(client.providers[0]), SharedRateLimiter)
    with caplog.at_level(logging.WARNING, logger="flowstone.llm.state"):
        answers = [client.complete(f"call {i}", use_cache=False) for i in range(4)]
        other = LLMClient([_provider(stub, requests_per_minute=300)], client.config)
        answers.append(other.complete("another client", use_cache=False))
    assert len(answers) == 5 and stub.state.counts[200] == 5
    warnings = [r for r in caplog.records if r.name == "flowstone.llm.state"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "falls back to its own rate limits" in warnings[0].getMessage()
    assert state.ENV in warnings[0].getMessage()


def test_unset_keeps_the_in_process_limiter_and_breaker(stub):
    limiter = limiter_for("endpoint-y", RateLimits(requests_per_minute=60))
    assert type(limiter) is RateLimiter
    assert type(breaker_for("endpoint-y", BreakerConfig())).__name__ == "CircuitBreaker"
    assert _client(stub).complete("hello", use_cache=False).text


@pytest.mark.parametrize(
    "value",
    [
        "redis://127.0.0.1:notaport/0",
        "http://127.0.0.1:6379/0",
        "redis://",
        "redis://127.0.0.1:6379/first",
        "redis://127.0.0.1:6379/0?ttl=5",
        "postgresql://flowstone@127.0.0.1/dagster",
    ],
)
def test_a_malformed_url_is_a_config_error_naming_the_variable(stub, monkeypatch, value):
    monkeypatch.setenv(state.ENV, value)
    with pytest.raises(ConfigError, match=state.ENV):
        _client(stub)  # at construction: before any call


def test_a_password_never_shows(monkeypatch):
    with pytest.raises(ConfigError) as err:
        state.parse_state_url("redis://user:s3cret@127.0.0.1:99999/0")
    assert "s3cret" not in str(err.value)
    parsed = state.parse_state_url("rediss://user:s3cret@cache.example:6380/2?prefix=team")
    assert parsed.prefix == "team" and "s3cret" not in parsed.display + repr(parsed)


def test_doctor_shows_the_backend_and_whether_it_answers(state_url, monkeypatch):
    result = check_llm_state()
    assert (result.status, "in-process") == ("ok", result.detail.split(" ")[0])

    monkeypatch.setenv(state.ENV, state_url)
    result = check_llm_state()
    assert result.status == "ok", result.detail
    assert "redis at redis://127.0.0.1:" in result.detail and "answers" in result.detail

    monkeypatch.setenv(state.ENV, f"redis://127.0.0.1:{free_port()}/0")
    result = check_llm_state()
    assert result.status == "warn" and "does not answer" in result.detail

    monkeypatch.setenv(state.ENV, "redis://:6379")
    result = check_llm_state()
    assert result.status == "fail" and state.ENV in result.detail
