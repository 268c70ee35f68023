"""Sentence embeddings from the model a reference names: the packaged default, a bake, a deployment.

Why its own module: the ``embedding_similarity`` metric and the dense retrieval systems both
take a ``model`` reference (``flowstone.baking.registry``), and neither the evaluation nor the
systems should know how a baked ONNX model is run. The packaged default keeps going through
:mod:`flowstone.encoder` (its loader and vector cache are shared with everything else); another
model gets one loaded runner and one vector cache per resolved version, so scoring with the
default and with a bake in the same process never mixes their vectors, and a new bake (a new
version behind ``baked:NAME``) loads fresh.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from flowstone import encoder
from flowstone.baking.registry import DEFAULT, ResolvedModel, resolve, verify

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

_lock = threading.Lock()
_caches: dict[str, encoder.VectorCache] = {}


_RUNNERS_KEPT = 4  # loaded models a process keeps (a default, a bake, its predecessor, ...)
_runners: dict[str, Any] = {}


def loaded_runner(resolved: ResolvedModel) -> Any:
    """The loaded runner of one resolved version (verified against its recorded hash once):
    an embedding model's, or a classifier's (``flowstone.systems.classifier``), whatever
    ``open_runner`` runs for the artifact's task."""
    from flowstone.baking.artifacts import open_runner

    key = resolved.fingerprint
    with _lock:
        if key in _runners:
            return _runners[key]
    verify(resolved)
    assert resolved.artifact is not None
    runner = open_runner(resolved.artifact)
    with _lock:
        while len(_runners) >= _RUNNERS_KEPT:
            _caches.pop(next(iter(_runners)), None)
            _runners.pop(next(iter(_runners)))
        return _runners.setdefault(key, runner)


def current(model: str = DEFAULT) -> ResolvedModel:
    """What ``model`` points to now (raises ``ModelRefError`` with what to do)."""
    return resolve(model)


Model = str | ResolvedModel  # a reference, or a version resolved already (a bake under test)


def _resolved(model: Model) -> ResolvedModel:
    return model if isinstance(model, ResolvedModel) else resolve(model)


def _is_default(model: Model) -> bool:
    if isinstance(model, ResolvedModel):
        return model.artifact is None
    return model == DEFAULT


def encode(texts: Sequence[str], *, model: Model = DEFAULT,
           batch_size: int = encoder.DEFAULT_BATCH_SIZE) -> np.ndarray:  # fmt: skip
    """Unit-length embeddings of ``texts`` by ``model``, each distinct text encoded once."""
    if _is_default(model):
        return encoder.encode(texts, batch_size=batch_size)
    import numpy as np

    resolved = _resolved(model)
    runner = loaded_runner(resolved)
    with _lock:
        cache = _caches.setdefault(resolved.fingerprint, encoder.VectorCache(encoder.CACHE_SIZE))
    texts = list(texts)
    found = cache.lookup(runner, texts)
    missing = [t for t in dict.fromkeys(texts) if t not in found]
    if missing:
        vectors = np.asarray(runner.run(missing, batch_size=batch_size), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.where(norms == 0, 1.0, norms)
        computed = {t: row.copy() for t, row in zip(missing, vectors, strict=True)}
        cache.store(runner, computed)
        found.update(computed)
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    return np.stack([found[t] for t in texts])


def warm(model: Model = DEFAULT) -> None:
    """Load ``model`` now (before the first case is timed)."""
    if _is_default(model):
        encoder.load_encoder()
    else:
        resolved = _resolved(model)
        loaded_runner(resolved)
