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
    "embedding": ("spearman_rho", "cosine_mean", "cosine_min"),
    "classifier": ("accuracy_retention", "max_abs_logit_diff"),
}
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

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "passes": [p.as_dict() for p in self.passes],
            "quality": {"metric": self.quality_metric, "threshold": self.quality_threshold},
            "validation": self.validation,
            "architecture": self.architecture,
            "architecture_kwargs": self.architecture_kwargs,
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "batch_sizes": list(self.batch_sizes),
            "max_size_mb": self.max_size_mb,
            "memory_estimate_mb": self.memory_estimate_mb,
            "threads": self.threads,
            "source": self.source,
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


def parse_config(raw: dict[str, Any] | None, *, task: str, source: str = "defaults") -> BakeConfig:
    """Validate ``raw`` (a parsed bake.yaml) over the defaults for ``task``."""
    raw = dict(raw or {})
    known = {
        "task", "passes", "quality", "validation", "architecture", "architecture_kwargs",
        "input_shape", "batch_sizes", "max_size_mb", "memory_estimate_mb", "threads",
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
    quality = {**DEFAULT_QUALITY[task], **(raw.get("quality") or {})}
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
