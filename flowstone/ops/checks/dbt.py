"""Doctor check: dbt's target/manifest.json exists, parses and is newer than the project.

Why: dagster-dbt builds the analytics assets from the manifest; a missing or stale one makes
the code location run `dbt parse` each time it loads (a slower start, and a failed load if
the project does not parse).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flowstone.ops.checks.result import FAIL, OK, WARN, CheckResult, first_line


def check_dbt_manifest(project_dir: Path | None = None) -> CheckResult:
    """target/manifest.json exists, parses and is newer than every file dbt parses."""
    from flowstone.warehouse.project import dbt_executable, dbt_project_dir, newest_source_mtime

    name = "dbt manifest"
    project_dir = project_dir or dbt_project_dir()
    if not (project_dir / "dbt_project.yml").exists():
        return CheckResult(
            name,
            FAIL,
            f"no dbt project at {project_dir}",
            "set FLOWSTONE_DBT_PROJECT_DIR to the folder holding dbt_project.yml",
        )
    manifest = project_dir / "target" / "manifest.json"
    try:
        dbt = dbt_executable()
    except FileNotFoundError as exc:
        dbt = None
        no_dbt = str(exc)
    parse = f"cd {project_dir} && {dbt or 'dbt'} parse"
    if not manifest.exists():
        if dbt is None:
            return CheckResult(
                name, FAIL, f"{manifest} missing and dbt cannot build it: {no_dbt}", no_dbt
            )
        return CheckResult(
            name,
            WARN,
            f"{manifest} missing: the code location runs `dbt parse` each time it loads until "
            "one exists (a slower start, and a failed load if the project does not parse)",
            parse,
        )
    try:
        document = json.loads(manifest.read_text(encoding="utf-8"))
        version = document["metadata"]["dbt_version"]
        nodes = len(document.get("nodes", {}))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return CheckResult(
            name,
            FAIL,
            f"{manifest} is unreadable ({type(exc).__name__}: {first_line(exc)}); dagster-dbt "
            "cannot build the analytics assets from it",
            f"rm {manifest} && {parse}",
        )
    built = manifest.stat().st_mtime
    newest = newest_source_mtime(project_dir)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(built))
    if built < newest:
        return CheckResult(
            name,
            WARN,
            f"{manifest} (dbt {version}, {when}) is older than the project's files: the code "
            "location re-parses when it loads",
            parse,
        )
    return CheckResult(name, OK, f"{manifest}: dbt {version}, {nodes} nodes, built {when}")
