"""Per-model bake settings: a ``bake.yaml`` beside the model, or defaults by model kind.

Why a file beside the model: whoever drops a model knows its task, its quality bar and its
validation data; the baking line should not need a code change to take a new model.
Every key is checked when the file is read, and an error names the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flowstone.baking.passes import PASSES
from flowstone.errors import ConfigError

TASKS = ("embedding", "classifier")
QUALITY_METRICS = {
    "embedding": ("spearman_rho", "cosine_mean", "cosine_min", "spearman_gold_drop"),
    "classifier": ("accuracy_retention", "max_abs_logit_diff"),
}
#: Quality metrics where a lower value is better (a difference or a drop); higher for the rest.
LOWER_IS_BETTER = frozenset({"max_abs_logit_diff", "spearman_gold_drop"})
#: How an embedding model's passes are chosen when the config lists none: ``auto`` searches the
#: candidate recipes on this host (``flowstone.baking.recipe_search``), ``recommended`` takes
#: the shipped recipe (``flowstone.baking.onnx.recipe``) as is.
RECIPES = ("auto", "recommended")
DEFAULT_MAX_SIZE_MB = 2048.0

# Defaults that hold the targets on the demo models; bench/README.md has the curve.
DEFAULT_PASSES: dict[str, list[dict[str, Any]]] = {
    "classifier": [{"name": "quantize_dynamic"}, {"name": "torchscript"}],
}
RECIPE_STEPS = {"export": "onnx_export", "optimize": "onnx_optimize", "quantize": "onnx_quantize"}


def default_passes(task: str) -> list[dict[str, Any]]:
    """Embedding models default to the recipe bench/bench_baking_minilm.py settled on (one
    source of truth, in flowstone.baking.onnx.recipe); classifiers to torch int8 + TorchScript."""
    if task != "embedding":
        return DEFAULT_PASSES[task]
    from flowstone.baking.onnx.recipe import recommended_recipe

    return [
        {"name": RECIPE_STEPS[step["step"]], **step["options"]}
        for step in recommended_recipe()["steps"]
    ]


DEFAULT_QUALITY = {
    "embedding": {"metric": "spearman_rho", "threshold": 0.99},
    "classifier": {"metric": "accuracy_retention", "threshold": 0.99},
}


@dataclass(frozen=True)
class PassSpec:
    """One optimisation pass and its options, in the order they run."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}


@dataclass(frozen=True)
class TaskGate:
    """Non-inferiority on task suites: the baked model's per-case score on each suite may fall
    below the original's by at most ``margin`` (mean of paired differences), at ``confidence``
    (the lower bound of the one-sided interval must stay above ``-margin``)."""

    suites: tuple[str, ...] = ()
    metric: str = "embedding_similarity"
    margin: float = 0.005
    confidence: float = 0.95

    def as_dict(self) -> dict[str, Any]:
        return {"suites": list(self.suites), "metric": self.metric, "margin": self.margin,
                "confidence": self.confidence}  # fmt: skip


@dataclass(frozen=True)
class SpeedGate:
    """The profile's rounds and the speed floor. Original and baked run interleaved, a fresh
    process each, round after round, until the confidence interval of the throughput ratio is
    within ``rel_ci`` of the ratio or ``max_rounds`` is reached (then the profile is "noisy").
    A bake fails when the interval's upper bound is below ``floor``."""

    floor: float = 1.0
    rel_ci: float = 0.10
    min_rounds: int = 3
    max_rounds: int = 10
    confidence: float = 0.95

    def as_dict(self) -> dict[str, Any]:
        return {"floor": self.floor, "rel_ci": self.rel_ci, "min_rounds": self.min_rounds,
                "max_rounds": self.max_rounds, "confidence": self.confidence}  # fmt: skip


DEFAULT_SEARCH_BUDGET_S = 150.0


@dataclass(frozen=True)
class BakeConfig:
    """What to do with one model; see ``docs`` in the README for the file format."""

    task: str
    passes: tuple[PassSpec, ...]
    quality_metric: str
    quality_threshold: float
    validation: str | None = None
    architecture: str | None = None
    architecture_kwargs: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None
    batch_sizes: tuple[int, ...] = (1, 32)
    max_size_mb: float = DEFAULT_MAX_SIZE_MB
    memory_estimate_mb: float | None = None
    threads: int | None = None
    source: str = "defaults"
    recipe: str | None = None  # RECIPES for embedding models without explicit passes
    search_budget_s: float = DEFAULT_SEARCH_BUDGET_S
    task_gate: TaskGate = field(default_factory=TaskGate)
    speed: SpeedGate = field(default_factory=SpeedGate)
    # A classifier over text: its class names, index by index, and the embedding model (a
    # reference) whose vectors of the text are its input. Both set, a bake of it can be an
    # evaluation system for a classification suite (``classifiers:`` in systems.yaml).
    labels: tuple[str, ...] = ()
    text_features: str | None = None

    @property
    def lower_is_better(self) -> bool:
        return self.quality_metric in LOWER_IS_BETTER

    def as_dict(self) -> dict[str, Any]:
        """The settings in bake.yaml's own shape: ``parse_config`` reads them back unchanged."""
        gate = self.task_gate
        quality: dict[str, Any] = {
            "metric": self.quality_metric,
            "threshold": self.quality_threshold,
        }
        if gate.suites:
            quality["task_suites"] = list(gate.suites)
            quality["non_inferiority"] = {"metric": gate.metric, "margin": gate.margin,
                                          "confidence": gate.confidence}  # fmt: skip
        chosen: dict[str, Any] = (
            {"recipe": self.recipe}
            if self.recipe
            else {"passes": [p.as_dict() for p in self.passes]}
        )
        return {
            "task": self.task,
            **chosen,
            "quality": quality,
            "validation": self.validation,
            "architecture": self.architecture,
            "architecture_kwargs": self.architecture_kwargs,
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "batch_sizes": list(self.batch_sizes),
            "max_size_mb": self.max_size_mb,
            "memory_estimate_mb": self.memory_estimate_mb,
            "threads": self.threads,
            "source": self.source,
            "search_budget_s": self.search_budget_s,
            "speed": self.speed.as_dict(),
            **({"labels": list(self.labels)} if self.labels else {}),
            **({"text_features": self.text_features} if self.text_features else {}),
        }


def config_path_for(model_path: Path) -> Path:
    """``folder/bake.yaml`` for a folder model, ``name.bake.yaml`` beside a file model."""
    if model_path.is_dir():
        return model_path / "bake.yaml"
    return model_path.with_name(f"{model_path.name.split('.')[0]}.bake.yaml")


def _positive_ints(source: str, key: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(
            source, key, f"must be a non-empty list of positive integers, got {value!r}"
        )
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ConfigError(source, key, f"must hold positive integers only, got {value!r}")
    return tuple(value)


def _passes(source: str, value: Any) -> tuple[PassSpec, ...]:
    if not isinstance(value, list):
        raise ConfigError(source, "passes", "must be a list of pass names or {name: ..., options}")
    specs = []
    for index, item in enumerate(value):
        key = f"passes[{index}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or "name" not in item:
            raise ConfigError(
                source, key, f"must be a pass name or a mapping with 'name', got {item!r}"
            )
        options = {k: v for k, v in item.items() if k != "name"}
        if item["name"] not in PASSES:  # the registry in passes.py: a new pass goes there only
            raise ConfigError(
                source, f"{key}.name", f"unknown pass {item['name']!r}; known: {', '.join(PASSES)}"
            )
        specs.append(PassSpec(item["name"], options))
    return tuple(specs)


def _number(source: str, key: str, value: Any, *, low: float, high: float | None = None,
            low_open: bool = False, integer: bool = False) -> Any:  # fmt: skip
    """A number within [low, high] (``low_open``: above low), else a ConfigError naming the key."""
    kinds = int if integer else int | float
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ConfigError(source, key, f"must be {'an integer' if integer else 'a number'}, "
                          f"got {value!r}")  # fmt: skip
    if (value <= low if low_open else value < low) or (high is not None and value > high):
        bound = f"above {low}" if low_open else f"at least {low}"
        upper = f" and at most {high}" if high is not None else ""
        raise ConfigError(source, key, f"must be {bound}{upper}, got {value!r}")
    return value


def known_suites() -> dict[str, Path]:
    """The evaluation suites a task gate can name: ``suites/*.jsonl`` (FLOWSTONE_SUITES_DIR)."""
    from flowstone.paths import suites_dir

    return {p.stem: p for p in sorted(suites_dir().glob("*.jsonl"))}


def _task_gate(source: str, task: str, quality: dict[str, Any]) -> TaskGate:
    suites = quality.get("task_suites", [])
    if isinstance(suites, str):
        suites = [suites]
    if not isinstance(suites, list) or not all(isinstance(s, str) for s in suites):
        raise ConfigError(source, "quality.task_suites", f"must be a list of suite names, got "
                          f"{suites!r}")  # fmt: skip
    if suites and task != "embedding":
        raise ConfigError(source, "quality.task_suites", "task suites gate embedding models; "
                          "a classifier is gated on its labelled validation data")  # fmt: skip
    available = known_suites() if suites else {}
    for index, name in enumerate(suites):
        if name not in available:
            raise ConfigError(
                source, f"quality.task_suites[{index}]",
                f"no suite {name!r}; suites: {', '.join(available) or 'none'}",
            )  # fmt: skip
    raw = quality.get("non_inferiority") or {}
    if not isinstance(raw, dict):
        raise ConfigError(source, "quality.non_inferiority", "must be a mapping")
    unknown = sorted(set(raw) - {"metric", "margin", "confidence"})
    if unknown:
        raise ConfigError(source, f"quality.non_inferiority.{unknown[0]}",
                          "unknown key; known keys: confidence, margin, metric")  # fmt: skip
    defaults = TaskGate()
    metric = raw.get("metric", defaults.metric)
    if metric != "embedding_similarity":
        raise ConfigError(source, "quality.non_inferiority.metric", "only embedding_similarity "
                          f"(the metric an embedding model drives) is supported, got {metric!r}")  # fmt: skip
    key = "quality.non_inferiority"
    return TaskGate(
        suites=tuple(suites),
        metric=metric,
        margin=float(_number(source, f"{key}.margin", raw.get("margin", defaults.margin),
                             low=0.0, high=1.0)),
        confidence=float(_number(source, f"{key}.confidence",
                                 raw.get("confidence", defaults.confidence), low=0.5, high=0.999)),
    )  # fmt: skip


def _speed(source: str, raw: Any) -> SpeedGate:
    if raw is None:
        return SpeedGate()
    if not isinstance(raw, dict):
        raise ConfigError(source, "speed", "must be a mapping (floor, rel_ci, min_rounds, "
                          "max_rounds, confidence)")  # fmt: skip
    known = {"floor", "rel_ci", "min_rounds", "max_rounds", "confidence"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(source, f"speed.{unknown[0]}", f"unknown key; known keys: "
                          f"{', '.join(sorted(known))}")  # fmt: skip
    d = SpeedGate()
    min_rounds = _number(source, "speed.min_rounds", raw.get("min_rounds", d.min_rounds),
                         low=2, integer=True)  # fmt: skip
    max_rounds = _number(source, "speed.max_rounds", raw.get("max_rounds", d.max_rounds),
                         low=min_rounds, integer=True)  # fmt: skip
    return SpeedGate(
        floor=float(_number(source, "speed.floor", raw.get("floor", d.floor), low=0.0)),
        rel_ci=float(_number(source, "speed.rel_ci", raw.get("rel_ci", d.rel_ci), low=0.0,
                             high=1.0, low_open=True)),
        min_rounds=min_rounds,
        max_rounds=max_rounds,
        confidence=float(_number(source, "speed.confidence", raw.get("confidence", d.confidence),
                                 low=0.5, high=0.999)),
    )  # fmt: skip


def _text_classifier(source: str, task: str, raw: dict[str, Any]) -> dict[str, Any]:
    """``labels`` and ``text_features`` of a classifier over text, checked."""
    if "labels" not in raw and "text_features" not in raw:
        return {}
    if task != "classifier":
        key = "labels" if "labels" in raw else "text_features"
        raise ConfigError(source, key, "only a classifier has class labels and text features")
    labels = raw.get("labels")
    if (
        not isinstance(labels, list)
        or not labels
        or not all(isinstance(x, str) and x.strip() for x in labels)
    ):
        raise ConfigError(source, "labels", f"must be a list of class names, got {labels!r}")
    if len(set(labels)) != len(labels):
        raise ConfigError(source, "labels", "names a class twice")
    features = raw.get("text_features")
    if features is None:
        raise ConfigError(source, "text_features", "a classifier with labels needs the "
                          "embedding model of its input: default, baked:NAME or deployed:NAME")  # fmt: skip
    from flowstone.baking.refs import ModelRefError, parse_ref

    try:
        parse_ref(features)
    except ModelRefError as exc:
        raise ConfigError(source, "text_features", str(exc)) from None
    return {"labels": tuple(labels), "text_features": features}


def parse_config(raw: dict[str, Any] | None, *, task: str, source: str = "defaults") -> BakeConfig:
    """Validate ``raw`` (a parsed bake.yaml) over the defaults for ``task``."""
    raw = dict(raw or {})
    known = {
        "task", "passes", "quality", "validation", "architecture", "architecture_kwargs",
        "input_shape", "batch_sizes", "max_size_mb", "memory_estimate_mb", "threads",
        "recipe", "search_budget_s", "speed", "labels", "text_features",
    }  # fmt: skip
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            source, unknown[0], f"unknown key; known keys: {', '.join(sorted(known))}"
        )
    task = raw.get("task", task)
    if task not in TASKS:
        raise ConfigError(source, "task", f"must be one of {', '.join(TASKS)}, got {task!r}")
    passes = (
        _passes(source, raw["passes"]) if "passes" in raw else _passes(source, default_passes(task))
    )
    recipe = raw.get("recipe")
    if recipe is not None and recipe not in RECIPES:
        raise ConfigError(source, "recipe", f"must be one of {', '.join(RECIPES)}, got {recipe!r}")
    if recipe is not None and (task != "embedding" or "passes" in raw):
        raise ConfigError(source, "recipe", "a recipe chooses an embedding model's passes; "
                          "drop it, or drop 'passes'")  # fmt: skip
    if task == "embedding" and "passes" not in raw:
        recipe = recipe or "auto"
    budget = _number(source, "search_budget_s", raw.get("search_budget_s",
                     DEFAULT_SEARCH_BUDGET_S), low=0.0, low_open=True)  # fmt: skip
    raw_quality = raw.get("quality") or {}
    if not isinstance(raw_quality, dict):
        raise ConfigError(source, "quality", "must be a mapping (metric, threshold, task_suites, "
                          "non_inferiority)")  # fmt: skip
    unknown_quality = sorted(set(raw_quality) - {"metric", "threshold", "task_suites",
                                                 "non_inferiority"})  # fmt: skip
    if unknown_quality:
        raise ConfigError(source, f"quality.{unknown_quality[0]}", "unknown key; known keys: "
                          "metric, non_inferiority, task_suites, threshold")  # fmt: skip
    quality = {**DEFAULT_QUALITY[task], **raw_quality}
    if quality["metric"] not in QUALITY_METRICS[task]:
        raise ConfigError(
            source,
            "quality.metric",
            f"{quality['metric']!r} does not apply to a {task}; use one of "
            f"{', '.join(QUALITY_METRICS[task])}",
        )
    threshold = quality.get("threshold")
    if not isinstance(threshold, int | float) or isinstance(threshold, bool):
        raise ConfigError(source, "quality.threshold", f"must be a number, got {threshold!r}")
    input_shape = raw.get("input_shape")
    if input_shape is not None:
        input_shape = _positive_ints(source, "input_shape", input_shape)
    max_size = raw.get("max_size_mb", DEFAULT_MAX_SIZE_MB)
    if not isinstance(max_size, int | float) or max_size <= 0:
        raise ConfigError(source, "max_size_mb", f"must be a positive number, got {max_size!r}")
    kwargs = raw.get("architecture_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ConfigError(source, "architecture_kwargs", "must be a mapping")
    return BakeConfig(
        task=task,
        passes=passes,
        quality_metric=quality["metric"],
        quality_threshold=float(threshold),
        validation=raw.get("validation"),
        architecture=raw.get("architecture"),
        architecture_kwargs=kwargs,
        input_shape=input_shape,
        batch_sizes=_positive_ints(source, "batch_sizes", raw["batch_sizes"])
        if "batch_sizes" in raw
        else (1, 32),
        max_size_mb=float(max_size),
        memory_estimate_mb=raw.get("memory_estimate_mb"),
        threads=raw.get("threads"),
        source=source,
        recipe=recipe,
        search_budget_s=float(budget),
        task_gate=_task_gate(source, task, quality),
        speed=_speed(source, raw.get("speed")),
        **_text_classifier(source, task, raw),
    )


def load_config(model_path: Path, *, task: str) -> BakeConfig:
    """The bake settings for the model at ``model_path`` (defaults when no file is there)."""
    path = config_path_for(model_path)
    if not path.exists():
        return parse_config(None, task=task)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}", "<yaml>", f"not valid YAML: {exc}") from exc
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(path, "<root>", "must be a mapping of settings")
    return parse_config(raw, task=task, source=str(path))
