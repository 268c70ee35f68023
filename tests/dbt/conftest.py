"""A tiny evaluation (2 suites x 2 systems) run through Dagster in-process, then the warehouse
assets and the real dbt project on a throwaway DuckDB warehouse."""

import shutil
import warnings
from pathlib import Path

import dagster as dg
import pytest
from support.evaluation_lab import Lab

from flowstone.warehouse.project import dbt_project_dir

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


@pytest.fixture
def lab_factory(tmp_path, monkeypatch):
    """Build a Lab on a fresh warehouse; ``project_dir`` swaps in another dbt project,
    ``suites`` and ``settings`` other suites and evaluation settings."""
    monkeypatch.setenv("FLOWSTONE_OUTPUTS_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("FLOWSTONE_WAREHOUSE", str(tmp_path / "warehouse.duckdb"))
    with dg.instance_for_test() as instance:

        def make(
            project_dir: Path | None = None,
            suites: dict[str, list[dict]] | None = None,
            settings: dict | None = None,
        ) -> Lab:
            if project_dir is not None:
                monkeypatch.setenv("FLOWSTONE_DBT_PROJECT_DIR", str(project_dir))
            return Lab(
                tmp_path,
                instance,
                project_dir or dbt_project_dir(),
                suites or {"qa": QA, "docs": DOCS},
                settings or SETTINGS,
            )

        yield make


@pytest.fixture
def project_copy(tmp_path) -> Path:
    """A copy of the dbt project without its build artifacts, to break on purpose."""
    target = tmp_path / "dbt_project"
    shutil.copytree(
        dbt_project_dir(), target, ignore=shutil.ignore_patterns("target", "logs", ".user.yml")
    )
    return target
