"""Where FlowStone keeps things on disk.

Every location has one environment override so that a deployment (or a test) can move it
without touching code, and a repo-local default so that a fresh clone needs no set-up.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _from_env(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


def project_root() -> Path:
    """The checkout FlowStone runs from (suites, prompts and config files live here)."""
    return _from_env("FLOWSTONE_PROJECT_ROOT", PROJECT_ROOT)


def instance_dir() -> Path:
    """Dagster's instance folder; FlowStone's own durable state sits beside Dagster's."""
    return _from_env("DAGSTER_HOME", project_root() / ".dagster_home")


def suites_dir() -> Path:
    """The folder of JSONL evaluation suites (one file a suite)."""
    return _from_env("FLOWSTONE_SUITES_DIR", project_root() / "suites")


def evaluation_config_path() -> Path:
    """The YAML file with metric settings, thresholds and the regression margin."""
    return _from_env("FLOWSTONE_EVAL_CONFIG", project_root() / "evaluation.yaml")


def outputs_dir() -> Path:
    """Where assets write files a person opens: HTML reports, stored objects, the warehouse."""
    return _from_env("FLOWSTONE_OUTPUTS_DIR", project_root() / "outputs")


def reports_dir() -> Path:
    return outputs_dir() / "reports"


def warehouse_path() -> Path:
    """The DuckDB file shared by the database I/O manager and dbt-duckdb."""
    return _from_env("FLOWSTONE_WAREHOUSE", outputs_dir() / "warehouse.duckdb")


def models_dir() -> Path:
    """The watched drop folder for models to bake (one file or folder a model)."""
    return _from_env("FLOWSTONE_MODELS_DIR", outputs_dir() / "models")


def bake_workspace() -> Path:
    """Where bakes keep their pass checkpoints, so a failed later pass resumes."""
    return _from_env("FLOWSTONE_BAKE_WORKSPACE", outputs_dir() / "baking")


def deployments_dir() -> Path:
    """The deployment location approved packages are copied to (one folder a model)."""
    return _from_env("FLOWSTONE_DEPLOY_DIR", outputs_dir() / "deployments")
