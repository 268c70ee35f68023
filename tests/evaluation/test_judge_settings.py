"""Judge settings from evaluation.yaml (timeout, retries, rate limits, concurrency, repeats) and
a provider failure inside a judge, against the stub provider server on 127.0.0.1 through the
official SDKs (tests/support/llm_stub_server.py)."""

from __future__ import annotations

import itertools
import json
import math
import threading

import pytest
import yaml
from support import llm_stub
from support.llm_stub_server import StubLLMServer
from support.net import free_port

from flowstone.errors import ConfigError, FlowStoneError
from flowstone.evaluation.config import load_settings, parse_settings
from flowstone.evaluation.judge_metric import JudgedScores, JudgeProviderError
from flowstone.evaluation.metrics import OptionError, compute
from flowstone.llm.config import ProviderConfig
from flowstone.llm.errors import LLMError
from flowstone.llm.ratelimit import RateLimits, limiter_for

stub_server = llm_stub.stub_server
stub = llm_stub.stub
fresh_registries = llm_stub.fresh_llm_registries

JUDGE = "llm_semantic_similarity"
KEY_ENV = "FLOWSTONE_TEST_JUDGE_KEY"
PREDICTIONS = ["the sky is blue", "water boils at 100 C"]
REFERENCES = ["blue", "at one hundred degrees"]


@pytest.fixture(autouse=True)
def judge_env(tmp_path, monkeypatch):
    """A response cache of the test's own (the judge's client opens it under DAGSTER_HOME) and
    a key for the stub."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FLOWSTONE_LLM_CACHE", raising=False)
    monkeypatch.setenv(KEY_ENV, "sk-test-judge-key-0123456789")


def openai_judge(stub, **options) -> dict:
    return {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "base_url": stub.openai_url,
        "api_key": f"env:{KEY_ENV}",
        **options,
    }


def anthropic_judge(url: str, **options) -> dict:
    return {
        "provider": "anthropic",
        "model": "claude-haiku-4-5",
        "base_url": url,
        "api_key": f"env:{KEY_ENV}",
        **options,
    }


def settings(metrics: dict) -> dict:
    """An evaluation.yaml mapping whose suite ``qa`` scores ``metrics`` (defaults are required)."""
    return {"defaults": {"metrics": {"rouge1": {}}}, "suites": {"qa": {"metrics": metrics}}}


def nan_equal(a: list[list[float]], b: list[list[float]]) -> bool:
    """Equal row by row, NaN equal to NaN."""
    flat_a = [(i, p) for i, row in enumerate(a) for p in row]
    flat_b = [(i, q) for i, row in enumerate(b) for q in row]
    return len(flat_a) == len(flat_b) and all(
        i == j and (p == q or (math.isnan(p) and math.isnan(q)))
        for (i, p), (j, q) in zip(flat_a, flat_b, strict=True)
    )


# --- options at load ------------------------------------------------------------------------


def test_judge_options_are_accepted_at_load(tmp_path):
    options = {
        "provider": "anthropic",
        "model": "claude-haiku-4-5",
        "timeout_s": 30,
        "retries": 2,
        "requests_per_minute": 60,
        "tokens_per_minute": 40000,
        "concurrency": 4,
        "repeats": 3,
        "max_attempts": 2,
    }
    path = tmp_path / "evaluation.yaml"
    path.write_text(
        yaml.safe_dump(settings({JUDGE: options, "llm_faithfulness": {"timeout_s": 0.5}}))
    )
    qa = load_settings(path).for_suite("qa")
    assert qa.metrics[JUDGE].options == options
    assert qa.metrics["llm_faithfulness"].options == {"timeout_s": 0.5}


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("timeout_s", 0, "> 0"),
        ("timeout_s", -1.5, "> 0"),
        ("timeout_s", ".inf", "> 0"),
        ("timeout_s", "30", "float"),
        ("retries", -1, ">= 0"),
        ("retries", 1.5, "int"),
        ("retries", True, "int"),
        ("requests_per_minute", 0, "positive integer"),
        ("requests_per_minute", "60", "positive integer"),
        ("requests_per_minute", 2.5, "positive integer"),
        ("requests_per_minute", True, "positive integer"),
        ("tokens_per_minute", -100, "positive integer"),
        ("concurrency", 0, ">= 1"),
        ("repeats", 0, ">= 1"),
        ("repeats", "3", "int"),
        ("max_attempts", 0, ">= 1"),
        ("repeat", 3, "unknown option"),
    ],
)
def test_bad_judge_options_are_refused_at_load_naming_the_key(option, value, words):
    raw_value = float("inf") if value == ".inf" else value
    with pytest.raises(ConfigError) as error:
        parse_settings(settings({"llm_faithfulness": {option: raw_value}}), "evaluation.yaml")
    assert error.value.key == f"suites.qa.metrics.llm_faithfulness.{option}"
    assert words in str(error.value)


def test_bad_judge_option_in_a_yaml_file_names_file_and_key(tmp_path):
    path = tmp_path / "evaluation.yaml"
    path.write_text(
        "defaults:\n  metrics: {rouge1: {}}\n"
        f"suites:\n  qa:\n    metrics:\n      {JUDGE}: {{repeats: 0}}\n"
    )
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert error.value.key == f"suites.qa.metrics.{JUDGE}.repeats"
    assert str(path) in str(error.value)


def test_bad_judge_options_are_refused_when_called_directly():
    # Before any provider is built: the metric checks its own numbers.
    with pytest.raises(OptionError) as error:
        compute(JUDGE, ["a"], ["b"], repeats=0)
    assert error.value.option == "repeats"
    with pytest.raises(OptionError) as error:
        compute(JUDGE, ["a"], ["b"], requests_per_minute=-1)
    assert error.value.option == "requests_per_minute"


# --- repeats ----------------------------------------------------------------------------------


def test_repeats_make_one_call_each_and_a_rerun_makes_none(stub, monkeypatch, tmp_path):
    counter = itertools.count(1)
    lock = threading.Lock()

    def varying(prompt: str) -> str:
        with lock:
            n = next(counter)
        return f"Close enough.\nSCORE: {n / 10:.1f}"  # every call a different score

    monkeypatch.setattr(stub.state, "reply", varying)
    path = tmp_path / "evaluation.yaml"
    path.write_text(yaml.safe_dump(settings({JUDGE: openai_judge(stub, repeats=3, retries=1)})))
    options = load_settings(path).for_suite("qa").metrics[JUDGE].options

    scores = compute(JUDGE, PREDICTIONS, REFERENCES, **options)
    assert isinstance(scores, JudgedScores)
    assert stub.calls == 6  # 2 cases x 3 repeats, each its own request
    assert [len(row) for row in scores.repeat_scores] == [3, 3]
    for row, mean in zip(scores.repeat_scores, scores, strict=True):
        assert len(set(row)) == 3  # the repeats differ: none is another's cached answer
        assert mean == pytest.approx(sum(row) / 3)
    assert scores.replies == [None, None] and scores.invalid == 0
    assert sorted(s for row in scores.repeat_scores for s in row) == pytest.approx(
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    )

    again = compute(JUDGE, PREDICTIONS, REFERENCES, **options)
    assert stub.calls == 6  # every repeat came from the cache
    assert again.repeat_scores == scores.repeat_scores and list(again) == list(scores)
    assert again.cost_usd == 0.0

    more = compute(JUDGE, PREDICTIONS, REFERENCES, **{**options, "repeats": 4})
    assert stub.calls == 8  # repeats 0-2 cached, repeat 3 asked once per case
    assert [row[:3] for row in more.repeat_scores] == scores.repeat_scores


def test_the_mean_is_over_valid_repeats_and_all_invalid_is_nan(stub):
    # One judgement at a time, so the scripted replies meet the cases and repeats in order.
    stub.script(
        "SCORE: 0.2",
        "I cannot tell.",
        "SCORE: 0.8",  # case 1: repeats 0.2, invalid, 0.8
        "no idea",
        "still no idea",
        "",  # case 2: nothing readable
    )
    scores = compute(
        JUDGE,
        PREDICTIONS,
        REFERENCES,
        **openai_judge(stub, repeats=3, concurrency=1, max_attempts=1),
    )
    assert stub.calls == 6
    first, second = scores.repeat_scores
    assert first[0] == 0.2 and math.isnan(first[1]) and first[2] == 0.8
    assert len(second) == 3 and all(math.isnan(s) for s in second)
    assert scores[0] == pytest.approx(0.5)  # (0.2 + 0.8) / 2, not (0.2 + 0 + 0.8) / 3
    assert math.isnan(scores[1]) and scores.invalid == 1
    assert scores.replies == [None, "no idea"]


def test_one_repeat_scores_as_before(stub):
    stub.script("Same meaning.\nSCORE: 0.7", "Lovely weather today.")
    scores = compute(
        JUDGE, PREDICTIONS, REFERENCES, **openai_judge(stub, concurrency=1, max_attempts=1)
    )
    assert scores[0] == 0.7 and math.isnan(scores[1])
    assert scores.replies == [None, "Lovely weather today."]
    assert nan_equal(scores.repeat_scores, [[0.7], [math.nan]])


def test_the_follow_up_after_an_unreadable_reply_keeps_its_repeat(stub):
    # Both repeats first answer the same unreadable text, so both follow-up conversations are
    # the same messages: only the repeat index keeps repeat 1's follow-up from being served
    # repeat 0's cached answer.
    stub.script("Hmm.", "SCORE: 0.4", "Hmm.", "SCORE: 0.6")
    options = openai_judge(stub, repeats=2, concurrency=1, max_attempts=2)
    scores = compute(JUDGE, PREDICTIONS[:1], REFERENCES[:1], **options)
    assert stub.calls == 4
    assert scores.repeat_scores == [[0.4, 0.6]] and scores[0] == pytest.approx(0.5)
    retry = stub.state.requests[-1]["body"]["messages"]
    assert retry[1] == {"role": "assistant", "content": "Hmm."}

    again = compute(JUDGE, PREDICTIONS[:1], REFERENCES[:1], **options)
    assert stub.calls == 4 and again.repeat_scores == [[0.4, 0.6]]


def test_rate_limits_go_to_the_judges_provider(stub):
    # The limiter registry keeps one limiter per endpoint and replaces it when the limits
    # differ: taking it first with the configured limits and finding the same one after the run
    # shows the judge asked for exactly these limits, and its empty request bucket that it
    # waited on it.
    limits = RateLimits(requests_per_minute=60, tokens_per_minute=100_000)
    endpoint = ProviderConfig(
        name="openai",
        kind="openai",
        model="gpt-4o-mini",
        base_url=stub.openai_url,
        api_key_ref=f"env:{KEY_ENV}",
    ).endpoint
    limiter = limiter_for(endpoint, limits)
    stub.script("SCORE: 1.0")
    options = openai_judge(stub, requests_per_minute=60, tokens_per_minute=100_000)
    scores = compute(JUDGE, PREDICTIONS[:1], REFERENCES[:1], **options)
    assert list(scores) == [1.0]
    assert limiter_for(endpoint, limits) is limiter
    assert limiter.requests is not None and limiter.requests._level < 1.0


# --- provider failures ------------------------------------------------------------------------


def test_a_500_is_retried_when_retries_allow(stub):
    stub.inject("500")
    stub.script("Same.\nSCORE: 0.9")
    scores = compute(
        "llm_faithfulness",
        PREDICTIONS[:1],
        REFERENCES[:1],
        contexts=["The sky is blue on a clear day."],
        **anthropic_judge(stub.url, retries=1),
    )
    assert list(scores) == [0.9]
    assert stub.state.counts["500"] == 1 and stub.calls == 2


def test_a_500_without_retries_names_the_metric_and_provider(stub):
    stub.inject("500")
    with pytest.raises(JudgeProviderError) as error:
        compute(
            "llm_faithfulness",
            PREDICTIONS[:1],
            REFERENCES[:1],
            contexts=["The sky is blue on a clear day."],
            **anthropic_judge(stub.url, retries=0),
        )
    exc = error.value
    assert isinstance(exc, FlowStoneError) and not isinstance(exc, LLMError)
    assert (exc.metric, exc.provider, exc.model) == (
        "llm_faithfulness",
        "anthropic",
        "claude-haiku-4-5",
    )
    assert isinstance(exc.cause, LLMError) and exc.__cause__ is exc.cause
    assert str(exc).startswith(
        "judge metric 'llm_faithfulness': provider anthropic/claude-haiku-4-5 failed: "
    )
    assert "500" in str(exc)
    assert stub.calls == 1


def test_a_timeout_names_the_metric_and_provider():
    # Its own server: the slow request keeps sleeping after the judge gave up, and must not
    # take the next test's scripted replies.
    with StubLLMServer() as slow:
        slow.inject("slow:3")
        with pytest.raises(JudgeProviderError) as error:
            compute(
                JUDGE,
                PREDICTIONS[:1],
                REFERENCES[:1],
                **anthropic_judge(slow.url, timeout_s=0.5, retries=0),
            )
    exc = error.value
    assert (exc.metric, exc.provider, exc.model) == (JUDGE, "anthropic", "claude-haiku-4-5")
    assert isinstance(exc.cause, LLMError)
    assert f"judge metric '{JUDGE}': provider anthropic/claude-haiku-4-5 failed" in str(exc)
    assert "timeout" in str(exc) or "timed out" in str(exc)


def test_a_refused_connection_and_a_bad_key_name_the_metric_and_provider(stub):
    nothing_listens = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(JudgeProviderError) as error:
        compute(
            JUDGE,
            PREDICTIONS,
            REFERENCES,
            **{**openai_judge(stub, retries=0), "base_url": nothing_listens},
        )
    assert (error.value.metric, error.value.provider) == (JUDGE, "openai")
    assert "provider openai/gpt-4o-mini failed" in str(error.value)

    stub.state.expected_key = "sk-some-other-key"  # the stub answers 401, never retried
    cases = [f"answer {i}" for i in range(6)]
    with pytest.raises(JudgeProviderError) as error:
        compute(JUDGE, cases, cases, **openai_judge(stub, retries=3, repeats=2, concurrency=1))
    assert "401" in str(error.value)
    # The first failure stops the judge: the 12 judgements are not all asked (and failed).
    assert 1 <= stub.calls < 12


def test_judge_provider_error_survives_pickling():
    import pickle

    cause = LLMError("provider 'openai' model 'gpt-4o-mini' failed with 500: boom")
    error = JudgeProviderError(JUDGE, "openai", "gpt-4o-mini", cause)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.metric == JUDGE and copy.model == "gpt-4o-mini"
    assert json.dumps(str(copy))  # plain text for a run's error message
