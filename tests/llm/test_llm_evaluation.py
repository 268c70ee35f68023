"""LLM systems and LLM judges inside the evaluation assets, against the stub provider server
over HTTP through the official SDKs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import dagster as dg
import pytest

from assets.evaluation import REPORT_KEY, build_evaluation_assets
from flowstone.evaluation.catalog import load_catalog
from flowstone.systems.registry import default_systems
from io_managers.object_store import ObjectStoreIOManager
from resources.worker_pool import PythonWorkerPoolResource

REPO = Path(__file__).resolve().parents[2]
CASES = [
    {
        "id": f"q{i}",
        "input": f"Which city is number {i}?",
        "expected": f"city {i}",
        "context": f"The list says city {i} is number {i}.",
    }
    for i in range(4)
]


@pytest.fixture
def llm_env(tmp_path, stub, monkeypatch, keys):
    monkeypatch.setenv("FLOWSTONE_TEST_OPENAI_KEY", keys["openai"])
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("FLOWSTONE_OUTPUTS_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))  # the judges' response cache
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "qa.jsonl").write_text("\n".join(json.dumps(c) for c in CASES))
    systems = tmp_path / "systems.yaml"
    systems.write_text(
        f"""
defaults:
  cache_path: {tmp_path / "llm-cache.sqlite"}
  retry: {{max_attempts: 2, initial_backoff_s: 0.01, max_backoff_s: 0.02}}
systems:
  - name: stub-gpt
    templates: {{qa: {REPO / "prompts" / "qa_answer.j2"}}}
    params: {{max_tokens: 16}}
    providers:
      - {{kind: openai, model: gpt-4o-mini, base_url: "{stub.openai_url}", api_key: "env:FLOWSTONE_TEST_OPENAI_KEY"}}
  - name: keyless-claude
    template: {REPO / "prompts" / "qa_answer.j2"}
    providers:
      - {{kind: anthropic, model: claude-haiku-4-5, api_key: "env:ANTHROPIC_API_KEY"}}
"""
    )
    monkeypatch.setenv("FLOWSTONE_SYSTEMS_CONFIG", str(systems))
    judge = {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "base_url": stub.openai_url,
        "api_key": "env:FLOWSTONE_TEST_OPENAI_KEY",
        "max_attempts": 2,
    }
    settings = tmp_path / "evaluation.yaml"
    settings.write_text(
        json.dumps({"defaults": {"metrics": {"rouge1": {}, "llm_semantic_similarity": judge}}})
    )

    def build():
        catalog = load_catalog(suites, settings, default_systems())
        defs = dg.Definitions(
            assets=build_evaluation_assets(catalog),
            jobs=[
                dg.define_asset_job(
                    "evaluation_job", selection=dg.AssetSelection.groups("evaluation")
                )
            ],
            resources={
                "io_manager": ObjectStoreIOManager(base_path=str(tmp_path / "objects")),
                "worker_pool": PythonWorkerPoolResource(),
            },
        )
        return catalog, defs.resolve_job_def("evaluation_job")

    with dg.instance_for_test() as instance:
        yield build, instance


def metadata(instance, key, partition):
    record = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records[0]
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


@pytest.mark.slow
def test_llm_system_is_a_partition_and_reruns_from_cache(llm_env, stub, monkeypatch):
    build, instance = llm_env
    monkeypatch.setattr(stub.state, "reply", lambda p: "SCORE: 0.9" if "SCORE" in p else "city 1")
    catalog, job = build()
    assert "stub-gpt" in catalog.systems.names
    assert "keyless-claude" not in catalog.systems.names
    assert (
        catalog.systems.skipped["keyless-claude"]
        == "ANTHROPIC_API_KEY not set for system keyless-claude"
    )

    assert job.execute_in_process(partition_key="qa|stub-gpt", instance=instance).success
    predictions = metadata(instance, dg.AssetKey(["evaluation", "predictions"]), "qa|stub-gpt")
    assert predictions["cases"] == 4 and predictions["output_tokens"] > 0
    assert predictions["cost_usd"] > 0  # gpt-4o-mini has a price in the table
    assert predictions["llm_calls"] == 4 and predictions["breakers"] == {"openai": "closed"}
    calls = stub.calls

    assert job.execute_in_process(partition_key="qa|stub-gpt", instance=instance).success
    again = metadata(instance, dg.AssetKey(["evaluation", "predictions"]), "qa|stub-gpt")
    assert again["cache_hits"] == 4
    assert stub.calls == calls  # neither the system nor the judge called the provider again


@pytest.mark.slow
def test_invalid_judgement_is_counted_not_scored_zero(llm_env, stub, monkeypatch):
    build, instance = llm_env

    # Judge prompts quote the prediction; the one for "city 0", and its follow-up asking again
    # for a score, never get a readable score.
    def reply(prompt: str) -> str:
        if "could not be read as a score" in prompt or ("SCORE" in prompt and "city 0" in prompt):
            return "I would rather not say."
        if "SCORE" in prompt:
            return "SCORE: 0.8"
        return "city 0" if "number 0" in prompt else "city 2"

    monkeypatch.setattr(stub.state, "reply", reply)
    _, job = build()
    assert job.execute_in_process(partition_key="qa|stub-gpt", instance=instance).success
    report = metadata(instance, REPORT_KEY, "qa|stub-gpt")
    assert report["invalid/llm_semantic_similarity"] == 1
    assert report["mean/llm_semantic_similarity"] == pytest.approx(0.8)  # not (0.8 * 3 + 0) / 4
    scores = metadata(instance, dg.AssetKey(["evaluation", "scores"]), "qa|stub-gpt")
    assert scores["invalid/llm_semantic_similarity"] == 1
    assert not math.isnan(scores["mean/llm_semantic_similarity"])


def test_a_system_can_opt_out_of_the_cache(tmp_path, stub, monkeypatch, keys):
    from flowstone.cases import Case
    from flowstone.systems.config import load_llm_systems

    monkeypatch.setenv("FLOWSTONE_TEST_OPENAI_KEY", keys["openai"])
    path = tmp_path / "systems.yaml"
    path.write_text(
        f"""
defaults: {{cache: true, cache_path: {tmp_path / "c.sqlite"}}}
systems:
  - name: fresh-every-time
    cache: false
    template: {REPO / "prompts" / "generic.j2"}
    providers:
      - {{kind: openai, model: gpt-4o-mini, base_url: "{stub.openai_url}", api_key: "env:FLOWSTONE_TEST_OPENAI_KEY"}}
"""
    )
    (system,) = load_llm_systems(path)
    cases = [Case("a", "Say hi.", "hi")]
    system.predict(cases)
    again = system.predict(cases)
    assert stub.calls == 2 and not again[0].cached


@pytest.mark.slow
def test_a_judge_that_never_answers_fails_its_metric_not_the_report(
    llm_env, stub, monkeypatch, tmp_path
):
    build, instance = llm_env
    settings = tmp_path / "evaluation.yaml"
    raw = json.loads(settings.read_text())
    raw["defaults"]["thresholds"] = {"llm_semantic_similarity": 0.5, "rouge1": 0.0}
    settings.write_text(json.dumps(raw))
    # every judge prompt (and every retry asking again for a score) gets garbage
    monkeypatch.setattr(
        stub.state, "reply", lambda p: "Lovely weather today." if "SCORE" in p else "city 1"
    )
    _, job = build()
    for _ in range(2):  # the second run compares with a stored report that has no judge mean
        result = job.execute_in_process(partition_key="qa|stub-gpt", instance=instance)
        assert result.success
        logs = instance.all_logs(result.run_id)
        assert not [e for e in logs if "could not be read" in e.user_message]

    report = metadata(instance, REPORT_KEY, "qa|stub-gpt")
    assert report["failed/llm_semantic_similarity"].startswith("0 valid of 4 judgements")
    assert report["invalid/llm_semantic_similarity"] == 4
    assert "mean/llm_semantic_similarity" not in report and not report["passed"]
    assert "mean/rouge1" in report and report["ci/rouge1"].endswith("(95% CI)")
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    judged = checks["llm_semantic_similarity_above_threshold"]
    assert not judged.passed
    assert judged.description.startswith(
        "llm_semantic_similarity failed, no mean to compare with threshold 0.500: "
        "0 valid of 4 judgements"
    )
    assert judged.metadata["valid"].value == 0 and judged.metadata["invalid"].value == 4
    assert checks["rouge1_above_threshold"].passed
    stored = result.asset_value(REPORT_KEY)
    assert stored["metrics"]["llm_semantic_similarity"]["mean"] is None
    scores = result.asset_value(dg.AssetKey(["evaluation", "scores"]))
    assert set(scores["llm_semantic_similarity_invalid_reply"]) == {"Lovely weather today."}


def _labelled(kind: str, labels: list) -> str:
    return "\n".join(
        json.dumps(
            {
                "id": f"{kind}{i}",
                "input": f"Which {kind} is number {i}?",
                "expected": f"{kind} {i}",
                "context": f"The list says {kind} {i} is number {i}.",
                "label": label,
            }
        )
        for i, label in enumerate(labels)
    )


@pytest.mark.slow
def test_a_judge_is_calibrated_against_gold_labels(llm_env, stub, monkeypatch, tmp_path):
    """Through the OpenAI wire protocol: on "agree" the judge ranks the cases as the gold
    scores do (Spearman 1, calibrated); on "disagree" it passes what the labels fail (Cohen's
    kappa -1, uncalibrated)."""
    import re

    build, instance = llm_env
    suites = tmp_path / "suites"
    (suites / "agree.jsonl").write_text(_labelled("city", [1, 2, 4, 5]))
    (suites / "disagree.jsonl").write_text(_labelled("town", ["pass", "pass", "fail", "fail"]))
    systems = tmp_path / "systems.yaml"  # one template for every suite
    systems.write_text(
        re.sub(r"templates: \{qa: ([^}]+)\}", r"template: \1", systems.read_text(), count=1)
    )
    settings = tmp_path / "evaluation.yaml"
    raw = json.loads(settings.read_text())
    raw["defaults"]["metrics"]["llm_semantic_similarity"]["calibration"] = {"min_agreement": 0.6}
    settings.write_text(json.dumps(raw))
    judged = {"city": [0.1, 0.3, 0.6, 0.9], "town": [0.1, 0.2, 0.8, 0.9]}

    def reply(prompt: str) -> str:
        found = re.search(r"\b(city|town) (\d)\b", prompt)
        assert found, prompt
        kind, i = found.group(1), int(found.group(2))
        return f"SCORE: {judged[kind][i]}" if "SCORE" in prompt else f"{kind} {i}"

    monkeypatch.setattr(stub.state, "reply", reply)
    _, job = build()
    name = "llm_semantic_similarity"

    agree = job.execute_in_process(partition_key="agree|stub-gpt", instance=instance)
    assert agree.success
    report = metadata(instance, REPORT_KEY, "agree|stub-gpt")
    assert report[f"calibration/{name}"] == "spearman 1.00 (n=4)"
    assert f"uncalibrated/{name}" not in report and "calibration/rouge1" not in report
    stored = agree.asset_value(REPORT_KEY)["calibration"]
    assert stored == {
        name: {
            "metric": name,
            "method": "spearman",
            "agreement": pytest.approx(1.0),
            "cases": 4,
            "min_agreement": 0.6,
            "reason": None,
            "calibrated": True,
        }
    }

    disagree = job.execute_in_process(partition_key="disagree|stub-gpt", instance=instance)
    assert disagree.success
    report = metadata(instance, REPORT_KEY, "disagree|stub-gpt")
    assert report[f"calibration/{name}"] == "cohen's kappa -1.00 (n=4)"
    assert report[f"uncalibrated/{name}"] == (
        "uncalibrated: cohen's kappa -1.00 is below the bar 0.60"
    )
    assert not disagree.asset_value(REPORT_KEY)["calibration"][name]["calibrated"]
    assert "UNCALIBRATED" in Path(report["report_path"]).read_text()


@pytest.mark.slow
def test_a_system_with_repeats_answers_each_case_again_and_reruns_free(
    llm_env, stub, monkeypatch, tmp_path
):
    build, instance = llm_env
    systems = tmp_path / "systems.yaml"
    systems.write_text(
        systems.read_text().replace(
            "  - name: stub-gpt\n", "  - name: stub-gpt\n    repeats: 3\n", 1
        )
    )
    asked: dict[str, int] = {}

    # The n-th time a question is asked: right the first and third time, wrong the second.
    def reply(prompt: str) -> str:
        if "SCORE" in prompt:
            return "SCORE: 0.9"
        n = asked[prompt] = asked.get(prompt, -1) + 1
        number = prompt.split("number ")[-1].split("?")[0]
        return "no idea" if n == 1 else f"city {number}"

    monkeypatch.setattr(stub.state, "reply", reply)
    catalog, job = build()
    assert catalog.systems.get("stub-gpt").repeats == 3
    assert job.execute_in_process(partition_key="qa|stub-gpt", instance=instance).success
    # three distinct answers a question: a repeat is never the cached first answer
    assert sorted(set(asked.values())) == [2] and len(asked) == 4
    predictions = metadata(instance, dg.AssetKey(["evaluation", "predictions"]), "qa|stub-gpt")
    assert predictions["cases"] == 4 and predictions["repeats"] == 3
    assert predictions["answers"] == 12 and predictions["llm_calls"] == 12
    report = metadata(instance, REPORT_KEY, "qa|stub-gpt")
    assert report["repeats"] == 3
    assert report["flipped/rouge1"] == 4  # every case passes twice and fails once
    assert report["mean/rouge1"] == pytest.approx(2 / 3, abs=1e-3)
    assert report["spread/rouge1"] == pytest.approx(0.471, abs=1e-3)  # sd of (1, 0, 1)

    calls = stub.calls
    assert job.execute_in_process(partition_key="qa|stub-gpt", instance=instance).success
    again = metadata(instance, dg.AssetKey(["evaluation", "predictions"]), "qa|stub-gpt")
    assert again["cache_hits"] == 12 and stub.calls == calls


@pytest.mark.slow
def test_a_judge_whose_provider_fails_names_metric_suite_system_and_provider(
    llm_env, stub, monkeypatch, tmp_path
):
    from support.net import free_port

    build, instance = llm_env
    settings = tmp_path / "evaluation.yaml"
    raw = json.loads(settings.read_text())
    judge = raw["defaults"]["metrics"]["llm_semantic_similarity"]
    judge.update(base_url=f"http://127.0.0.1:{free_port()}/v1", retries=0)  # nobody listens
    settings.write_text(json.dumps(raw))
    monkeypatch.setattr(stub.state, "reply", lambda p: "city 1")
    _, job = build()
    result = job.execute_in_process(
        partition_key="qa|stub-gpt", instance=instance, raise_on_error=False
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key.endswith("scores")
    message = failure.step_failure_data.error.cause.message  # the step's own error
    for name in (
        "llm_semantic_similarity",
        "openai/gpt-4o-mini",
        "suite 'qa'",
        "system 'stub-gpt'",
    ):
        assert name in message
    # nothing was written for the partition: no scores, no report
    assert not instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(["evaluation", "scores"]), asset_partitions=["qa|stub-gpt"]
        ),
        limit=1,
    ).records


@pytest.mark.slow
def test_judge_repeats_report_the_judges_agreement_with_itself(
    llm_env, stub, monkeypatch, tmp_path
):
    build, instance = llm_env
    settings = tmp_path / "evaluation.yaml"
    raw = json.loads(settings.read_text())
    raw["defaults"]["metrics"]["llm_semantic_similarity"]["repeats"] = 2
    settings.write_text(json.dumps(raw))
    judged: dict[str, int] = {}

    # The judge changes its mind on the answer for question 0 (0.9, then 0.2) and no other.
    def reply(prompt: str) -> str:
        if "SCORE" not in prompt:
            number = prompt.split("number ")[-1].split("?")[0]
            return f"city {number}"
        n = judged[prompt] = judged.get(prompt, -1) + 1
        return "SCORE: 0.2" if n == 1 and "city 0" in prompt else "SCORE: 0.9"

    monkeypatch.setattr(stub.state, "reply", reply)
    _, job = build()
    assert job.execute_in_process(partition_key="qa|stub-gpt", instance=instance).success
    assert sorted(judged.values()) == [1, 1, 1, 1]  # two judgements of each of 4 answers
    report = metadata(instance, REPORT_KEY, "qa|stub-gpt")
    assert report["judge_agreement/llm_semantic_similarity"].startswith(
        "75% of answers judged the same on every repeat, over 4 cases"
    )
    assert report["mean/llm_semantic_similarity"] == pytest.approx((0.55 + 0.9 * 3) / 4, abs=1e-3)
