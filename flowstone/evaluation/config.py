"""Evaluation settings: which metrics score which suite, per-case pass scores, thresholds.

The settings are read and validated when the code location loads, so an unknown metric or a
threshold outside [0, 1] stops `dagster definitions validate` with the offending key instead of
failing a run hours later.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flowstone.errors import ConfigError
from flowstone.evaluation.metrics import METRICS

DEFAULT_REGRESSION_MARGIN = 0.05
DEFAULT_PASS_SCORE = 0.5


@dataclass(frozen=True)
class MetricSetting:
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    pass_score: float = DEFAULT_PASS_SCORE


@dataclass(frozen=True)
class Threshold:
    """A floor on a metric's suite mean, checked by an asset check on the report."""

    metric: str
    min_mean: float
    blocking: bool = False


@dataclass(frozen=True)
class SuiteSettings:
    suite: str
    metrics: dict[str, MetricSetting]
    thresholds: dict[str, Threshold]
    regression_margin: float

    def fingerprint(self) -> str:
        """A stable hash of everything that changes scores or checks for this suite."""
        payload = {
            "metrics": {n: [m.options, m.pass_score] for n, m in sorted(self.metrics.items())},
            "thresholds": {n: [t.min_mean, t.blocking] for n, t in sorted(self.thresholds.items())},
            "regression_margin": self.regression_margin,
        }
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class EvaluationSettings:
    source: str
    default: SuiteSettings
    suites: dict[str, SuiteSettings]

    def for_suite(self, suite: str) -> SuiteSettings:
        settings = self.suites.get(suite, self.default)
        return SuiteSettings(
            suite, settings.metrics, settings.thresholds, settings.regression_margin
        )

    @property
    def thresholded_metrics(self) -> list[str]:
        """Every metric that has a threshold in some suite: each becomes one asset check."""
        names = set(self.default.thresholds)
        for settings in self.suites.values():
            names |= set(settings.thresholds)
        return sorted(names)


def _unit_interval(source: str, key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(source, key, f"must be a number in [0, 1], got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ConfigError(source, key, f"must be in [0, 1], got {value}")
    return float(value)


def _mapping(source: str, key: str, value: object) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(source, key, f"must be a mapping, got {type(value).__name__}")
    return value


def _parse_metric(
    source: str, key: str, name: str, raw: object, default_pass: float
) -> MetricSetting:
    if name not in METRICS:
        raise ConfigError(
            source, key, f"unknown metric; known metrics: {', '.join(sorted(METRICS))}"
        )
    raw = dict(_mapping(source, key, raw))
    pass_score = _unit_interval(source, f"{key}.pass_score", raw.pop("pass_score", default_pass))
    allowed = METRICS[name].options
    for option in raw:
        if option not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise ConfigError(
                source, f"{key}.{option}", f"unknown option for {name}; known: {known}"
            )
    return MetricSetting(name=name, options=raw, pass_score=pass_score)


def _parse_threshold(source: str, key: str, name: str, raw: object, metrics: dict) -> Threshold:
    if name not in metrics:
        raise ConfigError(source, key, f"threshold on '{name}', which this suite does not compute")
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        raw = {"min_mean": raw}
    raw = _mapping(source, key, raw)
    unknown = set(raw) - {"min_mean", "blocking"}
    if unknown:
        raise ConfigError(
            source, f"{key}.{sorted(unknown)[0]}", "unknown key; use min_mean, blocking"
        )
    if "min_mean" not in raw:
        raise ConfigError(source, f"{key}.min_mean", "missing")
    blocking = raw.get("blocking", False)
    if not isinstance(blocking, bool):
        raise ConfigError(source, f"{key}.blocking", f"must be true or false, got {blocking!r}")
    return Threshold(name, _unit_interval(source, f"{key}.min_mean", raw["min_mean"]), blocking)


def _parse_suite(source: str, key: str, raw: dict, base: SuiteSettings | None) -> SuiteSettings:
    raw = _mapping(source, key, raw)
    unknown = set(raw) - {"metrics", "thresholds", "pass_score", "regression_margin"}
    if unknown:
        raise ConfigError(source, f"{key}.{sorted(unknown)[0]}", "unknown key")
    margin = raw.get(
        "regression_margin", base.regression_margin if base else DEFAULT_REGRESSION_MARGIN
    )
    margin = _unit_interval(source, f"{key}.regression_margin", margin)
    default_pass = _unit_interval(
        source, f"{key}.pass_score", raw.get("pass_score", DEFAULT_PASS_SCORE)
    )
    if "metrics" in raw:
        metrics_raw = _mapping(source, f"{key}.metrics", raw["metrics"])
        if not metrics_raw:
            raise ConfigError(source, f"{key}.metrics", "name at least one metric")
        metrics = {
            name: _parse_metric(source, f"{key}.metrics.{name}", name, value, default_pass)
            for name, value in metrics_raw.items()
        }
    elif base is not None:
        metrics = base.metrics
    else:
        raise ConfigError(source, f"{key}.metrics", "missing: name at least one metric")
    if "thresholds" in raw:
        thresholds_raw = _mapping(source, f"{key}.thresholds", raw["thresholds"])
        thresholds = {
            name: _parse_threshold(source, f"{key}.thresholds.{name}", name, value, metrics)
            for name, value in thresholds_raw.items()
        }
    else:
        thresholds = {n: t for n, t in (base.thresholds if base else {}).items() if n in metrics}
    return SuiteSettings(key.rsplit(".", 1)[-1], metrics, thresholds, margin)


def parse_settings(
    raw: object, source: str, known_suites: list[str] | None = None
) -> EvaluationSettings:
    """Validate a settings mapping; ``source`` names the file in every error."""
    raw = _mapping(source, "<root>", raw)
    unknown = set(raw) - {"defaults", "suites"}
    if unknown:
        raise ConfigError(source, sorted(unknown)[0], "unknown top-level key; use defaults, suites")
    default = _parse_suite(
        source, "defaults", _mapping(source, "defaults", raw.get("defaults")), None
    )
    suites: dict[str, SuiteSettings] = {}
    for name, suite_raw in _mapping(source, "suites", raw.get("suites")).items():
        if known_suites is not None and name not in known_suites:
            raise ConfigError(
                source,
                f"suites.{name}",
                f"no suite file {name}.jsonl; known suites: {', '.join(known_suites)}",
            )
        suites[name] = _parse_suite(source, f"suites.{name}", suite_raw, default)
    return EvaluationSettings(source=source, default=default, suites=suites)


def load_settings(path: Path, known_suites: list[str] | None = None) -> EvaluationSettings:
    """Read and validate the evaluation YAML file."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, "<file>", "the evaluation settings file does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, "<file>", f"not valid YAML: {exc}") from None
    return parse_settings(raw, str(path), known_suites)
