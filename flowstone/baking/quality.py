"""How close the baked model stays to the original, on validation data.

Classifiers: accuracy of both on labelled data, retention (baked / original), label agreement
and the largest logit difference. Embedding models: cosine fidelity between each sentence's
original and baked embedding (mean and min), and Spearman's rho between the two models'
similarity scores over sentence pairs, which is what a search or dedup user depends on; that
math is ``flowstone.baking.fidelity``'s, the same the MiniLM bench prints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flowstone.baking.artifacts import Artifact, open_runner
from flowstone.baking.config import BakeConfig
from flowstone.baking.errors import BakeError
from flowstone.baking.fidelity import fidelity_report, load_fidelity_pairs
from flowstone.baking.records.bake import BakeRecord
from flowstone.baking.records.quality import ClassifierFigures, EmbeddingFigures, QualityRecord
from flowstone.baking.records.source import SourceRecord

STAGE = "bake_quality"


def resolve_validation(record: SourceRecord, value: str | None) -> Path | None:
    """A validation path from the bake config, relative to the model's own location."""
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_absolute():
        base = Path(record.source_path)
        path = (base if base.is_dir() else base.parent) / path
    if not path.exists():
        raise BakeError(
            record.model,
            STAGE,
            f"validation data {path} does not exist ('validation' in the bake config)",
        )
    return path


def load_pairs(path: Path, model: str) -> list[tuple[str, str]]:
    """Sentence pairs, one JSON object ``{"a": ..., "b": ...}`` a line."""
    pairs = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                a, b = item["a"], item["b"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise BakeError(model, STAGE, f"{path}, line {number}: expected "
                                f'{{"a": "...", "b": "..."}}: {exc}') from exc  # fmt: skip
            if not isinstance(a, str) or not isinstance(b, str) or not a.strip() or not b.strip():
                raise BakeError(
                    model, STAGE, f"{path}, line {number}: 'a' and 'b' must be non-empty strings"
                )
            pairs.append((a, b))
    if len(pairs) < 10:
        raise BakeError(
            model, STAGE, f"{path}: {len(pairs)} pairs; need at least 10 for a rank correlation"
        )
    return pairs


def builtin_pairs() -> list[tuple[str, str]]:
    """The shipped held-out pairs (built from the suites; never used to tune a recipe)."""
    texts, pairs = load_fidelity_pairs()
    return [(texts[a], texts[b]) for a, b, _ in pairs]


def validation_pairs(record: SourceRecord, path: Path | None) -> list[tuple[str, str]]:
    """The configured pairs file, or the shipped held-out pairs when none is configured."""
    return load_pairs(path, record.model) if path else builtin_pairs()


def load_labelled(path: Path, model: str, input_shape: list[int]) -> tuple[Any, Any]:
    """``x`` (n, *input_shape) and integer labels ``y`` (n,) from an .npz or .safetensors."""
    import numpy as np

    try:
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            arrays = load_file(str(path))
        else:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
    except Exception as exc:
        raise BakeError(model, STAGE, f"{path} is not readable validation data: {exc}") from exc
    for key in ("x", "y"):
        if key not in arrays:
            raise BakeError(model, STAGE, f"{path}: missing array '{key}' (have {sorted(arrays)})")
    x, y = arrays["x"], arrays["y"]
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise BakeError(
            model, STAGE, f"{path}: field 'x' has shape {tuple(x.shape)}, but the model takes "
            f"examples of shape {tuple(input_shape)} (input_shape), i.e. (n, {', '.join(map(str, input_shape))})"
        )  # fmt: skip
    if y.ndim != 1 or len(y) != len(x):
        raise BakeError(
            model,
            STAGE,
            f"{path}: field 'y' must be one label per row of 'x'; got shape {tuple(y.shape)} for {len(x)} rows",
        )
    return x.astype(np.float32), y.astype(np.int64)


def _classifier(
    record: SourceRecord, original: Artifact, baked: Artifact, path: Path | None
) -> ClassifierFigures:
    import numpy as np

    if path is None:
        raise BakeError(record.model, STAGE, "a classifier needs labelled validation data: set "
                        "'validation: file.npz' (arrays x and y) in its bake config")  # fmt: skip
    assert record.input_shape is not None  # the source step records it for classifiers
    x, y = load_labelled(path, record.model, record.input_shape)
    logits_o = np.concatenate(
        [open_runner(original).run(x[i : i + 256]) for i in range(0, len(x), 256)]
    )
    baked_runner = open_runner(baked)
    logits_b = np.concatenate([baked_runner.run(x[i : i + 256]) for i in range(0, len(x), 256)])
    if logits_o.shape[1] <= int(y.max()):
        raise BakeError(
            record.model,
            STAGE,
            f"{path}: labels go up to {int(y.max())} but the model has {logits_o.shape[1]} outputs",
        )
    acc_o = float((logits_o.argmax(1) == y).mean())
    acc_b = float((logits_b.argmax(1) == y).mean())
    return ClassifierFigures(
        examples=int(len(x)),
        accuracy_original=acc_o,
        accuracy_baked=acc_b,
        accuracy_retention=acc_b / acc_o if acc_o > 0 else float("nan"),
        label_agreement=float((logits_o.argmax(1) == logits_b.argmax(1)).mean()),
        max_abs_logit_diff=float(np.abs(logits_o - logits_b).max()),
    )


def _embedding(
    record: SourceRecord, original: Artifact, baked: Artifact, path: Path | None
) -> EmbeddingFigures:
    pairs = validation_pairs(record, path)
    sentences = sorted({s for pair in pairs for s in pair})
    index = {s: i for i, s in enumerate(sentences)}

    def embed(artifact: Artifact) -> Any:
        return open_runner(artifact).run(sentences, batch_size=32)

    report = fidelity_report(
        embed(original), embed(baked), [(index[a], index[b]) for a, b in pairs]
    )
    return EmbeddingFigures(
        pairs=len(pairs),
        sentences=len(sentences),
        spearman_rho=report.spearman_rho,
        cosine_mean=report.cosine_mean,
        cosine_min=report.cosine_min,
        max_abs_similarity_diff=report.pair_similarity_max_abs_change,
        validation=str(path) if path else "builtin: held-out pairs from the suites",
    )


def measure_quality(record: SourceRecord, baked: BakeRecord, config: BakeConfig) -> QualityRecord:
    """Quality figures plus the configured metric, threshold and verdict."""
    path = resolve_validation(record, config.validation)
    measure = _embedding if config.task == "embedding" else _classifier
    figures = measure(record, record.original, baked.artifact, path)
    value = getattr(figures, config.quality_metric)
    # Lower is better for a difference; higher for the rest.
    lower_better = config.lower_is_better
    passed = (
        value <= config.quality_threshold if lower_better else value >= config.quality_threshold
    )
    return QualityRecord(
        figures=figures,
        metric=config.quality_metric,
        value=value,
        threshold=config.quality_threshold,
        passed=bool(passed),
    )
