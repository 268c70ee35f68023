"""Evaluation settings: which metrics score which suite, per-case pass scores, thresholds.

The settings are read and validated when the code location loads, so an unknown metric or a
threshold outside its metric's scale stops `dagster definitions validate` with the offending key instead of
failing a run hours later.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from flowstone.errors import ConfigError
from flowstone.evaluation.metrics import METRICS, OptionError
from flowstone.evaluation.suite_metrics import SUITE_METRICS, SuiteMetricSetting

if TYPE_CHECKING:
    from flowstone.evaluation.suites import Suite

DEFAULT_REGRESSION_MARGIN = 0.05
DEFAULT_PASS_SCORE = 0.5
# Kept equal to flowstone.evaluation.statistics' defaults (tested): this module is read when
# the code location loads and must not import numpy and scipy, which that one does.
MIN_RESAMPLES = 100
INTERVAL_METHODS = ("percentile", "bca")


DEFAULT_MIN_AGREEMENT = 0.5


@dataclass(frozen=True)
class CalibrationSetting:
    """An LLM judge's ``calibration:`` block: the agreement with the gold labels (Spearman
    for numeric labels, Cohen's kappa for class labels, both in [-1, 1]) below which the judge
    is marked uncalibrated, and for class labels the class a passing judgement stands for.

    0.5 by default: a moderate agreement on either scale; below it a judge's mean is more
    its own taste than the labels'."""

    min_agreement: float = DEFAULT_MIN_AGREEMENT
    pass_label: str | None = None


@dataclass(frozen=True)
class MetricSetting:
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    pass_score: float = DEFAULT_PASS_SCORE
    # None: the defaults (judge metrics only; others have no agreement to measure)
    calibration: CalibrationSetting | None = None

    @property
    def calibration_setting(self) -> CalibrationSetting:
        return self.calibration or CalibrationSetting()


@dataclass(frozen=True)
class Threshold:
    """A floor on a metric's suite mean, or on a suite metric's value (on its own scale),
    checked by an asset check on the report."""

    metric: str
    min_mean: float
    blocking: bool = False


@dataclass(frozen=True)
class StatisticsSettings:
    """How the confidence interval of every mean is computed (the ``statistics:`` block).

    1,000 resamples is the default and what a report should use; fewer than 100 is refused.
    The seed makes an interval reproducible: unchanged scores give an unchanged report.
    """

    confidence_level: float = 0.95
    resamples: int = 1000
    seed: int = 0
    method: str = "percentile"


@dataclass(frozen=True)
class RegressionSettings:
    """The ``regression:`` block: a mean that fell by more than ``margin`` (relative, 0.05 =
    5%) since the partition's previous materialization regressed; with
    ``require_significance`` only when the paired test on the same cases gives p < ``alpha``."""

    margin: float = DEFAULT_REGRESSION_MARGIN
    require_significance: bool = False
    alpha: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin <= 1.0:
            raise ValueError(f"regression margin must be in [0, 1], got {self.margin}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"regression alpha must be in (0, 1), got {self.alpha}")


@dataclass(frozen=True)
class SuiteSettings:
    suite: str
    metrics: dict[str, MetricSetting]
    thresholds: dict[str, Threshold]
    regression: RegressionSettings = field(default_factory=RegressionSettings)
    statistics: StatisticsSettings = field(default_factory=StatisticsSettings)
    suite_metrics: dict[str, SuiteMetricSetting] = field(default_factory=dict)

    @property
    def regression_margin(self) -> float:
        return self.regression.margin

    def fingerprint(self) -> str:
        """A stable hash of everything that changes scores or checks for this suite."""
        payload = {
            "metrics": {n: [m.options, m.pass_score] for n, m in sorted(self.metrics.items())},
            "thresholds": {n: [t.min_mean, t.blocking] for n, t in sorted(self.thresholds.items())},
            "regression": [
                self.regression.margin,
                self.regression.require_significance,
                self.regression.alpha,
            ],
            "statistics": asdict(self.statistics),
        }
        calibrations = {
            n: asdict(m.calibration) for n, m in self.metrics.items() if m.calibration is not None
        }
        if calibrations:  # absent when unset, so older fingerprints stay as they were
            payload["calibration"] = calibrations
        if self.suite_metrics:  # absent when unused, so older fingerprints stay as they were
            payload["suite_metrics"] = {
                n: [m.options, m.metric] for n, m in sorted(self.suite_metrics.items())
            }
        models = self.model_versions()
        if models:  # absent when every metric uses the packaged default
            payload["models"] = models
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def model_versions(self) -> dict[str, str]:
        """metric -> what its model reference points to now (non-default references only):
        part of the fingerprint, so a new bake behind ``baked:NAME`` makes exactly the
        partitions whose metrics use it stale."""
        from flowstone.embedders import current

        return {name: current(ref).fingerprint for name, ref in sorted(self.model_refs().items())}

    def model_refs(self) -> dict[str, str]:
        """metric -> its non-default embedding model reference (judges' ``model`` option names
        an LLM, not a reference: only the metrics in ``MODEL_REF_METRICS`` take one)."""
        from flowstone.evaluation.metrics import MODEL_REF_METRICS

        return {
            name: setting.options["model"]
            for name, setting in self.metrics.items()
            if name in MODEL_REF_METRICS and setting.options.get("model", "default") != "default"
        }


@dataclass(frozen=True)
class EvaluationSettings:
    source: str
    default: SuiteSettings
    suites: dict[str, SuiteSettings]

    def for_suite(self, suite: str) -> SuiteSettings:
        return replace(self.suites.get(suite, self.default), suite=suite)

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
    calibration = None
    if "calibration" in raw:
        calibration = _parse_calibration(source, f"{key}.calibration", name, raw.pop("calibration"))
    try:
        METRICS[name].check_options(raw)
    except OptionError as exc:
        raise ConfigError(source, f"{key}.{exc.option}", exc.reason) from None
    return MetricSetting(name=name, options=raw, pass_score=pass_score, calibration=calibration)


def _parse_calibration(source: str, key: str, metric: str, raw: object) -> CalibrationSetting:
    """``calibration: {min_agreement, pass_label}`` of a judge metric."""
    if not METRICS[metric].judge:
        judges = ", ".join(sorted(n for n, m in METRICS.items() if m.judge))
        raise ConfigError(
            source,
            key,
            f"calibration measures an LLM judge against gold labels; {metric} is not a judge "
            f"(judges: {judges})",
        )
    raw = _mapping(source, key, raw)
    unknown = set(raw) - {"min_agreement", "pass_label"}
    if unknown:
        raise ConfigError(
            source, f"{key}.{sorted(unknown)[0]}", "unknown key; use min_agreement, pass_label"
        )
    bar = raw.get("min_agreement", DEFAULT_MIN_AGREEMENT)
    if isinstance(bar, bool) or not isinstance(bar, int | float) or not -1.0 <= bar <= 1.0:
        raise ConfigError(
            source,
            f"{key}.min_agreement",
            f"must be a number in [-1, 1], the scale of Spearman's rho and Cohen's kappa, "
            f"got {bar!r}",
        )
    pass_label = raw.get("pass_label")
    if pass_label is not None and (not isinstance(pass_label, str) or not pass_label.strip()):
        raise ConfigError(
            source, f"{key}.pass_label", f"must be a class label (a string), got {pass_label!r}"
        )
    return CalibrationSetting(float(bar), pass_label.strip() if pass_label else None)


def _parse_suite_metric(
    source: str, key: str, name: str, raw: object, metrics: dict
) -> SuiteMetricSetting:
    """One entry of ``suite_metrics``; a correlation names the per-case metric it reads."""
    if name not in SUITE_METRICS:
        known = ", ".join(sorted(SUITE_METRICS))
        raise ConfigError(source, key, f"unknown suite metric; known suite metrics: {known}")
    spec = SUITE_METRICS[name]
    options = dict(_mapping(source, key, raw))
    metric = options.pop("metric", None)
    if spec.needs == "number":
        if metric is None:
            raise ConfigError(
                source, f"{key}.metric", "missing: name the per-case metric to correlate"
            )
        if not isinstance(metric, str) or metric not in metrics:
            raise ConfigError(
                source,
                f"{key}.metric",
                f"{metric!r} is not a metric this suite computes; its metrics: "
                f"{', '.join(metrics)}",
            )
    elif metric is not None:
        raise ConfigError(source, f"{key}.metric", f"{name} takes no per-case metric")
    try:
        spec.check_options(options)
    except OptionError as exc:
        raise ConfigError(source, f"{key}.{exc.option}", exc.reason) from None
    return SuiteMetricSetting(name=name, options=options, metric=metric, key=key)


def _floor(source: str, key: str, value: object, scale: tuple[float, float]) -> float:
    low, high = scale
    if (low, high) == (0.0, 1.0):
        return _unit_interval(source, key, value)
    wanted = f"a number in [{low:g}, {high:g}], the metric's scale"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(source, key, f"must be {wanted}, got {value!r}")
    if not low <= float(value) <= high:
        raise ConfigError(source, key, f"must be {wanted}, got {value}")
    return float(value)


def _parse_threshold(
    source: str,
    key: str,
    name: str,
    raw: object,
    metrics: Mapping[str, MetricSetting],
    suite_metrics: Mapping[str, SuiteMetricSetting],
) -> Threshold:
    """A floor on a per-case metric's mean (in [0, 1]) or on a suite metric's value, on that
    metric's own scale (a correlation in [-1, 1], chrF 0-100)."""
    if name in metrics:
        scale = (0.0, 1.0)
    elif name in suite_metrics:
        scale = SUITE_METRICS[suite_metrics[name].name].scale
    else:
        computed = ", ".join([*metrics, *suite_metrics])
        raise ConfigError(
            source,
            key,
            f"threshold on '{name}', which this suite does not compute (under metrics or "
            f"suite_metrics); it computes: {computed}",
        )
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
    return Threshold(name, _floor(source, f"{key}.min_mean", raw["min_mean"], scale), blocking)


def _parse_statistics(
    source: str, key: str, raw: object, base: StatisticsSettings
) -> StatisticsSettings:
    """The ``statistics:`` block; a suite's block overrides only the keys it names."""
    raw = _mapping(source, key, raw)
    known = {f.name for f in fields(StatisticsSettings)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(
            source, f"{key}.{sorted(unknown)[0]}", f"unknown key; use {', '.join(sorted(known))}"
        )
    level = raw.get("confidence_level", base.confidence_level)
    if isinstance(level, bool) or not isinstance(level, int | float) or not 0 < level < 1:
        raise ConfigError(
            source,
            f"{key}.confidence_level",
            f"must be a number strictly between 0 and 1 (0.95 for a 95% interval), got {level!r}",
        )
    resamples = raw.get("resamples", base.resamples)
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < MIN_RESAMPLES:
        raise ConfigError(
            source,
            f"{key}.resamples",
            f"must be an integer of at least {MIN_RESAMPLES} (1000 or more is the default and "
            f"recommended), got {resamples!r}",
        )
    seed = raw.get("seed", base.seed)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(source, f"{key}.seed", f"must be a non-negative integer, got {seed!r}")
    method = raw.get("method", base.method)
    if method not in INTERVAL_METHODS:
        raise ConfigError(
            source, f"{key}.method", f"must be one of {', '.join(INTERVAL_METHODS)}, got {method!r}"
        )
    return StatisticsSettings(float(level), resamples, seed, method)


def _parse_regression(
    source: str, key: str, raw: dict, base: RegressionSettings | None
) -> RegressionSettings:
    """``regression: {margin, require_significance, alpha}``; the older ``regression_margin:
    0.05`` still sets the margin alone. A suite's block overrides only the keys it names."""
    base = base or RegressionSettings()
    if "regression_margin" in raw and "regression" in raw:
        raise ConfigError(
            source, f"{key}.regression_margin", "set the margin in regression.margin only"
        )
    if "regression_margin" in raw:
        margin = _unit_interval(source, f"{key}.regression_margin", raw["regression_margin"])
        return replace(base, margin=margin)
    if "regression" not in raw:
        return base
    block = _mapping(source, f"{key}.regression", raw["regression"])
    unknown = set(block) - {"margin", "require_significance", "alpha"}
    if unknown:
        raise ConfigError(
            source,
            f"{key}.regression.{sorted(unknown)[0]}",
            "unknown key; use margin, require_significance, alpha",
        )
    margin = _unit_interval(source, f"{key}.regression.margin", block.get("margin", base.margin))
    significance = block.get("require_significance", base.require_significance)
    if not isinstance(significance, bool):
        raise ConfigError(
            source,
            f"{key}.regression.require_significance",
            f"must be true or false, got {significance!r}",
        )
    alpha = block.get("alpha", base.alpha)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
        raise ConfigError(source, f"{key}.regression.alpha", f"must be in (0, 1), got {alpha!r}")
    return RegressionSettings(margin, significance, float(alpha))


def _parse_suite(source: str, key: str, raw: dict, base: SuiteSettings | None) -> SuiteSettings:
    raw = _mapping(source, key, raw)
    unknown = set(raw) - {
        "metrics", "thresholds", "pass_score", "regression", "regression_margin", "statistics",
        "suite_metrics",
    }  # fmt: skip
    if unknown:
        raise ConfigError(source, f"{key}.{sorted(unknown)[0]}", "unknown key")
    regression = _parse_regression(source, key, raw, base.regression if base else None)
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
    statistics = _parse_statistics(
        source,
        f"{key}.statistics",
        raw.get("statistics"),
        base.statistics if base else StatisticsSettings(),
    )
    if "suite_metrics" in raw:
        suite_raw = _mapping(source, f"{key}.suite_metrics", raw["suite_metrics"])
        suite_metrics = {
            name: _parse_suite_metric(source, f"{key}.suite_metrics.{name}", name, value, metrics)
            for name, value in suite_raw.items()
        }
    else:  # inherited, like thresholds: those whose per-case metric this suite computes
        suite_metrics = {
            n: m
            for n, m in (base.suite_metrics if base else {}).items()
            if m.metric is None or m.metric in metrics
        }
    if "thresholds" in raw:  # after suite_metrics: a threshold may be on one of them
        thresholds_raw = _mapping(source, f"{key}.thresholds", raw["thresholds"])
        thresholds = {
            name: _parse_threshold(
                source, f"{key}.thresholds.{name}", name, value, metrics, suite_metrics
            )
            for name, value in thresholds_raw.items()
        }
    else:
        thresholds = {
            n: t
            for n, t in (base.thresholds if base else {}).items()
            if n in metrics or n in suite_metrics
        }
    return SuiteSettings(
        key.rsplit(".", 1)[-1], metrics, thresholds, regression, statistics, suite_metrics
    )


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


_LABEL_WORDS = {"number": "numeric labels (gold scores)", "class": "string labels (classes)"}


def check_suite_labels(settings: EvaluationSettings, suites: Mapping[str, Suite]) -> None:
    """Suite metrics that read gold labels need them, of their kind, on every case of each
    suite they run on. Checked when the code location loads (the settings alone cannot know
    the suite files); the error names the config key and the suite file."""
    for name, suite in suites.items():
        for metric in settings.for_suite(name).suite_metrics.values():
            needs = SUITE_METRICS[metric.name].needs
            if needs == "references":
                continue
            wanted = _LABEL_WORDS[needs]
            kind = suite.label_kind
            if kind is None:
                problem = "no case has a label"
            elif kind != needs:
                problem = f"its cases carry {_LABEL_WORDS[kind]}"
            elif suite.unlabelled:
                missing = suite.unlabelled
                problem = f"{len(missing)} case(s) have no label, the first '{missing[0]}'"
            else:
                continue
            raise ConfigError(
                settings.source,
                metric.key,
                f"{metric.name} on suite '{name}' needs {wanted} on every case, and in suite "
                f"file {suite.path} {problem}",
            )
