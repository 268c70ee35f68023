"""How close the baked model stays to the original, on validation data.

Classifiers: accuracy of both on labelled data, retention (baked / original), label agreement
and the largest logit difference. Embedding models: cosine fidelity between each sentence's
original and baked embedding (mean and min), and Spearman's rho between the two models'
similarity scores over sentence pairs, which is what a search or dedup user depends on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flowstone.baking.artifacts import Artifact, open_runner
from flowstone.baking.errors import BakeError

STAGE = "bake_quality"


def resolve_validation(record: dict[str, Any], value: str | None) -> Path | None:
    """A validation path from the bake config, relative to the model's own location."""
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_absolute():
        base = Path(record["source_path"])
        path = (base if base.is_dir() else base.parent) / path
    if not path.exists():
        raise BakeError(
            record["model"],
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
    from flowstone.baking.onnx_runtime import load_fidelity_pairs

    texts, pairs = load_fidelity_pairs()
    return [(texts[a], texts[b]) for a, b, _ in pairs]


def validation_pairs(record: dict[str, Any], path: Path | None) -> list[tuple[str, str]]:
    return load_pairs(path, record["model"]) if path else builtin_pairs()


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
    record: dict[str, Any], original: Artifact, baked: Artifact, path: Path | None
) -> dict[str, Any]:
    import numpy as np

    if path is None:
        raise BakeError(record["model"], STAGE, "a classifier needs labelled validation data: set "
                        "'validation: file.npz' (arrays x and y) in its bake config")  # fmt: skip
    x, y = load_labelled(path, record["model"], record["input_shape"])
    logits_o = np.concatenate(
        [open_runner(original).run(x[i : i + 256]) for i in range(0, len(x), 256)]
    )
    baked_runner = open_runner(baked)
    logits_b = np.concatenate([baked_runner.run(x[i : i + 256]) for i in range(0, len(x), 256)])
    if logits_o.shape[1] <= int(y.max()):
        raise BakeError(
            record["model"],
            STAGE,
            f"{path}: labels go up to {int(y.max())} but the model has {logits_o.shape[1]} outputs",
        )
    acc_o = float((logits_o.argmax(1) == y).mean())
    acc_b = float((logits_b.argmax(1) == y).mean())
    return {
        "examples": int(len(x)),
        "accuracy_original": acc_o,
        "accuracy_baked": acc_b,
        "accuracy_retention": acc_b / acc_o if acc_o > 0 else float("nan"),
        "label_agreement": float((logits_o.argmax(1) == logits_b.argmax(1)).mean()),
        "max_abs_logit_diff": float(np.abs(logits_o - logits_b).max()),
    }


def _embedding(
    record: dict[str, Any], original: Artifact, baked: Artifact, path: Path | None
) -> dict[str, Any]:
    import numpy as np
    from scipy.stats import spearmanr

    pairs = validation_pairs(record, path)
    sentences = sorted({s for pair in pairs for s in pair})
    index = {s: i for i, s in enumerate(sentences)}

    def normalised(artifact: Artifact) -> Any:
        vectors = np.asarray(open_runner(artifact).run(sentences, batch_size=32), dtype=np.float64)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    emb_o, emb_b = normalised(original), normalised(baked)
    fidelity = (emb_o * emb_b).sum(axis=1)
    a = [index[p[0]] for p in pairs]
    b = [index[p[1]] for p in pairs]
    sim_o = (emb_o[a] * emb_o[b]).sum(axis=1)
    sim_b = (emb_b[a] * emb_b[b]).sum(axis=1)
    rho = float(spearmanr(sim_o, sim_b).statistic)
    return {
        "pairs": len(pairs),
        "sentences": len(sentences),
        "spearman_rho": rho,
        "cosine_mean": float(fidelity.mean()),
        "cosine_min": float(fidelity.min()),
        "max_abs_similarity_diff": float(np.abs(sim_o - sim_b).max()),
        "validation": str(path) if path else "builtin: held-out pairs from the suites",
    }


def measure_quality(record: dict[str, Any], baked: dict[str, Any], config: Any) -> dict[str, Any]:
    """Quality figures plus the configured metric, threshold and verdict."""
    original = Artifact.from_dict(record["original"])
    artifact = Artifact.from_dict(baked["artifact"])
    path = resolve_validation(record, config.validation)
    figures = (_embedding if config.task == "embedding" else _classifier)(
        record, original, artifact, path
    )
    value = figures[config.quality_metric]
    # Lower is better for a difference; higher for the rest.
    lower_better = config.quality_metric.startswith("max_abs")
    passed = (
        value <= config.quality_threshold if lower_better else value >= config.quality_threshold
    )
    return {
        **figures,
        "metric": config.quality_metric,
        "value": value,
        "threshold": config.quality_threshold,
        "passed": bool(passed),
    }
