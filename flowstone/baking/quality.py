"""How close the baked model stays to the original, on validation data.

Classifiers: accuracy of both on labelled data, retention (baked / original), label agreement
and the largest logit difference. Embedding models: cosine fidelity between each sentence's
original and baked embedding (mean and min), and Spearman's rho between the two models'
similarity scores over sentence pairs, which is what a search or dedup user depends on; that
math is ``flowstone.baking.fidelity``'s, the same the MiniLM bench prints. Embedding models are
also measured against human judgement: Spearman's rho of each model's pair cosines with gold
STS scores (0-5), on the validation file when its pairs carry a ``score``, else on the shipped
gold set ``data/sts_gold_pairs.jsonl`` (``data/STS_GOLD.md``), and the drop from the original
to the baked model.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowstone.baking.artifacts import Artifact, open_runner
from flowstone.baking.config import BakeConfig
from flowstone.baking.errors import BakeError
from flowstone.baking.fidelity import DATA_DIR, fidelity_report, gold_spearman, load_fidelity_pairs
from flowstone.baking.records.bake import BakeRecord
from flowstone.baking.records.quality import ClassifierFigures, EmbeddingFigures, QualityRecord
from flowstone.baking.records.source import SourceRecord

STAGE = "bake_quality"
GOLD_PAIRS = DATA_DIR / "sts_gold_pairs.jsonl"
BUILTIN_GOLD = f"builtin: {GOLD_PAIRS.name}"
MAX_SCORE = 5.0  # the STS scale: 0 (different topics) to 5 (same meaning)
MIN_PAIRS = 10  # fewer pairs than this make a rank correlation noise


@dataclass(frozen=True)
class Pair:
    """A sentence pair, with its gold similarity score (STS 0-5) when the file gives one."""

    a: str
    b: str
    score: float | None = None


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


def _score(item: dict[str, Any], path: Path, number: int, model: str) -> float | None:
    if "score" not in item:
        return None
    score = item["score"]
    if isinstance(score, bool) or not isinstance(score, int | float) or math.isnan(score):
        raise BakeError(model, STAGE, f"{path}, line {number}: 'score' must be a number from 0 "
                        f"to {MAX_SCORE:g}, got {score!r}")  # fmt: skip
    if not 0 <= score <= MAX_SCORE:
        raise BakeError(model, STAGE, f"{path}, line {number}: 'score' {score!r} is outside "
                        f"the STS scale 0 to {MAX_SCORE:g}")  # fmt: skip
    return float(score)


def load_scored_pairs(path: Path, model: str) -> list[Pair]:
    """Sentence pairs, one JSON object ``{"a": ..., "b": ...}`` a line, each with an optional
    gold ``"score"`` (a number from 0 to 5): every line has one or none does."""
    pairs: list[Pair] = []
    first: int | None = None  # the first pair's line: whether it has a score sets the rule
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
            pair = Pair(a, b, _score(item, path, number, model))
            if first is None:
                first = number
            elif (pair.score is None) != (pairs[0].score is None):
                has, lacks = ("has", "does not") if pair.score is not None else ("has no", "does")
                raise BakeError(model, STAGE, f"{path}, line {number}: {has} 'score' but line "
                                f"{first} {lacks}; give every pair a score or none")  # fmt: skip
            pairs.append(pair)
    if len(pairs) < MIN_PAIRS:
        raise BakeError(model, STAGE, f"{path}: {len(pairs)} pairs; need at least {MIN_PAIRS} "
                        "for a rank correlation")  # fmt: skip
    if pairs[0].score is not None and len({p.score for p in pairs}) < 2:
        raise BakeError(model, STAGE, f"{path}: every pair has the score {pairs[0].score:g}; "
                        "a rank correlation needs scores that differ")  # fmt: skip
    return pairs


def load_pairs(path: Path, model: str) -> list[tuple[str, str]]:
    """Sentence pairs, one JSON object ``{"a": ..., "b": ...}`` a line (scores checked, dropped)."""
    return [(pair.a, pair.b) for pair in load_scored_pairs(path, model)]


@functools.cache
def builtin_gold_pairs() -> tuple[Pair, ...]:
    """The shipped gold set: sentence pairs written and scored (STS 0-5) for this project, see
    ``data/STS_GOLD.md``; never used to choose a recipe."""
    return tuple(load_scored_pairs(GOLD_PAIRS, BUILTIN_GOLD))


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


def _gold_pairs(pairs: list[Pair] | None, path: Path | None) -> tuple[list[Pair], str]:
    """The configured pairs when they carry gold scores, else the shipped gold set."""
    if pairs and pairs[0].score is not None:
        return pairs, str(path)
    return list(builtin_gold_pairs()), BUILTIN_GOLD


def _embedding(
    record: SourceRecord, original: Artifact, baked: Artifact, path: Path | None
) -> EmbeddingFigures:
    import numpy as np

    configured = load_scored_pairs(path, record.model) if path else None
    pairs = [(p.a, p.b) for p in configured] if configured else builtin_pairs()
    gold, gold_source = _gold_pairs(configured, path)
    sentences = sorted({s for pair in pairs for s in pair})
    index = {s: i for i, s in enumerate(sentences)}
    # one encoding run per model for the validation and the gold sentences together
    everything = sentences + sorted({s for p in gold for s in (p.a, p.b)} - set(index))
    position = {s: i for i, s in enumerate(everything)}

    def embed(artifact: Artifact) -> Any:
        return np.asarray(open_runner(artifact).run(everything, batch_size=32))

    vectors_o, vectors_b = embed(original), embed(baked)
    report = fidelity_report(
        vectors_o[: len(sentences)],
        vectors_b[: len(sentences)],
        [(index[a], index[b]) for a, b in pairs],
    )
    gold_rows = [(position[p.a], position[p.b]) for p in gold]
    scores = [float(p.score) for p in gold if p.score is not None]
    rho_o = gold_spearman(vectors_o, gold_rows, scores)
    rho_b = gold_spearman(vectors_b, gold_rows, scores)
    return EmbeddingFigures(
        pairs=len(pairs),
        sentences=len(sentences),
        spearman_rho=report.spearman_rho,
        cosine_mean=report.cosine_mean,
        cosine_min=report.cosine_min,
        max_abs_similarity_diff=report.pair_similarity_max_abs_change,
        validation=str(path) if path else "builtin: held-out pairs from the suites",
        gold_pairs=len(gold),
        gold_source=gold_source,
        spearman_gold_original=rho_o,
        spearman_gold_baked=rho_b,
        spearman_gold_drop=rho_o - rho_b,
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
