"""What the evaluation pipeline is built from: the suites on disk, the evaluation settings and
the registered systems. Read once when the code location loads, so that bad input stops
`dagster definitions validate` with the file and line instead of failing a run later."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from flowstone import paths
from flowstone.cases import Label
from flowstone.evaluation.config import EvaluationSettings, check_suite_labels, load_settings
from flowstone.evaluation.suites import discover_suites, load_suite
from flowstone.systems.base import SystemRegistry
from flowstone.systems.registry import default_systems


@dataclass(frozen=True)
class Catalog:
    suites: dict[str, Path]
    settings: EvaluationSettings
    systems: SystemRegistry
    labels: dict[str, tuple[Label | None, ...]] = field(default_factory=dict)  # per suite

    @property
    def suite_names(self) -> list[str]:
        return list(self.suites)

    def not_applicable(self) -> dict[tuple[str, str], str]:
        """(suite, system) -> why that partition's answers would mean nothing (a classifier
        system on a suite without its class labels). The partition still exists, as every
        suite x system does; a run of it fails with this reason."""
        return {
            (suite, system.name): reason
            for suite, labels in self.labels.items()
            for system in self.systems
            if (reason := system.not_applicable(suite, labels))
        }

    def applicable_keys(self) -> list[str]:
        """The suite|system partition keys worth running, in suite then system order."""
        skip = self.not_applicable()
        return [
            f"{suite}|{system}"
            for suite in sorted(self.suite_names)
            for system in sorted(self.systems.names)
            if (suite, system) not in skip
        ]


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
    labels = {name: tuple(case.label for case in suite.cases) for name, suite in loaded.items()}
    return Catalog(suites=suites, settings=settings, systems=systems or default_systems(),
                   labels=labels)  # fmt: skip
