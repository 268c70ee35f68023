"""The report's metadata shows means to 3 decimals; what is stored and compared keeps them whole:
an unchanged partition materialized again compares equal to its previous report, not to the
rounded figure."""

import json
import warnings

import dagster as dg
import pytest

from assets.evaluation import build_evaluation_assets
from flowstone.evaluation.catalog import load_catalog
from flowstone.systems.base import SystemRegistry
from flowstone.systems.baselines import EchoSystem
from io_managers.object_store import ObjectStoreIOManager
from resources.worker_pool import PythonWorkerPoolResource

pytestmark = pytest.mark.slow  # two real Dagster runs of the evaluation assets
warnings.filterwarnings("ignore", category=dg.BetaWarning)
REPORT = dg.AssetKey(["evaluation", "report"])
CASES = [
    {
        "id": f"c{i}",
        "input": f"The parcel number {i} left on time.",
        "expected": f"Parcel {i} left.",
    }
    for i in range(3)
]


def test_metadata_rounds_means_stored_report_and_comparison_do_not(tmp_path, monkeypatch):
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "qa.jsonl").write_text("\n".join(json.dumps(c) for c in CASES))
    settings = tmp_path / "evaluation.yaml"
    settings.write_text(json.dumps({"defaults": {"metrics": {"fuzzy_match": {}}}}))
    monkeypatch.setenv("FLOWSTONE_OUTPUTS_DIR", str(tmp_path / "out"))
    catalog = load_catalog(suites, settings, SystemRegistry([EchoSystem()]))
    defs = dg.Definitions(
        assets=build_evaluation_assets(catalog),
        jobs=[
            dg.define_asset_job("evaluation_job", selection=dg.AssetSelection.groups("evaluation"))
        ],
        resources={
            "io_manager": ObjectStoreIOManager(base_path=str(tmp_path / "objects")),
            "worker_pool": PythonWorkerPoolResource(),
        },
    )
    job = defs.resolve_job_def("evaluation_job")
    with dg.instance_for_test() as instance:
        for _ in range(2):  # the same partition twice, nothing changed in between
            assert job.execute_in_process(partition_key="qa|echo", instance=instance).success
        stored = defs.load_asset_value(REPORT, partition_key="qa|echo", instance=instance)
        record = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=REPORT, asset_partitions=["qa|echo"]), limit=1
        ).records[0]
    mean = stored["metrics"]["fuzzy_match"]["mean"]
    assert round(mean, 3) != mean  # a mean with more than 3 decimals, or the test proves nothing
    assert record.asset_materialization.metadata["mean/fuzzy_match"].value == round(mean, 3)
    assert stored["previous_means"] == {"fuzzy_match": mean}  # the previous report, unrounded
    assert stored["regressions"] == []
