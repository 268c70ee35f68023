"""The evaluation assets, run by Dagster in-process on a throwaway instance.

Suites, settings and systems are real files and real systems; only the catalog is small so
the tests stay fast."""

import json
import warnings

import dagster as dg
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._core.definitions.observe import observe
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)
from dagster._utils.test.data_versions import get_stale_status_resolver
from support.evaluation import TunableSystem

from assets.evaluation import build_evaluation_assets
from flowstone.evaluation.catalog import load_catalog
from flowstone.systems.base import SystemRegistry
from flowstone.systems.baselines import EchoSystem, LeadSummariser
from io_managers.object_store import ObjectStoreIOManager
from resources.worker_pool import PythonWorkerPoolResource

pytestmark = pytest.mark.slow  # real Dagster runs of the evaluation assets, 3-20 s each
warnings.filterwarnings("ignore", category=dg.BetaWarning)
REPORT = dg.AssetKey(["evaluation", "report"])

QA = [
    {
        "id": f"q{i}",
        "input": f"What colour is item {i}?",
        "expected": f"colour {i}",
        "context": f"Item {i} has colour {i}. Other items vary.",
        "tags": ["easy" if i % 2 else "hard"],
    }
    for i in range(4)
]
DOCS = [
    {
        "id": f"d{i}",
        "input": f"Story {i} begins here. It goes on a while. It ends.",
        "expected": f"Story {i} begins here.",
        "tags": ["news"],
    }
    for i in range(3)
]
SETTINGS = {
    "defaults": {
        "metrics": {"exact_match": {}, "fuzzy_match": {}, "rouge1": {}},
        "thresholds": {"fuzzy_match": {"min_mean": 0.2}},
    },
    "suites": {"docs": {"thresholds": {"rouge1": {"min_mean": 0.99, "blocking": True}}}},
}


@pytest.fixture
def env(tmp_path, monkeypatch):
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "qa.jsonl").write_text("\n".join(json.dumps(c) for c in QA))
    (suites / "docs.jsonl").write_text("\n".join(json.dumps(c) for c in DOCS))
    settings = tmp_path / "evaluation.yaml"
    settings.write_text(json.dumps(SETTINGS))
    monkeypatch.setenv("FLOWSTONE_OUTPUTS_DIR", str(tmp_path / "out"))
    tunable = TunableSystem()
    systems = SystemRegistry([EchoSystem(), LeadSummariser(1), tunable])
    catalog = load_catalog(suites, settings, systems)
    assets = build_evaluation_assets(catalog)
    defs = dg.Definitions(
        assets=assets,
        jobs=[
            dg.define_asset_job("evaluation_job", selection=dg.AssetSelection.groups("evaluation"))
        ],
        resources={
            "io_manager": ObjectStoreIOManager(base_path=str(tmp_path / "objects")),
            "worker_pool": PythonWorkerPoolResource(),
        },
    )
    with dg.instance_for_test() as instance:
        yield {
            "defs": defs,
            "job": defs.resolve_job_def("evaluation_job"),
            "instance": instance,
            "tunable": tunable,
            "assets": assets,
            "suites": suites,
            "tmp": tmp_path,
        }


def latest_report_metadata(instance, key):
    record = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=REPORT, asset_partitions=[key]), limit=1
    ).records[0]
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def observe_sources(env):
    for asset in env["assets"][:3]:
        observe([asset], instance=env["instance"])


def test_one_partition_end_to_end(env):
    result = env["job"].execute_in_process(partition_key="qa|lead-1", instance=env["instance"])
    assert result.success
    meta = latest_report_metadata(env["instance"], "qa|lead-1")
    assert meta["cases"] == 4
    assert 0.0 <= meta["mean/fuzzy_match"] <= 1.0 and "mean/exact_match" in meta
    html = (env["tmp"] / "out" / "reports" / "qa" / "lead-1.html").read_text()
    assert "data:image/png;base64," in html and "By tag" in html
    # qa sets a fuzzy_match threshold only (docs sets rouge1): one result, for this partition;
    # no regression result either, with nothing materialized before to compare with
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.partition, c.passed) for c in checks] == [
        ("fuzzy_match_above_threshold", "qa|lead-1", True)
    ]


def test_blocking_threshold_fails_with_error_severity(env):
    result = env["job"].execute_in_process(
        partition_key="docs|echo", instance=env["instance"], raise_on_error=False
    )
    assert not result.success  # a failed blocking check fails the step, so nothing downstream runs
    check = {c.check_name: c for c in result.get_asset_check_evaluations()}[
        "rouge1_above_threshold"
    ]
    assert not check.passed
    assert check.severity == dg.AssetCheckSeverity.ERROR
    # the report itself is recorded, so the UI shows what failed
    assert latest_report_metadata(env["instance"], "docs|echo")["passed"] is False


def test_regression_against_previous_materialization(env):
    job, instance = env["job"], env["instance"]
    assert job.execute_in_process(partition_key="qa|tunable", instance=instance).success
    env["tunable"].quality = 0.0
    result = job.execute_in_process(partition_key="qa|tunable", instance=instance)
    regression = {c.check_name: c for c in result.get_asset_check_evaluations()}["no_regression"]
    assert not regression.passed and regression.partition == "qa|tunable"
    assert any(k.startswith("drop/") for k in regression.metadata)
    assert latest_report_metadata(instance, "qa|tunable")["regressions"] >= 1


def test_rescoring_reuses_stored_predictions(env):
    job, instance = env["job"], env["instance"]
    assert job.execute_in_process(partition_key="qa|tunable", instance=instance).success
    assert env["tunable"].calls == 1
    rescore = job.execute_in_process(
        partition_key="qa|tunable",
        instance=instance,
        asset_selection=[dg.AssetKey(["evaluation", "scores"]), REPORT],
    )
    assert rescore.success
    assert env["tunable"].calls == 1


def check_status(instance, check: str, partitions) -> dict[str, str]:
    """Each partition's status of a partitioned check, as the Dagster UI computes it."""
    key = dg.AssetCheckKey(REPORT, check)
    state = instance.event_log_storage.get_asset_check_state([(key, partitions)])[key]
    return {
        partition: status.value
        for status, subset in state.subsets.items()
        for partition in subset.value.get_partition_keys()
    }


def test_single_run_batch_keeps_per_partition_metadata_and_check_results(env):
    job, instance = env["job"], env["instance"]
    keys = job.partitions_def.get_partition_keys()
    result = job.execute_in_process(
        instance=instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]},
        raise_on_error=False,
    )
    # docs' blocking rouge1 threshold (0.99) fails docs|echo and fails the run, after every
    # report and every partition's check result is written
    assert not result.success
    verdicts = {(c.check_name, c.partition): c.passed for c in result.get_asset_check_evaluations()}
    assert verdicts[("rouge1_above_threshold", "docs|echo")] is False
    assert verdicts[("rouge1_above_threshold", "docs|lead-1")] is True
    assert not any(p.startswith("qa|") for (name, p) in verdicts if name.startswith("rouge1"))
    assert {p for (name, p) in verdicts if name.startswith("fuzzy")} == {
        k for k in keys if k.startswith("qa|")
    }

    # the instance keeps one status per partition: the failure is not hidden by a later pass
    rouge1 = check_status(instance, "rouge1_above_threshold", job.partitions_def)
    assert rouge1["docs|echo"] == "FAILED" and rouge1["docs|lead-1"] == "SUCCEEDED"
    assert job.execute_in_process(partition_key="docs|lead-1", instance=instance).success
    rouge1 = check_status(instance, "rouge1_above_threshold", job.partitions_def)
    assert rouge1["docs|echo"] == "FAILED" and rouge1["docs|lead-1"] == "SUCCEEDED"
    # a suite without a rouge1 threshold never shows it as passed
    assert rouge1.get("qa|lead-1") != "SUCCEEDED"
    assert (
        check_status(instance, "fuzzy_match_above_threshold", job.partitions_def)["qa|tunable"]
        == "SUCCEEDED"
    )

    metas = {k: latest_report_metadata(instance, k) for k in keys}
    assert metas["qa|tunable"]["mean/exact_match"] == 1.0
    assert metas["qa|echo"]["mean/exact_match"] == 0.0
    assert metas["docs|echo"]["cases"] == 3 and metas["qa|echo"]["cases"] == 4
    # a later one-partition run reads what the batch wrote
    assert job.execute_in_process(
        partition_key="qa|echo", instance=instance, asset_selection=[REPORT]
    ).success


def stale_partitions(env, asset: str) -> set[str]:
    resolver = get_stale_status_resolver(env["instance"], env["assets"])
    key = dg.AssetKey(["evaluation", asset])
    return {
        k
        for k in env["job"].partitions_def.get_partition_keys()
        if resolver.get_status(key, k) == StaleStatus.STALE
    }


def test_edits_mark_exactly_the_affected_partitions_stale(env):
    job, instance = env["job"], env["instance"]
    observe_sources(env)
    for key in job.partitions_def.get_partition_keys():  # docs|* fail a blocking check: fine here
        job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)
    assert stale_partitions(env, "suite") == set() and stale_partitions(env, "predictions") == set()

    (env["suites"] / "docs.jsonl").write_text("\n".join(json.dumps(c) for c in DOCS[:2]))
    env["tunable"].quality = 0.5  # a system parameter change: a new fingerprint
    observe_sources(env)
    assert stale_partitions(env, "suite") == {"docs|echo", "docs|lead-1", "docs|tunable"}
    assert stale_partitions(env, "predictions") == {"docs|tunable", "qa|tunable"}
    assert stale_partitions(env, "scores") == set()


def test_predictions_missing_a_case_fail_without_writing_scores(env):
    import pandas as pd

    from flowstone.evaluation.scoring import ScoringError, score_suite
    from flowstone.evaluation.suites import load_suite

    suite = load_suite(env["suites"] / "qa.jsonl")
    partial = pd.DataFrame({"case_id": ["q0"], "output": ["x"]})
    settings = load_catalog(env["suites"], env["tmp"] / "evaluation.yaml").settings.for_suite("qa")
    with pytest.raises(ScoringError, match="no output for 3 case"):
        score_suite(suite, partial, settings)


def test_scores_come_from_a_shared_pool_server(env, tmp_path):
    """With a pool server configured, scoring runs in its warm workers and gives the same scores."""
    import tempfile
    from pathlib import Path

    from flowstone.workers.pool import WorkerPool
    from flowstone.workers.server import PoolServer

    in_process = env["job"].execute_in_process(partition_key="qa|lead-1", instance=env["instance"])
    expected = latest_report_metadata(env["instance"], "qa|lead-1")

    with tempfile.TemporaryDirectory(prefix="fse-", dir="/tmp") as short:
        pool = WorkerPool(bridge="metrics", size=1, registry_dir=tmp_path, health_interval_s=None)
        with PoolServer(pool, Path(short) / "pool.sock") as server:
            defs = dg.Definitions(
                assets=env["assets"],
                jobs=[
                    dg.define_asset_job(
                        "evaluation_job", selection=dg.AssetSelection.groups("evaluation")
                    )
                ],
                resources={
                    "io_manager": ObjectStoreIOManager(base_path=str(env["tmp"] / "objects")),
                    "worker_pool": PythonWorkerPoolResource(socket_path=str(server.socket_path)),
                },
            )
            result = defs.resolve_job_def("evaluation_job").execute_in_process(
                partition_key="qa|lead-1", instance=env["instance"]
            )
            served = pool.stats()["requests"]
    assert in_process.success and result.success
    assert served >= 3  # exact_match, fuzzy_match, rouge1 went through the server
    pooled = latest_report_metadata(env["instance"], "qa|lead-1")
    for metric in ("exact_match", "fuzzy_match", "rouge1"):
        assert pooled[f"mean/{metric}"] == pytest.approx(expected[f"mean/{metric}"])


STS_INPUTS = ["the cat sat on the mat", "a dog ran in the park", "rain fell all day long",
              "we ate bread and cheese"]  # fmt: skip
STS = [  # echo answers with the input: the closer the expected text, the higher the label
    {"id": f"s{i}", "input": text, "expected": expected, "label": float(4 - i)}
    for i, (text, expected) in enumerate(
        zip(
            STS_INPUTS,
            ["the cat sat on the mat", "a dog ran in a park", "rain all day", "nothing alike"],
            strict=True,
        )
    )
]
STS_SETTINGS = {
    "defaults": {
        "metrics": {"fuzzy_match": {}},
        "suite_metrics": {"spearman": {"metric": "fuzzy_match"}},
        "thresholds": {"spearman": {"min_mean": 0.5, "blocking": True}},
    }
}


def test_a_suite_metric_threshold_is_a_partitioned_check_in_the_code_location(
    tmp_path, monkeypatch
):
    """Through the product's code location: a blocking spearman threshold passes on a system
    whose scores rank like the labels, and fails (blocking, with the reason) where the
    correlation is undefined; the regression check compares means only."""
    from support.evaluation_lab import Lab

    from flowstone.warehouse.project import dbt_project_dir

    monkeypatch.setenv("FLOWSTONE_OUTPUTS_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("FLOWSTONE_WAREHOUSE", str(tmp_path / "warehouse.duckdb"))
    with dg.instance_for_test() as instance:
        lab = Lab(tmp_path, instance, dbt_project_dir(), {"sts": STS}, STS_SETTINGS)
        job = lab.defs.resolve_job_def("evaluation_job")
        spec = lab.defs.resolve_asset_graph().get_check_spec(
            dg.AssetCheckKey(REPORT, "spearman_above_threshold")
        )
        assert spec.blocking and "over the whole suite" in spec.description

        ranked = job.execute_in_process(partition_key="sts|echo", instance=instance)
        assert ranked.success
        [check] = ranked.get_asset_check_evaluations()
        assert (check.check_name, check.passed) == ("spearman_above_threshold", True)
        assert check.metadata["value"].value == pytest.approx(1.0)
        assert latest_report_metadata(instance, "sts|echo")["suite/spearman"] == 1.0

        # tunable answers every case exactly: every fuzzy score is 1.0, spearman undefined
        flat = job.execute_in_process(
            partition_key="sts|tunable", instance=instance, raise_on_error=False
        )
        assert not flat.success  # blocking: the failed check fails the step
        [check] = flat.get_asset_check_evaluations()
        assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
        assert check.metadata["value"].value == "undefined"
        assert "spearman is undefined over this suite" in check.description
        meta = latest_report_metadata(instance, "sts|tunable")
        assert meta["suite/spearman"] == "undefined" and meta["passed"] is False

        again = job.execute_in_process(partition_key="sts|echo", instance=instance)
        checks = {c.check_name: c for c in again.get_asset_check_evaluations()}
        assert checks["no_regression"].passed
        assert checks["no_regression"].metadata["compared_metrics"].value == 1  # fuzzy_match


def test_a_single_run_reports_a_blocking_check_failure_on_its_partition_only(env):
    """What `flowstone demo` shows per partition of its one run: docs|echo fails its blocking
    rouge1 threshold, which fails the run (as it would fail that partition's own run), while
    every other partition is reported done; none runs again, since all were materialized."""
    from assets.runner import execute_partitions

    job, instance = env["job"], env["instance"]
    keys = sorted(job.partitions_def.get_partition_keys())
    finished: dict[str, bool] = {}
    steps: list[str] = []
    results = execute_partitions(
        job,
        instance,
        keys,
        single_run=True,
        on_partition=finished.__setitem__,
        on_step=lambda step, partitions, seconds, ok: steps.append(step),
        retry_alone=True,
    )
    assert len(instance.get_runs()) == 1 and not results["qa|echo"].success
    assert finished == {k: k != "docs|echo" for k in keys}
    assert steps == [f"evaluation__{s}" for s in ("suite", "predictions", "scores", "report")]
