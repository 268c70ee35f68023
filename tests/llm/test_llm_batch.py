"""Systems in ``mode: batch``: the predictions step submits a provider batch and ends, the
sensor polls it and launches the run that materializes the partition from the results.

Against a loopback server speaking Anthropic's Message Batches and OpenAI's Files + Batch
protocols (create, retrieve, results stream / output and error files, cancel) through the
official SDKs; no timing assertions: the stub's batches end when the test says so.
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
from flowstone.llm.batch_api import BatchRequest
from flowstone.llm.batch_flow import Ready, Waiting, plan_scope
from flowstone.llm.batch_store import BatchStore
from flowstone.llm.cache import SQLiteResponseCache
from flowstone.llm.config import ProviderConfig
from flowstone.llm.pricing import DEFAULT_PRICES
from flowstone.llm.types import Message, Params
from flowstone.systems.config import load_llm_systems
from flowstone.systems.registry import default_systems
from io_managers.object_store import ObjectStoreIOManager
from resources.worker_pool import PythonWorkerPoolResource
from sensors.llm_batches import build_llm_batch_sensor

REPO = Path(__file__).resolve().parents[2]
PREDICTIONS = dg.AssetKey(["evaluation", "predictions"])
CASES = [
    {"id": f"q{i}", "input": f"Which city is number {i}?", "expected": f"city {i}"}
    for i in range(4)
]
MODELS = {"anthropic": "claude-haiku-4-5", "openai": "gpt-4o-mini"}


@pytest.fixture(scope="module")
def batch_server():
    with BatchStubServer() as server:
        yield server


@pytest.fixture
def batch_stub(batch_server):
    batch_server.reset()
    yield batch_server
    batch_server.reset()


@pytest.fixture
def batch_env(tmp_path, batch_stub, monkeypatch):
    """A suite of 4 cases, one batch system per provider on the stub, the evaluation job and
    the batch sensor, on a test instance whose folder holds the cache and the batch records."""
    monkeypatch.setenv("FLOWSTONE_TEST_KEY", "sk-test-batch")
    monkeypatch.setenv("FLOWSTONE_OUTPUTS_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FLOWSTONE_LLM_BATCHES_DB_URL", raising=False)
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "qa.jsonl").write_text("\n".join(json.dumps(c) for c in CASES))
    systems = tmp_path / "systems.yaml"
    urls = {"anthropic": batch_stub.url, "openai": batch_stub.openai_url}
    systems.write_text(
        f"""
defaults:
  cache_path: {tmp_path / "llm-cache.sqlite"}
  retry: {{max_attempts: 2, initial_backoff_s: 0.01, max_backoff_s: 0.02}}
systems:
"""
        + "".join(
            f"""
  - name: batch-{kind}
    mode: batch
    template: {REPO / "prompts" / "qa_answer.j2"}
    params: {{max_tokens: 16}}
    providers:
      - {{kind: {kind}, model: {MODELS[kind]}, base_url: "{urls[kind]}", api_key: "env:FLOWSTONE_TEST_KEY"}}
"""
            for kind in ("anthropic", "openai")
        )
    )
    monkeypatch.setenv("FLOWSTONE_SYSTEMS_CONFIG", str(systems))
    settings = tmp_path / "evaluation.yaml"
    settings.write_text(json.dumps({"defaults": {"metrics": {"rouge1": {}}}}))
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

    def run(self, partition: str, tags: dict | None = None):
        result = self.job.execute_in_process(
            partition_key=partition, instance=self.instance, tags=tags
        )
        assert result.success
        return result

    def tick(self):
        return self.sensor(dg.build_sensor_context(instance=self.instance))

    def materialized(self, partition: str) -> dict | None:
        records = self.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=PREDICTIONS, asset_partitions=[partition]), limit=1
        ).records
        if not records:
            return None
        return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}

    def observations(self, partition: str) -> list[dict]:
        records = self.instance.fetch_observations(
            dg.AssetRecordsFilter(asset_key=PREDICTIONS, asset_partitions=[partition]), limit=10
        ).records
        return [
            {k: v.value for k, v in r.asset_observation.metadata.items()}
            for r in records
            if r.asset_observation is not None
        ]


def _runs(result) -> list[dg.RunRequest]:
    return list(result.run_requests or []) if isinstance(result, dg.SensorResult) else []


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_batch_partition_is_submitted_then_materialized_by_the_sensor_run(
    batch_env, batch_stub, kind
):
    env = batch_env
    partition = f"qa|batch-{kind}"

    # the step submits one batch of the 4 cases and ends: nothing materialized, scores skipped
    env.run(partition)
    assert env.materialized(partition) is None
    (batch,) = batch_stub.batches
    assert batch.api == kind and len(batch.items) == 4
    (observed,) = env.observations(partition)
    assert observed["llm_batch"] == "submitted" and observed["llm_batch_requests"] == 4
    assert observed["llm_batch_ids"] == batch.id

    # in progress: the tick says so and launches nothing; a second step submits nothing new
    waiting = env.tick()
    assert isinstance(waiting, dg.SkipReason) and "in progress (0/4 done)" in waiting.skip_message
    env.run(partition)
    assert len(batch_stub.batches) == 1 and env.materialized(partition) is None

    # ended: the tick fills the cache and launches the run of that partition
    batch_stub.finish()
    (request,) = _runs(env.tick())
    assert request.partition_key == partition and request.run_key
    env.run(request.partition_key, request.tags)
    metadata = env.materialized(partition)
    assert metadata is not None and metadata["cases"] == 4
    assert metadata["llm_calls"] == 0 and metadata["cache_hits"] == 0
    assert metadata["llm_batch_answers"] == 4 and metadata["llm_batch_ids"] == batch.id
    assert batch_stub.state.counts[f"{kind}.online"] == 0
    # billed at half the list price, shown on the partition that paid for it
    price = DEFAULT_PRICES[MODELS[kind]]
    expected = (
        metadata["input_tokens"] * price.input_per_mtok
        + metadata["output_tokens"] * price.output_per_mtok
    ) / 2e6
    assert metadata["cost_usd"] == pytest.approx(expected) and expected > 0
    assert metadata["llm_batch_cost_usd"] == pytest.approx(expected, abs=1e-6)

    # consumed: the next tick launches nothing; a rerun is all cache hits and costs nothing
    assert not _runs(env.tick())
    env.run(partition)
    again = env.materialized(partition)
    assert again is not None and again["cache_hits"] == 4 and again["cost_usd"] == 0
    assert len(batch_stub.batches) == 1 and batch_stub.state.counts[f"{kind}.online"] == 0


@pytest.mark.slow
def test_items_that_fail_in_the_batch_are_retried_online(batch_env, batch_stub):
    env = batch_env
    batch_stub.state.fail_when = lambda prompt: "number 2" in prompt
    env.run("qa|batch-anthropic")
    batch_stub.finish()
    (request,) = _runs(env.tick())
    env.run(request.partition_key, request.tags)

    metadata = env.materialized("qa|batch-anthropic")
    assert metadata is not None and metadata["cases"] == 4
    assert metadata["llm_batch_answers"] == 3 and metadata["llm_batch_errored"] == 1
    assert metadata["llm_calls"] == 1  # the one failed item, on the normal path
    assert batch_stub.state.counts["anthropic.online"] == 1
    assert len(batch_stub.batches) == 1  # never batched again


@pytest.mark.slow
def test_an_expired_batch_is_resubmitted_once_then_reported(batch_env, batch_stub):
    env = batch_env
    partition = "qa|batch-openai"
    batch_stub.state.expire_next = 2
    env.run(partition)
    batch_stub.finish()

    first = env.tick()  # expired: sent again, no run
    assert not _runs(first) and "sent again as" in first.skip_message
    assert len(batch_stub.batches) == 2 and len(batch_stub.batches[1].items) == 4

    batch_stub.finish()
    reported = env.tick()  # expired again: reported on the partition, no run, not sent again
    assert isinstance(reported, dg.SensorResult) and not _runs(reported)
    (event,) = reported.asset_events
    detail = event.metadata["detail"].value
    assert "4 of 4 requests expired twice" in detail and "batch-openai" in detail
    assert "Rematerialize the partition" in detail
    assert len(batch_stub.batches) == 2
    assert isinstance(env.tick(), dg.SkipReason) and env.materialized(partition) is None

    env.run(partition)  # a person asks again: a fresh batch
    assert len(batch_stub.batches) == 3


def _ask(store, cache, provider: ProviderConfig, words: list[str]) -> Waiting | Ready:
    requests = [
        BatchRequest(f"key-{w}", (Message("user", f"say {w}"),), Params(max_tokens=4))
        for w in words
    ]
    scope = {"suite": "qa", "system": f"s-{provider.kind}"}
    return plan_scope(store, scope, f"s-{provider.kind}", provider, requests, cache)


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_a_pending_batch_for_prompts_no_longer_asked_is_cancelled(tmp_path, batch_stub, kind):
    store = BatchStore(f"sqlite:///{tmp_path / 'batches.sqlite'}")
    cache = SQLiteResponseCache(tmp_path / "cache.sqlite")
    url = batch_stub.url if kind == "anthropic" else batch_stub.openai_url
    provider = ProviderConfig(name=kind, kind=kind, model=MODELS[kind], base_url=url, api_key="k")

    first = _ask(store, cache, provider, ["a", "b"])
    assert isinstance(first, Waiting) and first.submitted is not None
    # asked again unchanged: it waits on the same batch, nothing new goes out
    same = _ask(store, cache, provider, ["a", "b"])
    assert isinstance(same, Waiting) and same.submitted is None and not same.cancelled
    # the template changed: the old batch answers nothing asked now, so it is cancelled
    second = _ask(store, cache, provider, ["c"])
    assert isinstance(second, Waiting) and second.submitted is not None
    assert [j.batch_id for j in second.cancelled] == [first.submitted.batch_id]
    assert batch_stub.state.counts[f"{kind}.cancel"] == 1
    record = store.get(first.submitted.batch_id)
    assert record is not None and record.state == "cancelled"
    cache.close()


def _systems_file(tmp_path: Path, system: str) -> Path:
    path = tmp_path / "systems.yaml"
    path.write_text(f"systems:\n{system}")
    return path


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "  - {name: sometimes, mode: later, template: T, providers: [{kind: openai, model: m}]}",
            "system 'sometimes': unknown mode 'later'",
        ),
        (
            "  - {name: gem, mode: batch, template: T,"
            " providers: [{kind: gemini, model: gemini-2.5-flash}]}",
            "system 'gem': mode batch sends its batch to its first provider, "
            "gemini/gemini-2.5-flash, which has no batch API",
        ),
        (
            "  - {name: here, mode: batch, template: T, providers: [{kind: local, model: local}]}",
            "system 'here': mode batch sends its batch to its first provider, local/local",
        ),
        (
            "  - {name: nocache, mode: batch, cache: false, template: T,"
            " providers: [{kind: anthropic, model: claude-haiku-4-5}]}",
            "system 'nocache': mode batch delivers its answers through the response cache",
        ),
    ],
)
def test_bad_batch_configuration_is_refused_at_load_naming_the_system(tmp_path, entry, message):
    template = REPO / "prompts" / "qa_answer.j2"
    path = _systems_file(tmp_path, entry.replace("template: T", f"template: {template}"))
    with pytest.raises(ConfigError) as error:
        load_llm_systems(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)
