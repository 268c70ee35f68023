"""Fixtures for the viewer tests: real materializations, the app on a loopback port, Chromium.

- ``viewer_data`` (once a session) materializes a small evaluation (qa and docs x echo, lead-1
  and tunable) through the product's code location in process: a first run, the warehouse
  and the dbt build (so ``analytics.report_history`` keeps it), a second, worse run of tunable
  into the warehouse (a regression and a second point on every trend), and a bake of a tiny
  classifier. The environment points at a temp folder only while it runs; the viewer is then
  given the locations explicitly.
- ``viewer_url`` serves the app on those locations (uvicorn in a thread, a free port).
- Screenshots go to $FLOWSTONE_TEST_ARTIFACTS (default: a fresh temp folder).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.approvals_page import serve_viewer_app
from support.chromium import chromium_ready_fixture

from flowstone.storage.location import parse_object_store_url
from flowstone.web.sources import ViewerSources

ARTIFACTS_ENV = "FLOWSTONE_TEST_ARTIFACTS"

QA = [
    {
        "id": f"qa-{i}",
        "input": f"What colour is item {i}?",
        "expected": f"colour {i}",
        "context": f"Item {i} has colour {i}. Other items vary.",
        "tags": ["easy" if i % 2 else "hard", *(["numbers"] if i < 2 else [])],
        "label": float(i),  # a gold score, for the suite metrics' correlation
    }
    for i in range(5)
]
DOCS = [
    {
        "id": f"d{i}",
        "input": f"Story {i} begins here. It ends.",
        # the last case has two acceptable answers (the case page shows both)
        "expected": f"Story {i} begins here."
        if i < 2
        else [f"Story {i} begins here.", f"Story {i} starts, then ends."],
    }
    for i in range(3)
]
SETTINGS = {
    "defaults": {
        "metrics": {"exact_match": {}, "fuzzy_match": {"pass_score": 0.6}, "rouge1": {}},
        "thresholds": {"rouge1": {"min_mean": 0.5}},
    },
    # echo repeats the question: its fuzzy-match mean stays under this floor on qa
    # and every system's fuzzy-match scores are the same on every qa case: spearman is
    # undefined, so its threshold fails; chrF (0-100) is a figure the page compares
    "suites": {
        "qa": {
            "suite_metrics": {"chrf": {}, "spearman": {"metric": "fuzzy_match"}},
            "thresholds": {
                "fuzzy_match": {"min_mean": 0.58},
                "rouge1": {"min_mean": 0.5},
                "chrf": {"min_mean": 20},
                "spearman": {"min_mean": 0.0},
            },
        }
    },
}
SUITES = {"qa": QA, "docs": DOCS}
SYSTEMS = ["echo", "lead-1", "tunable"]
MODEL = "tiny"


@dataclass(frozen=True)
class ViewerData:
    root: Path
    sources: ViewerSources
    systems: tuple[str, ...] = tuple(SYSTEMS)
    model: str = MODEL


def sources_under(root: Path, objects: Path, warehouse: Path, suites: Path) -> ViewerSources:
    outputs = root / "out"
    return ViewerSources(
        object_store=parse_object_store_url(str(objects), "test"),
        warehouse=warehouse,
        reports_dir=outputs / "reports",
        suites_dir=suites,
        bake_workspace=outputs / "baking",
        deployments_dir=outputs / "deployments",
    )


@pytest.fixture(scope="session")
def viewer_data(tmp_path_factory: pytest.TempPathFactory) -> ViewerData:
    import dagster as dg
    from baking.bake_helpers import write_tiny_classifier  # tests/baking's tiny model
    from support.evaluation_lab import Lab

    from assets.runner import bake_models, execute_partitions, materialize_analytics
    from assets.warehouse import WAREHOUSE_JOB
    from flowstone.baking import intake
    from flowstone.systems.baselines import EchoSystem, LeadSummariser
    from flowstone.warehouse.project import dbt_project_dir

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    root = tmp_path_factory.mktemp("viewer")
    with pytest.MonkeyPatch.context() as env, dg.instance_for_test() as instance:
        env.setenv("FLOWSTONE_OUTPUTS_DIR", str(root / "out"))
        env.setenv("FLOWSTONE_WAREHOUSE", str(root / "warehouse.duckdb"))
        lab = Lab(
            root, instance, dbt_project_dir(), SUITES, SETTINGS, [EchoSystem(), LeadSummariser(1)]
        )
        lab.evaluate()
        first = materialize_analytics(lab.defs, instance, lab.keys)
        assert all(r.success for r in first.values()), {k: r.success for k, r in first.items()}
        # A worse second run: the report flags regressions, the warehouse gets its rows, and
        # with the first run in dbt's history every trend has two points.
        lab.tunable.quality = 0.0
        lab.evaluate()
        second = execute_partitions(
            lab.defs.resolve_job_def(WAREHOUSE_JOB), instance, lab.keys, single_run=True
        )
        assert all(r.success for r in second.values())
        assert all(r.success for r in lab.compare(["qa"]).values())  # docs: none, on purpose
        staged = write_tiny_classifier(root / "staging", name=MODEL)
        intake.add_model(staged, MODEL, root / "out" / "models")
        baked = bake_models(lab.defs, instance, [MODEL])
        assert baked[MODEL].success
    return ViewerData(root, sources_under(root, lab.objects, lab.warehouse, lab.suites_dir))


@pytest.fixture(scope="session")
def viewer_url(viewer_data: ViewerData) -> Iterator[str]:
    with serve_viewer_app(sources=viewer_data.sources) as url:
        yield url


@pytest.fixture
def empty_sources(tmp_path: Path, repo_root: Path) -> ViewerSources:
    """Locations nothing has been written to, with the repo's suites defined."""
    return sources_under(
        tmp_path, tmp_path / "objects", tmp_path / "warehouse.duckdb", repo_root / "suites"
    )


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """$FLOWSTONE_TEST_ARTIFACTS, or a temp folder that outlives the run (CI uploads it)."""
    configured = os.environ.get(ARTIFACTS_ENV)
    path = (
        Path(configured).expanduser().resolve()
        if configured
        else Path(tempfile.mkdtemp(prefix="flowstone-web-artifacts-"))
    )
    path.mkdir(parents=True, exist_ok=True)
    print(f"\n[web] screenshots: {path}")
    return path


chromium_ready = chromium_ready_fixture("web")
