"""Embedding similarity between predictions and references, on the encoder of
:mod:`flowstone.encoder` (the packaged all-MiniLM-L6-v2).

The encoder, its per-process vector cache and the model folder live in ``flowstone.encoder``,
below both the evaluation and the systems, since the dense retrieval baseline uses them too;
they are named here as well because the metrics, the worker bridge, the baking steps, tests and
benches reach them through this module.
"""

from __future__ import annotations

from collections.abc import Sequence

from flowstone import embedders
from flowstone.encoder import (
    CACHE_SIZE,
    CACHE_SIZE_ENV,
    DEFAULT_BATCH_SIZE,
    clear_cache,
    encode,
    load_encoder,
    model_path,
)

__all__ = [
    "CACHE_SIZE",
    "CACHE_SIZE_ENV",
    "DEFAULT_BATCH_SIZE",
    "clear_cache",
    "cosine_similarities",
    "encode",
    "load_encoder",
    "model_path",
]


def cosine_similarities(
    predictions: Sequence[str],
    references: Sequence[str],
    batch_size: int = DEFAULT_BATCH_SIZE,
    model: str = "default",
) -> list[float]:
    """Cosine similarity of each prediction with its reference, embedded by ``model`` (a model
    reference: ``flowstone.embedders``).

    Each distinct text is encoded once, in batches, so repeated references (or an echo system
    whose outputs equal its inputs) cost nothing extra.
    """
    import numpy as np

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return []
    unique = list(dict.fromkeys([*predictions, *references]))
    index = {text: row for row, text in enumerate(unique)}
    vectors = embedders.encode(unique, batch_size=batch_size, model=model)
    left = vectors[[index[text] for text in predictions]]
    right = vectors[[index[text] for text in references]]
    sims = np.einsum("ij,ij->i", left, right)
    return [float(min(1.0, max(-1.0, value))) for value in sims]
