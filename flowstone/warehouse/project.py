"""Where the dbt project lives and whether its parsed manifest is out of date.

Why: dagster-dbt builds asset definitions from ``target/manifest.json``. A fresh clone has no
manifest (``target/`` is not committed), and an edited model makes the old one wrong, so the
code location re-parses when any project file is newer than the manifest. ``dbt parse`` reads
files only: no warehouse connection, no network, no packages (the project has none).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from flowstone.paths import project_root

PROJECT_FILES = ("dbt_project.yml", "profiles.yml")
PROJECT_FOLDERS = ("models", "macros", "tests", "seeds", "snapshots", "analyses")


def dbt_project_dir() -> Path:
    """The dbt project (``FLOWSTONE_DBT_PROJECT_DIR`` overrides ``<root>/dbt_project``)."""
    value = os.environ.get("FLOWSTONE_DBT_PROJECT_DIR")
    return Path(value).expanduser().resolve() if value else project_root() / "dbt_project"


def newest_source_mtime(project_dir: Path) -> float:
    """The latest modification time over the files dbt parses."""
    paths = [project_dir / name for name in PROJECT_FILES]
    for folder in PROJECT_FOLDERS:
        root = project_dir / folder
        if root.is_dir():
            paths.extend(p for p in root.rglob("*") if p.is_file())
    return max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)


def manifest_is_stale(project_dir: Path, manifest_path: Path) -> bool:
    """True if the manifest is missing or older than a project file."""
    if not manifest_path.exists():
        return True
    return manifest_path.stat().st_mtime < newest_source_mtime(project_dir)


def dbt_executable() -> str:
    """The ``dbt`` beside this Python (the venv's), else the one on PATH.

    Why: ``make demo`` and ``dagster dev`` run ``.venv/bin/...`` without activating the venv,
    so ``dbt`` is often not on PATH although dbt-core is installed next to us.
    """
    beside = Path(sys.executable).parent / "dbt"
    if beside.exists():
        return str(beside)
    found = shutil.which("dbt")
    if found is None:
        raise FileNotFoundError(
            f"no dbt executable beside {sys.executable} or on PATH; install the project "
            "(make install) so dbt-core and dbt-duckdb are in the venv"
        )
    return found
