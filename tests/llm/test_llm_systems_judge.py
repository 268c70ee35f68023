"""Prompt-template systems from YAML, the LLM judge, and the Dagster resource."""

from __future__ import annotations

import math
from pathlib import Path

import dagster as dg
import pytest

from flowstone.cases import Case
from flowstone.errors import ConfigError
from flowstone.evaluation.judges import LLMJudge, parse_score, summarise
from flowstone.llm.errors import MissingSecretError
from flowstone.systems.base import System
from flowstone.systems.config import load_llm_systems
from resources.llm import LLMProviderConfig, LLMResource

REPO = Path(__file__).resolve().parents[2]
CASES = [
    Case("c1", "What colour is the sky?", "blue", context="The sky is blue. Grass is green."),
    Case("c2", "What colour is grass?", "green", context="The sky is blue. Grass is green."),
]


def _write_systems(tmp_path: Path, stub, anthropic_key_env: str) -> Path:
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "qa.j2").write_text((REPO / "prompts" / "qa_answer.j2").read_text())
    path = tmp_path / "systems.yaml"
    path.write_text(
        f"""
defaults:
  cache: true
  cache_path: {tmp_path / "cache.sqlite"}
  retry: {{max_attempts: 2, initial_backoff_s: 0.01, max_backoff_s: 0.02}}
systems:
  - name: qa-claude
    template: prompts/qa.j2
    params: {{max_tokens: 32}}
    providers:
      - {{kind: anthropic, model: claude-haiku-4-5, base_url: "{stub.url}", api_key: "env:{anthropic_key_env}"}}
  - name: qa-gpt
    template: prompts/qa.j2
    providers:
      - {{kind: openai, model: gpt-4o-mini, base_url: "{stub.openai_url}", api_key: "env:FLOWSTONE_TEST_OPENAI_KEY"}}
"""
    )
    return path


def test_repo_systems_yaml_loads_without_keys(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    systems = load_llm_systems(REPO / "systems.yaml")
    assert {s.name for s in systems} >= {"local-llm", "claude-haiku", "gpt-4o-mini"}
    claude = next(s for s in systems if s.name == "claude-haiku")
    assert isinstance(claude, System) and claude.kind == "llm"
    assert claude.unavailable_reason() == "ANTHROPIC_API_KEY not set for system claude-haiku"
    with pytest.raises(
        MissingSecretError, match="ANTHROPIC_API_KEY not set for system claude-haiku"
    ):
        claude.predict(CASES, suite="qa")
    local = next(s for s in systems if s.name == "local-llm")
    assert local.unavailable_reason() is None
    assert set(local.suite_templates) == {"qa", "summarisation", "paraphrase", "intent"}


def test_system_predicts_through_the_stub_and_reruns_from_cache(stub, tmp_path, monkeypatch, keys):
    monkeypatch.setenv("FLOWSTONE_TEST_ANTHROPIC_KEY", keys["anthropic"])
    systems = {
        s.name: s
        for s in load_llm_systems(_write_systems(tmp_path, stub, "FLOWSTONE_TEST_ANTHROPIC_KEY"))
    }
    system = systems["qa-claude"]
    seen = []
    predictions = system.predict(CASES, progress=seen.append)
    assert [p.case_id for p in predictions] == ["c1", "c2"]
    assert predictions[0].output.endswith("What colour is the sky?")
    assert all(p.cost_usd > 0 and p.input_tokens > 0 and not p.cached for p in predictions)
    assert sorted(seen) == [1, 2]
    sent = stub.state.requests[0]["body"]["messages"][0]["content"]
    assert "The sky is blue." in sent and "blue\n" not in sent.split("Context:")[0]
    stub.reset()
    again = system.predict(CASES)
    assert stub.calls == 0 and all(p.cached for p in again)


def test_fingerprint_tracks_template_and_model_not_keys(stub, tmp_path, monkeypatch):
    path = _write_systems(tmp_path, stub, "FLOWSTONE_TEST_ANTHROPIC_KEY")
    before = {s.name: s.fingerprint() for s in load_llm_systems(path)}
    monkeypatch.setenv("FLOWSTONE_TEST_ANTHROPIC_KEY", "sk-ant-something-else-entirely")
    assert {s.name: s.fingerprint() for s in load_llm_systems(path)} == before
    (tmp_path / "prompts" / "qa.j2").write_text("Answer: {{ input }}")
    after = {s.name: s.fingerprint() for s in load_llm_systems(path)}
    assert after["qa-claude"] != before["qa-claude"]
    assert before["qa-claude"] != before["qa-gpt"]


def test_bad_systems_yaml_names_the_key(tmp_path):
    path = tmp_path / "systems.yaml"
    path.write_text(
        "systems:\n  - {name: x, template: nope.j2, providers: [{kind: openai, model: m}]}\n"
    )
    with pytest.raises(ConfigError, match=r"systems\[0\].template"):
        load_llm_systems(path)


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("Close enough.\nSCORE: 0.75", 0.75),
        ('{"score": 1}', 1.0),
        ("Score: **0.5**", 0.5),
        ("SCORE: .25", 0.25),
    ],
)
def test_parse_score(reply, score):
    assert parse_score(reply) == score


@pytest.mark.parametrize("reply", ["I think it is good", "SCORE: 7", "SCORE: -0.2", ""])
def test_parse_score_rejects(reply):
    with pytest.raises(ValueError):
        parse_score(reply)


def test_judge_retries_an_unparseable_reply_then_scores(stub, make_client, provider):
    judge = LLMJudge(
        make_client(provider("openai")),
        "semantic_similarity",
        template_path=REPO / "prompts" / "judge_semantic_similarity.j2",
    )
    stub.script("It is quite similar.", "Same meaning.\nSCORE: 0.9")
    [judgement] = judge.judge(["c1"], ["the sky is blue"], ["blue"])
    assert judgement.valid and judgement.score == 0.9 and judgement.attempts == 2
    retry_request = stub.state.requests[-1]["body"]["messages"]
    assert retry_request[1] == {"role": "assistant", "content": "It is quite similar."}


def test_judge_records_invalid_with_raw_reply_never_zero(stub, make_client, provider):
    judge = LLMJudge(
        make_client(provider("anthropic")),
        "faithfulness",
        template_path=REPO / "prompts" / "judge_faithfulness.j2",
        max_attempts=2,
    )
    stub.script("no idea", "still no idea", "Supported.\nSCORE: 1.0")
    judgements = judge.judge(
        ["c1", "c2"], ["blue", "green"], ["blue", "green"], [CASES[0].context, None]
    )
    bad, no_context = judgements
    assert (
        not bad.valid
        and bad.score is None
        and bad.raw_reply == "still no idea"
        and bad.attempts == 2
    )
    assert "unparseable" in bad.error
    assert not no_context.valid and no_context.score is None and "no context" in no_context.error
    summary = summarise(judgements)
    assert summary == {"mean": None, "valid": 0, "invalid": 2, "cost_usd": summary["cost_usd"]}
    from flowstone.evaluation.judges import scores_with_invalid_as_nan

    assert all(math.isnan(x) for x in scores_with_invalid_as_nan(judgements))


def test_resource_in_a_materialization_reports_costs(stub, tmp_path):
    resource = LLMResource(
        providers=[
            LLMProviderConfig(
                name="openai",
                kind="openai",
                model="gpt-4o-mini",
                base_url=stub.openai_url,
                api_key="sk-test-resource-123456",
            )
        ],
        cache_path=str(tmp_path / "resource_cache.sqlite"),
        initial_backoff_s=0.01,
        max_backoff_s=0.02,
    )

    @dg.asset
    def answers(llm: LLMResource) -> dg.MaterializeResult:
        client = llm.get_client()
        client.complete_many(["a b", "c d", "a b"], concurrency=1)
        return dg.MaterializeResult(metadata=client.totals.as_metadata())

    result = dg.materialize([answers], resources={"llm": resource})
    assert result.success
    [event] = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert metadata["llm_calls"].value == 2 and metadata["llm_cache_hits"].value == 1
    assert metadata["llm_cost_usd"].value > 0
    assert stub.calls == 2


def test_resource_defaults_to_the_local_baseline(stub):
    completion = (
        LLMResource(cache_enabled=False).get_client().complete("Intro.\n\nFirst sentence. Second.")
    )
    assert completion.provider == "local" and completion.text == "First sentence."
    assert stub.calls == 0
