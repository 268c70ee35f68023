"""The Dagster-free half of the instance check: the folder, its dagster.yaml, its PostgreSQL.

Why split: asking Dagster to open the instance needs Dagster, which the core does not import;
the wiring's ``assets/instance_check.py`` does that part. Everything before it (DAGSTER_HOME
exists, dagster.yaml parses to a mapping, every PostgreSQL it names accepts a connection) and
the wording of every outcome live here, so the report reads the same and is testable without
Dagster.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flowstone import paths
from flowstone.ops.checks.result import FAIL, OK, WARN, CheckResult, first_line

NAME = "dagster instance"


@dataclass(frozen=True)
class InstanceSetup:
    """Where the instance lives, once its folder and dagster.yaml have passed."""

    home: Path
    unset: bool  # DAGSTER_HOME not set: FlowStone's default folder

    @property
    def config(self) -> Path:
        return self.home / "dagster.yaml"

    @property
    def where(self) -> str:
        return f"DAGSTER_HOME {self.home}" + (" (unset; FlowStone's default)" if self.unset else "")


def inspect_instance() -> InstanceSetup | CheckResult:
    """The instance's setup, or the failed check when its folder, dagster.yaml or a PostgreSQL
    it names is unusable (a socket answers at once where Dagster retries a refused connection
    for seconds)."""
    setup = InstanceSetup(paths.instance_dir(), unset=not os.environ.get("DAGSTER_HOME"))
    home, config, where = setup.home, setup.config, setup.where
    if not home.is_dir():
        return CheckResult(
            NAME,
            FAIL,
            f"{where} does not exist",
            f"create it: mkdir -p {home} && cp {paths.project_root() / 'dagster.yaml'} {home}/ "
            "(`flowstone demo` does this for the embedded default)",
        )
    if not config.exists():
        return setup
    import yaml

    try:
        document = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        return CheckResult(
            NAME, FAIL, f"{config} does not parse: {exc}", f"correct the YAML in {config}"
        )
    if document is not None and not isinstance(document, dict):
        return CheckResult(
            NAME, FAIL, f"{config} is not a mapping", f"make {config} a YAML mapping"
        )
    for host, port in postgres_addresses(document or {}):
        try:
            socket.create_connection((host, port), timeout=3).close()
        except OSError as exc:
            return CheckResult(
                NAME,
                FAIL,
                f"{where}: storage unreachable: PostgreSQL at {host}:{port} from "
                f"{config.name}: {exc.strerror or exc}",
                f"start PostgreSQL at {host}:{port}, or fix the storage section of {config}",
            )
    return setup


def config_rejected(setup: InstanceSetup, exc: BaseException) -> CheckResult:
    """Dagster refused dagster.yaml (an unknown key, a wrong type)."""
    return CheckResult(
        NAME,
        FAIL,
        f"{setup.where}: Dagster rejects {setup.config.name}: {first_line(exc)}",
        f"correct {setup.config} (see https://docs.dagster.io/deployment/oss/dagster-yaml)",
    )


def storage_unreachable(setup: InstanceSetup, exc: BaseException) -> CheckResult:
    """The instance's storage did not open or did not answer a query."""
    return CheckResult(
        NAME,
        FAIL,
        f"{setup.where}: storage unreachable: {first_line(exc)}",
        f"start the database named in the storage section of {setup.config}, or fix its address",
    )


def instance_answered(setup: InstanceSetup, storage: str, runs: int) -> CheckResult:
    """The verdict once the storage answered: ok, or a warning when Dagster's own tools would
    not find this instance (DAGSTER_HOME unset) or it lacks FlowStone's dagster.yaml."""
    home, config, where = setup.home, setup.config, setup.where
    if setup.unset:
        return CheckResult(
            NAME,
            WARN,
            f"{where}: {storage}, {runs} runs",
            f"export DAGSTER_HOME={home}: `dagster dev` without it uses a temporary instance "
            "and would not see these runs",
        )
    if not config.exists():
        return CheckResult(
            NAME,
            WARN,
            f"{where}: no dagster.yaml, Dagster's defaults ({storage}, {runs} runs)",
            f"cp {paths.project_root() / 'dagster.yaml'} {home}/ for FlowStone's run limits",
        )
    return CheckResult(NAME, OK, f"{where}: {storage}, {runs} runs")


def postgres_addresses(document: dict) -> list[tuple[str, int]]:
    """(host, port) of every PostgreSQL storage in a dagster.yaml (``storage: postgres`` or the
    per-storage form), with ``{env: NAME}`` values resolved; URLs are parsed for theirs."""

    def value(raw: Any) -> Any:
        if isinstance(raw, dict) and "env" in raw:
            return os.environ.get(str(raw["env"]))
        return raw

    configs = []
    storage = document.get("storage")
    if isinstance(storage, dict) and isinstance(storage.get("postgres"), dict):
        configs.append(storage["postgres"])
    for key in ("run_storage", "event_log_storage", "schedule_storage"):
        section = document.get(key)
        if isinstance(section, dict) and "postgres" in str(section.get("module", "")):
            configs.append(section.get("config") or {})
    found: list[tuple[str, int]] = []
    for config in configs:
        url, db = value(config.get("postgres_url")), config.get("postgres_db")
        if isinstance(url, str) and url:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port or 5432
        elif isinstance(db, dict):
            host, port = value(db.get("hostname")), value(db.get("port")) or 5432
        else:
            continue
        if host and (str(host), int(port)) not in found and not str(host).startswith("/"):
            found.append((str(host), int(port)))
    return found
