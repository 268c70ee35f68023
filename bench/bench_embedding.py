"""Embedding metric throughput against raw SentenceTransformer.encode at batch 64, on the same
distinct texts, in one process run. Target: ours / raw >= 0.9."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from flowstone.evaluation import embedding, metrics  # noqa: E402
from flowstone.text import sentences  # noqa: E402

BATCH = 64


def corpus() -> list[str]:
    """Every distinct sentence and field of the shipped suites."""
    texts: dict[str, None] = {}
    for path in sorted((REPO / "suites").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            case = json.loads(line)
            for field in ("input", "expected", "context"):
                if case.get(field):
                    texts[case[field]] = None
                    for sentence in sentences(case[field]):
                        texts[sentence] = None
    return list(texts)


def main() -> None:
    texts = corpus()
    half = len(texts) // 2
    preds, refs = texts[:half], texts[half : 2 * half]
    model = embedding.load_encoder()
    model.encode(texts[:BATCH], batch_size=BATCH)  # warm-up
    print(
        f"{2 * half} distinct texts, batch {BATCH}, torch threads {__import__('torch').get_num_threads()}"
    )

    results = {"raw encode": [], "embedding_similarity": []}
    for _ in range(3):
        start = time.perf_counter()
        model.encode(
            preds + refs, batch_size=BATCH, normalize_embeddings=True, show_progress_bar=False
        )
        results["raw encode"].append(time.perf_counter() - start)
        embedding.clear_cache()  # time encoding, not the per-process vector cache
        start = time.perf_counter()
        metrics.embedding_similarity(preds, refs, batch_size=BATCH)
        results["embedding_similarity"].append(time.perf_counter() - start)
    rate = {}
    for name, runs in results.items():
        median = sorted(runs)[1]
        rate[name] = 2 * half / median
        print(f"{name:<22} {rate[name]:7.1f} texts/s   runs {', '.join(f'{r:.2f}s' for r in runs)}")
    print(
        f"ratio embedding_similarity / raw encode: {rate['embedding_similarity'] / rate['raw encode']:.2f}x (target >= 0.9x)"
    )


if __name__ == "__main__":
    main()
