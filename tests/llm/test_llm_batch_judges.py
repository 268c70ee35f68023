"""Judges in ``mode: batch``: the scores step submits the judge's first attempts as a provider
batch and ends, the sensor polls it and launches the run that scores the partition from the
cache, every first attempt a hit, paid at the batch price.

Against the loopback batch stub of ``test_llm_batch`` (Anthropic's Message Batches through the
official SDK); the system is the online ``echo`` baseline, so the only model calls are the
judge's. No timing assertions: the stub's batches end when the test says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from support.batch_stub_server import BatchStubServer

from assets.evaluation import build_evaluation_assets
from flowstone.errors import ConfigError
from flowstone.evaluation.catalog import load_catalog
from flowstone.evaluation.config import load_settings
from flowstone.llm.batch_store import BatchStore
from flowstone.llm.pricing import DEFAULT_PRICES
from flowstone.systems.registry import default_systems
from io_managers.object_store import ObjectStoreIOManager
from resources.worker_pool import PythonWorkerPoolResource
from sensors.llm_batches import build_llm_batch_sensor

SCORES = dg.AssetKey(["evaluation", "scores"])
PREDICTIONS = dg.AssetKey(["evaluation", "predictions"])
JUDGE = "llm_semantic_similarity"
MODEL = "claude-haiku-4-5"
PARTITION = "qa|echo"
CASES = [
    {"id": f"q{i}", "input": f"Which city is number {i}?", "expected": f"city {i}"}
    for i in range(4)
]
JUDGE_REPEATS = 2
REQUESTS = len(CASES) * JUDGE_REPEATS


@pytest.fixture(scope="module")
def batch_server():
    with BatchStubServer() as server:
        yield server


@pytest.fixture
def batch_stub(batch_server):
    batch_server.reset()
    batch_server.state.reply = lambda prompt: "They say the same thing.\nSCORE: 0.75"
    yield batch_server
    batch_server.reset()


@pytest.fixture
def judge_env(tmp_path, batch_stub, monkeypatch):
    """A suite of 4 cases scored by a batch judge (2 repeats) on the stub, the echo system
    (online, no model), the evaluation job and the batch sensor, on a test instance whose
    folder holds the judge's response cache and the batch records."""
    monkeypatch.setenv("FLOWSTONE_TEST_KEY", "sk-test-batch")
    monkeypatch.setenv("FLOWSTONE_OUTPUTS_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FLOWSTONE_LLM_BATCHES_DB_URL", raising=False)
    monkeypatch.delenv("FLOWSTONE_LLM_CACHE", raising=False)
    monkeypatch.setenv("FLOWSTONE_SYSTEMS_CONFIG", str(tmp_path / "no-systems.yaml"))
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "qa.jsonl").write_text("\n".join(json.dumps(c) for c in CASES))
    settings = tmp_path / "evaluation.yaml"
    judge = {
        "provider": "anthropic",
        "model": MODEL,
        "base_url": batch_stub.url,
        "api_key": "env:FLOWSTONE_TEST_KEY",
        "retries": 0,
        "repeats": JUDGE_REPEATS,
        "mode": "batch",
    }
    settings.write_text(json.dumps({"defaults": {"metrics": {"rouge1": {}, JUDGE: judge}}}))
    catalog = load_catalog(suites, settings, default_systems())
    job = dg.define_asset_job("evaluation_job", selection=dg.AssetSelection.groups("evaluation"))
    sensor = build_llm_batch_sensor(catalog, job)
    defs = dg.Definitions(
        assets=build_evaluation_assets(catalog),
        jobs=[job],
        sensors=[sensor],
        resources={
            "io_manager": ObjectStoreIOManager(base_path=str(tmp_path / "objects")),
            "worker_pool": PythonWorkerPoolResource(),
        },
    )
    with dg.instance_for_test() as instance:
        yield _Env(defs.resolve_job_def("evaluation_job"), sensor, instance)


class _Env:
    def __init__(self, job, sensor, instance):
        self.job, self.sensor, self.instance = job, sensor, instance

    def run(self, tags: dict | None = None):
        result = self.job.execute_in_process(
            partition_key=PARTITION, instance=self.instance, tags=tags
        )
        assert result.success
        return result

    def tick(self):
        return self.sensor(dg.build_sensor_context(instance=self.instance))

    def materializations(self, key: dg.AssetKey) -> list[dict]:
        records = self.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[PARTITION]), limit=10
        ).records
        return [{k: v.value for k, v in r.asset_materialization.metadata.items()} for r in records]

    def observations(self, key: dg.AssetKey) -> list[dict]:
        records = self.instance.fetch_observations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[PARTITION]), limit=10
        ).records
        return [
            {k: v.value for k, v in r.asset_observation.metadata.items()}
            for r in records
            if r.asset_observation is not None
        ]


def _runs(result) -> list[dg.RunRequest]:
    return list(result.run_requests or []) if isinstance(result, dg.SensorResult) else []


@pytest.mark.slow
def test_batch_judge_is_submitted_then_scored_by_the_sensor_run(judge_env, batch_stub):
    env = judge_env

    # the predictions (online) materialize; the scores step submits one judge batch and ends
    env.run()
    assert len(env.materializations(PREDICTIONS)) == 1
    assert env.materializations(SCORES) == []
    (batch,) = batch_stub.batches
    assert batch.api == "anthropic" and len(batch.items) == REQUESTS
    (observed,) = env.observations(SCORES)
    assert observed["llm_batch"] == "submitted" and observed["llm_batch_requests"] == REQUESTS
    assert observed["llm_batch_ids"] == batch.id
    assert batch_stub.state.counts["anthropic.online"] == 0

    # in progress: the tick launches nothing; a second step submits nothing new
    waiting = env.tick()
    assert isinstance(waiting, dg.SkipReason)
    assert f"in progress (0/{REQUESTS} done)" in waiting.skip_message
    assert JUDGE in waiting.skip_message  # the log line names the judge's batch
    env.run()
    assert len(batch_stub.batches) == 1 and env.materializations(SCORES) == []

    # ended: the tick fills the cache and launches the run of the same partition
    batch_stub.finish()
    (request,) = _runs(env.tick())
    assert request.partition_key == PARTITION and request.run_key
    env.run(request.tags)
    (scored,) = env.materializations(SCORES)
    assert scored["cases"] == len(CASES) and scored[f"mean/{JUDGE}"] == 0.75
    assert scored["judge_llm_batch_answers"] == REQUESTS
    assert scored["judge_llm_batch_ids"] == batch.id
    assert batch_stub.state.counts["anthropic.online"] == 0  # every first attempt a hit
    # billed at half the list price, shown on the partition that paid for it
    (job,) = BatchStore().for_scope({"suite": "qa", "system": "echo", "metric": JUDGE})
    assert job.state == "consumed" and len(job.answered) == REQUESTS
    price = DEFAULT_PRICES[MODEL]
    expected = (
        job.input_tokens * price.input_per_mtok + job.output_tokens * price.output_per_mtok
    ) / 2e6
    assert expected > 0 and scored["judge_cost_usd"] == pytest.approx(expected)

    # consumed: the next tick launches nothing; a rerun is all cache hits and costs nothing
    assert not _runs(env.tick())
    env.run()
    rerun = env.materializations(SCORES)[0]
    assert rerun["judge_cost_usd"] == 0 and rerun[f"mean/{JUDGE}"] == 0.75
    assert "judge_llm_batch_ids" not in rerun
    assert len(batch_stub.batches) == 1 and batch_stub.state.counts["anthropic.online"] == 0


@pytest.mark.slow
def test_judge_items_that_fail_in_the_batch_are_judged_online(judge_env, batch_stub):
    env = judge_env
    batch_stub.state.fail_when = lambda prompt: "number 2" in prompt
    env.run()
    batch_stub.finish()
    (request,) = _runs(env.tick())
    env.run(request.tags)

    (scored,) = env.materializations(SCORES)
    assert scored[f"mean/{JUDGE}"] == 0.75 and f"invalid/{JUDGE}" not in scored
    assert scored["judge_llm_batch_errored"] == JUDGE_REPEATS  # case q2, both repeats
    assert batch_stub.state.counts["anthropic.online"] == JUDGE_REPEATS  # on the normal path
    assert len(batch_stub.batches) == 1  # never batched again


def _settings_file(tmp_path: Path, judge: dict) -> Path:
    path = tmp_path / "evaluation.yaml"
    path.write_text(
        json.dumps(
            {"defaults": {"metrics": {"rouge1": {}}}, "suites": {"qa": {"metrics": {JUDGE: judge}}}}
        )
    )
    return path


@pytest.mark.parametrize(
    ("judge", "message"),
    [
        (
            {"provider": "gemini", "model": "gemini-2.5-flash", "mode": "batch"},
            "provider 'gemini' has none",
        ),
        ({"provider": "local", "model": "local", "mode": "batch"}, "provider 'local' has none"),
        ({"mode": "later"}, "unknown mode 'later'"),
        ({"mode": 1}, "takes a str here"),
    ],
)
def test_bad_judge_mode_is_refused_at_load_naming_the_suite_and_metric(tmp_path, judge, message):
    path = _settings_file(tmp_path, judge)
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    text = str(error.value)
    assert message in text and f"{JUDGE}.mode" in text and "qa" in text
    assert str(path) in text


def test_an_online_judge_and_a_batch_judge_on_a_batch_provider_load(tmp_path):
    for mode in ("online", "batch"):
        path = _settings_file(
            tmp_path, {"provider": "openai", "model": "gpt-4o-mini", "mode": mode}
        )
        options = load_settings(path).for_suite("qa").metrics[JUDGE].options
        assert options["mode"] == mode
