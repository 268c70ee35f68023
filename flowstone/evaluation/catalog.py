"""What the evaluation pipeline is built from: the suites on disk, the evaluation settings and
the registered systems. Read once when the code location loads, so that bad input stops
`dagster definitions validate` with the file and line instead of failing a run later."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flowstone import paths
from flowstone.evaluation.config import EvaluationSettings, check_suite_labels, load_settings
from flowstone.evaluation.suites import discover_suites, load_suite
from flowstone.systems.base import SystemRegistry
from flowstone.systems.registry import default_systems


@dataclass(frozen=True)
class Catalog:
    suites: dict[str, Path]
    settings: EvaluationSettings
    systems: SystemRegistry

    @property
    def suite_names(self) -> list[str]:
        return list(self.suites)


def load_catalog(
    suites_dir: Path | None = None,
    settings_path: Path | None = None,
    systems: SystemRegistry | None = None,
) -> Catalog:
    suites = discover_suites(suites_dir or paths.suites_dir())
    # validates every line; raises SuiteError with file and line
    loaded = {name: load_suite(path, name) for name, path in suites.items()}
    settings = load_settings(settings_path or paths.evaluation_config_path(), list(suites))
    check_suite_labels(settings, loaded)  # a label metric on a suite without those labels
    return Catalog(suites=suites, settings=settings, systems=systems or default_systems())
