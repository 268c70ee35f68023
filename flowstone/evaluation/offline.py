"""Evaluate suite files without Dagster: the code path behind ``flowstone eval``, for CI.

Why: a pull request should fail when a blocking check fails, and a CI job has neither a
Dagster instance nor a daemon. This runs the very steps the assets run (``pipeline.load_suite``,
``predict``, ``score``, ``report``) on suite files named on the command line, so a figure in CI
is the figure the UI would show for the same suite, system and settings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowstone.errors import ConfigError, SuiteError
from flowstone.evaluation import pipeline
from flowstone.evaluation.aggregate import MetricSummary
from flowstone.evaluation.catalog import Catalog
from flowstone.evaluation.check_names import threshold_check_name
from flowstone.evaluation.config import check_suite_labels, load_settings
from flowstone.evaluation.suites import load_suite
from flowstone.systems.base import SystemRegistry
from flowstone.systems.registry import default_systems

SUFFIX = ".jsonl"


class EvalInputError(ValueError):
    """Bad input to ``flowstone eval``: a file, setting or system name; exit code 2."""


@dataclass(frozen=True)
class CheckVerdict:
    name: str
    passed: bool
    blocking: bool
    reason: str | None = None  # why it failed with no figure to compare (failed, undefined)


@dataclass(frozen=True)
class SuiteOutcome:
    """One suite evaluated with one system: the figures a CI job decides on."""

    suite: str
    system: str
    cases: int
    metrics: dict[str, MetricSummary]
    suite_metrics: dict[str, float]
    checks: list[CheckVerdict]
    report_path: Path
    # judge metric -> agreement with the gold labels (Calibration.to_dict), labelled suites only
    calibration: dict[str, dict[str, Any]] = field(default_factory=dict)
    # with repeats: metric -> RepeatSummary.to_dict(), judge metric -> JudgeAgreement.to_dict()
    repeats: dict[str, dict[str, Any]] = field(default_factory=dict)
    judge_agreement: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def blocked(self) -> bool:
        return any(c.blocking and not c.passed for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        """The JSON shape the README documents for ``flowstone eval --json``."""
        return {
            "suite": self.suite,
            "system": self.system,
            "cases": self.cases,
            "metrics": {
                name: {
                    "mean": None if m.failed else m.mean,
                    "ci95" if math.isclose(m.ci_level, 0.95) else f"ci{round(m.ci_level * 100)}": (
                        [m.interval.low, m.interval.high] if m.interval else None
                    ),
                    "valid": m.cases,
                    "invalid": m.invalid,
                    **({"failure": m.failure} if m.failure else {}),
                }
                for name, m in self.metrics.items()
            },
            # JSON has no NaN: an undefined figure (a correlation over constant scores) is null
            "suite_metrics": {k: (v if v == v else None) for k, v in self.suite_metrics.items()},
            "checks": [
                {
                    "name": c.name,
                    "passed": c.passed,
                    "blocking": c.blocking,
                    **({"reason": c.reason} if c.reason else {}),
                }
                for c in self.checks
            ],
            # only on a labelled suite with a judge, so other suites' JSON stays as it was
            **({"calibration": self.calibration} if self.calibration else {}),
            # likewise only with repeats (a system's, a judge's)
            **({"repeats": self.repeats} if self.repeats else {}),
            **({"judge_agreement": self.judge_agreement} if self.judge_agreement else {}),
        }


def suite_name(path: Path) -> str:
    """A suite's name is its file name without ``.jsonl``, as for the suites folder."""
    if path.suffix != SUFFIX:
        raise EvalInputError(f"{path}: a suite file must end in {SUFFIX}")
    return path.stem


def build_catalog(
    files: Sequence[Path], config: Path, systems: SystemRegistry | None = None
) -> Catalog:
    """A catalog of exactly these suite files, validated the way the code location validates
    the suites folder (every line, every setting), before anything runs."""
    suites: dict[str, Path] = {}
    for path in files:
        name = suite_name(path)
        if name in suites:
            raise EvalInputError(f"{path} and {suites[name]} are both suite {name!r}")
        if not path.is_file():
            raise EvalInputError(f"{path}: no such suite file")
        suites[name] = path
    try:
        loaded = {name: load_suite(path, name) for name, path in suites.items()}
        settings = load_settings(config)  # the config may set suites not evaluated here
        check_suite_labels(settings, loaded)
    except (SuiteError, ConfigError) as exc:
        raise EvalInputError(str(exc)) from exc
    return Catalog(suites=suites, settings=settings, systems=systems or default_systems())


def require_system(catalog: Catalog, system: str) -> None:
    """A system of the registry, or an error naming those there are (and why a configured
    one is not runnable here, e.g. its API key is not set)."""
    if system in catalog.systems.names:
        return
    skipped = catalog.systems.skipped.get(system)
    if skipped:
        raise EvalInputError(f"system {system!r} is not available here: {skipped}")
    raise EvalInputError(f"no system {system!r}; systems: {', '.join(catalog.systems.names)}")


def require_online(catalog: Catalog, suite: str, system: str) -> None:
    """A system or judge in ``mode: batch`` waits for a provider's batch and the Dagster sensor
    that collects it; a CI run has neither, so it is refused before anything is submitted."""
    batched = []
    if getattr(catalog.systems.get(system), "mode", "online") == "batch":
        batched.append(f"system {system!r}")
    settings = catalog.settings.for_suite(suite)
    batched += [
        f"judge metric {name!r} of suite {suite!r}"
        for name, metric in settings.metrics.items()
        if metric.options.get("mode") == "batch"
    ]
    if batched:
        raise EvalInputError(
            f"{' and '.join(batched)} in mode: batch: flowstone eval runs online only (a batch "
            "needs the Dagster sensor that collects it); set mode: online in the config it "
            "reads, or materialize through Dagster"
        )


def evaluate(catalog: Catalog, suite: str, system: str, reports_dir: Path) -> SuiteOutcome:
    """Run one suite through the assets' steps in this process; no previous run is compared."""
    require_system(catalog, system)
    require_online(catalog, suite, system)
    frame = pipeline.load_suite(catalog, suite).value
    predictions = pipeline.predict(catalog, suite, system, frame).value
    scores = pipeline.score(catalog, suite, frame, predictions, system_name=system).value
    result = pipeline.report(catalog, suite, system, scores, {}, reports_dir)
    return outcome_of(result)


def outcome_of(result: pipeline.ReportResult) -> SuiteOutcome:
    report = result.report
    checks = [
        CheckVerdict(threshold_check_name(metric), v.passed, v.blocking, v.reason)
        for metric, v in report.thresholds.items()
    ]
    return SuiteOutcome(
        suite=report.suite,
        system=report.system,
        cases=report.cases,
        metrics=dict(report.metrics),
        suite_metrics=dict(report.suite_metrics),
        checks=checks,
        report_path=result.html_path,
        calibration={name: c.to_dict() for name, c in report.calibration.items()},
        repeats={name: r.to_dict() for name, r in report.repeats.items()},
        judge_agreement={name: a.to_dict() for name, a in report.judge_agreement.items()},
    )
