"""How far a baked embedding model moved from the original: the one place this math lives.

The product's quality step (``flowstone.baking.quality``) and the MiniLM bench
(``bench/bench_baking_minilm.py``) both call :func:`fidelity_report`, so the figure a bake's
quality check passes on is the figure the bench prints. Cosine fidelity is the cosine between a
text's original and baked embedding; Spearman's rho is the rank correlation of the two models'
similarity scores over sentence pairs, which is what a search or dedup user depends on. Both are
computed in float64 whatever the embeddings' dtype, and rho has ``scipy.stats.spearmanr``'s
semantics (average ranks for ties).

Also here: the shipped held-out pairs, built from the suites and never used to tune a recipe,
and :func:`gold_spearman`, how well one model's pair similarities rank like human gold scores
(the gold set is ``data/sts_gold_pairs.jsonl``, read by ``flowstone.baking.quality``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowstone.baking.errors import OnnxBakeError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"
FIDELITY_PAIRS = DATA_DIR / "minilm_fidelity_pairs.json"
MIN_PAIRS_PER_KIND = 10  # fewer pairs than this make a within-kind rho noise


def load_fidelity_pairs(
    path: Path = FIDELITY_PAIRS,
) -> tuple[list[str], list[tuple[int, int, str]]]:
    """The shipped held-out sentence pairs: (texts, [(i, j, kind), ...]).

    Built deterministically from suites/*.jsonl by ``bench/bench_baking_minilm.py --write-pairs``;
    never used to choose a recipe's options (see ``flowstone.baking.onnx.recipe``).
    """
    data = json.loads(Path(path).read_text())
    texts = list(data["texts"])
    pairs = [(int(a), int(b), str(kind)) for a, b, kind in data["pairs"]]
    for row, (a, b, _) in enumerate(pairs):
        if not (0 <= a < len(texts) and 0 <= b < len(texts)):
            raise OnnxBakeError(f"{path}: pair {row} points outside the {len(texts)} texts")
    return texts, pairs


def spearman_rho(left: Sequence[float] | np.ndarray, right: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation, ties at their average rank (``scipy.stats.spearmanr``)."""
    from scipy.stats import spearmanr

    return float(spearmanr(left, right).statistic)


@dataclass(frozen=True)
class FidelityReport:
    """Baked vs original embeddings.

    ``spearman_rho``: rank correlation of the pairwise cosine similarities over all pairs;
    ``spearman_rho_by_kind`` (when pairs carry a kind, the part before ":"): the same within each
    kind with at least ten pairs, a harder test because each kind spans a narrow band of
    similarities (random pairs all sit near 0); ``cosine_mean`` / ``cosine_min``: cosine between
    each text's two embeddings; ``pair_similarity_max_abs_change``: the largest change of one
    pair's similarity.
    """

    spearman_rho: float
    cosine_mean: float
    cosine_min: float
    pair_similarity_max_abs_change: float
    pairs: int
    texts: int
    spearman_rho_by_kind: dict[str, float] = field(default_factory=dict)

    @property
    def spearman_rho_min_by_kind(self) -> float | None:
        """The lowest within-kind rho (None when the pairs carry no kinds)."""
        return min(self.spearman_rho_by_kind.values()) if self.spearman_rho_by_kind else None


def _unit_rows(vectors: Any) -> Any:
    import numpy as np

    array = np.asarray(vectors, dtype=np.float64)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def cosine_fidelity(reference: Any, candidate: Any) -> Any:
    """The cosine between each text's reference and candidate embedding (float64 array)."""
    return (_unit_rows(reference) * _unit_rows(candidate)).sum(axis=1)


def fidelity_report(
    reference: Any, candidate: Any, pairs: Sequence[Sequence[Any]]
) -> FidelityReport:
    """Compare ``candidate`` embeddings (one row per text) with ``reference`` over ``pairs`` of
    row indices; a pair's optional third item is its kind."""
    import numpy as np

    if np.shape(reference) != np.shape(candidate):
        raise ValueError(
            f"shape mismatch: reference {np.shape(reference)} vs {np.shape(candidate)}"
        )
    if not pairs:
        raise ValueError("fidelity_report needs at least one pair")
    cosine = cosine_fidelity(reference, candidate)
    ref, cand = _unit_rows(reference), _unit_rows(candidate)
    left = np.array([pair[0] for pair in pairs])
    right = np.array([pair[1] for pair in pairs])
    sim_ref = (ref[left] * ref[right]).sum(axis=1)
    sim_cand = (cand[left] * cand[right]).sum(axis=1)
    kinds = [str(pair[2]).split(":")[0] for pair in pairs] if len(pairs[0]) > 2 else []
    by_kind = {}
    for kind in sorted(set(kinds)):
        rows = np.array([i for i, k in enumerate(kinds) if k == kind])
        if len(rows) >= MIN_PAIRS_PER_KIND:
            by_kind[kind] = spearman_rho(sim_ref[rows], sim_cand[rows])
    return FidelityReport(
        spearman_rho=spearman_rho(sim_ref, sim_cand),
        cosine_mean=float(cosine.mean()),
        cosine_min=float(cosine.min()),
        pair_similarity_max_abs_change=float(np.abs(sim_ref - sim_cand).max()),
        pairs=len(pairs),
        texts=len(ref),
        spearman_rho_by_kind=by_kind,
    )


def gold_spearman(
    embeddings: Any, pairs: Sequence[Sequence[int]], scores: Sequence[float] | np.ndarray
) -> float:
    """Spearman's rho of one model's pair cosines with gold similarity scores.

    ``embeddings``: one row per text, unit-normalised or not (rows are normalised here, in
    float64); ``pairs``: (row, row) index pairs; ``scores``: one gold score per pair (any scale,
    e.g. STS 0-5: only the ranks count). Ties rank at their average (``scipy.stats.spearmanr``).
    """
    import numpy as np

    if len(pairs) != len(scores):
        raise ValueError(f"{len(pairs)} pairs but {len(scores)} gold scores")
    if len(pairs) < 2:
        raise ValueError("gold_spearman needs at least two pairs")
    unit = _unit_rows(embeddings)
    left = np.array([pair[0] for pair in pairs])
    right = np.array([pair[1] for pair in pairs])
    return spearman_rho((unit[left] * unit[right]).sum(axis=1), np.asarray(scores, dtype=float))
