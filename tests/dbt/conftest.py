"""A tiny evaluation (2 suites x 2 systems) run through Dagster in-process, then the warehouse
assets and the real dbt project on a throwaway DuckDB warehouse."""

import json
import shutil
import warnings
from pathlib import Path

import dagster as dg
import pytest
from support.evaluation import TunableSystem

from assets.dbt import load_dbt_project
from assets.runner import execute_partitions
from flowstone.evaluation.catalog import load_catalog
from flowstone.systems.base import SystemRegistry
from flowstone.systems.baselines import EchoSystem
from flowstone.warehouse.project import dbt_project_dir
from io_managers.object_store import ObjectStoreIOManager
from resources.worker_pool import PythonWorkerPoolResource

warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

QA = [
    {
        "id": f"q{i}",
        "input": f"What colour is item {i}?",
        "expected": f"colour {i}",
        "context": f"Item {i} has colour {i}.",
        "tags": ["easy" if i % 2 else "hard"],
    }
    for i in range(4)
]
DOCS = [
    {"id": f"d{i}", "input": f"Story {i} begins. It ends.", "expected": f"Story {i} begins."}
    for i in range(3)
]
SETTINGS = {
    "defaults": {"metrics": {"exact_match": {}, "fuzzy_match": {}}},
    "suites": {"docs": {"metrics": {"fuzzy_match": {}, "rouge1": {}}}},
}


class Lab:
    """Everything a test needs: definitions, instance, and helpers to run them."""

    def __init__(self, tmp: Path, instance, project_dir: Path):
        suites = tmp / "suites"
        suites.mkdir()
        (suites / "qa.jsonl").write_text("\n".join(json.dumps(c) for c in QA))
        (suites / "docs.jsonl").write_text("\n".join(json.dumps(c) for c in DOCS))
        settings = tmp / "evaluation.yaml"
        settings.write_text(json.dumps(SETTINGS))
        self.tmp = tmp
        self.tunable = TunableSystem()
        self.catalog = load_catalog(suites, settings, SystemRegistry([EchoSystem(), self.tunable]))
        self.instance = instance
        self.warehouse = tmp / "warehouse.duckdb"
        self.project_dir = project_dir
        self.build()

    def build(self) -> None:
        """The product's code location on this lab's suites, objects folder and pool."""
        from flowstone.definitions import build_definitions

        self.project = load_dbt_project()
        self.defs = build_definitions(
            catalog=self.catalog,
            resources={
                "io_manager": ObjectStoreIOManager(base_path=str(self.tmp / "objects")),
                "worker_pool": PythonWorkerPoolResource(),
            },
        )
        self.keys = self.defs.resolve_job_def("evaluation_job").partitions_def.get_partition_keys()

    def evaluate(self) -> None:
        job = self.defs.resolve_job_def("evaluation_job")
        results = execute_partitions(job, self.instance, self.keys, single_run=True)
        assert all(result.success for result in results.values())


@pytest.fixture
def lab_factory(tmp_path, monkeypatch):
    """Build a Lab on a fresh warehouse; ``project_dir`` swaps in another dbt project."""
    monkeypatch.setenv("FLOWSTONE_OUTPUTS_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("FLOWSTONE_WAREHOUSE", str(tmp_path / "warehouse.duckdb"))
    with dg.instance_for_test() as instance:

        def make(project_dir: Path | None = None) -> Lab:
            if project_dir is not None:
                monkeypatch.setenv("FLOWSTONE_DBT_PROJECT_DIR", str(project_dir))
            return Lab(tmp_path, instance, project_dir or dbt_project_dir())

        yield make


@pytest.fixture
def project_copy(tmp_path) -> Path:
    """A copy of the dbt project without its build artifacts, to break on purpose."""
    target = tmp_path / "dbt_project"
    shutil.copytree(
        dbt_project_dir(), target, ignore=shutil.ignore_patterns("target", "logs", ".user.yml")
    )
    return target
