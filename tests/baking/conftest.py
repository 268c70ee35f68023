"""Small models and fixtures for the baking tests: a tiny classifier trained in a second and
dropped with its validation data and bake config, so tests exercise the real passes quickly;
every baking location under the test's temp folder; a throw-away instance."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # baking_test_models, bake_helpers by name

import pytest
from bake_helpers import write_tiny_classifier


@pytest.fixture
def tiny_drop(tmp_path: Path) -> Path:
    return write_tiny_classifier(tmp_path / "models")


@pytest.fixture
def env(tmp_path: Path, monkeypatch) -> Path:
    """Every baking location (drop folder, workspace, deployments, warehouse, outputs and the
    approvals store) under the test's temp folder."""
    for name, sub in (("FLOWSTONE_MODELS_DIR", "drop"), ("FLOWSTONE_BAKE_WORKSPACE", "ws"),
                      ("FLOWSTONE_DEPLOY_DIR", "deploy"), ("FLOWSTONE_WAREHOUSE", "wh.duckdb"),
                      ("FLOWSTONE_OUTPUTS_DIR", "out")):  # fmt: skip
        monkeypatch.setenv(name, str(tmp_path / sub))
    monkeypatch.setenv("FLOWSTONE_APPROVALS_DB_URL", f"sqlite:///{tmp_path / 'approvals.sqlite'}")
    return tmp_path


@pytest.fixture
def instance():
    """A throw-away Dagster instance with FlowStone's pool limits, as `make ui` sets them."""
    import dagster as dg

    from assets.pools import ensure_pool_limits

    with dg.instance_for_test() as inst:
        ensure_pool_limits(inst)
        yield inst
