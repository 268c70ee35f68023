"""An embedding-similarity partition materialized cold (a new worker loads the model) vs warm.

Cold: the step's PythonWorkerPoolResource starts a private pool; its worker imports torch and
sentence-transformers and loads all-MiniLM-L6-v2 before scoring. Warm: the same asset, with the
resource pointed at a pool server that already holds the model (``flowstone pool serve``).
Both are real ``dagster.materialize`` runs in this process. Target (issue 3): warm >= 5x faster.
A fresh-interpreter baseline (import + load + score, no Dagster) is printed for reference.
Run: ``.venv/bin/python bench/bench_embedding_warm.py``
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Warm means "the model is loaded", not "these texts were encoded before": the server's workers
# inherit this and keep no vectors between runs.
os.environ["FLOWSTONE_EMBEDDING_CACHE"] = "0"

CASES = 64
SUBJECTS = [
    "the cat",
    "a river",
    "the committee",
    "my neighbour",
    "the old bridge",
    "a small robot",
    "the market",
    "our team",
]
VERBS = [
    "crossed",
    "watched",
    "approved",
    "repaired",
    "painted",
    "ignored",
    "measured",
    "described",
]
OBJECTS = [
    "the road",
    "a long report",
    "the evening sky",
    "every window",
    "the new plan",
    "a quiet song",
    "the harbour",
    "two maps",
]


def suite() -> tuple[list[str], list[str]]:
    preds, refs = [], []
    for i in range(CASES):
        s, v, o = SUBJECTS[i % 8], VERBS[(i // 8) % 8], OBJECTS[(i * 3) % 8]
        preds.append(f"{s} {v} {o} on day {i}.")
        refs.append(f"On day {i}, {s} {v} {o}." if i % 3 else f"{s} did not mention {o}.")
    return preds, refs


def main() -> None:
    import dagster as dg

    from flowstone.workers.pool import WorkerPool
    from flowstone.workers.server import PoolServer
    from resources.worker_pool import PythonWorkerPoolResource

    preds, refs = suite()
    home = Path(tempfile.mkdtemp(prefix="fs-bench-emb-"))
    os.environ["DAGSTER_HOME"] = str(home)

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["suite_a"]))
    def embedding_scores(worker_pool: PythonWorkerPoolResource) -> dg.MaterializeResult:
        scores = worker_pool.compute_metric("embedding_similarity", preds, refs)
        return dg.MaterializeResult(
            metadata={"mean": sum(scores) / len(scores), "cases": len(scores)}
        )

    def materialize(resource: PythonWorkerPoolResource) -> float:
        started = time.perf_counter()
        result = dg.materialize(
            [embedding_scores],
            partition_key="suite_a",
            resources={"worker_pool": resource},
            instance=dg.DagsterInstance.ephemeral(),
        )
        assert result.success
        return time.perf_counter() - started

    cold = [
        materialize(PythonWorkerPoolResource(bridge="metrics", workers=1, private_pool=True))
        for _ in range(2)
    ]

    sock = home / "emb.sock"
    pool = WorkerPool(
        bridge="metrics", size=1, bridge_options={"preload": True}, registry_dir=home / "workers"
    )
    with PoolServer(pool, sock):
        warm_resource = PythonWorkerPoolResource(socket_path=str(sock))
        materialize(warm_resource)  # first encode call on the server
        warm = [materialize(warm_resource) for _ in range(3)]

    script = (
        f"from flowstone.evaluation.metrics import compute; import sys; sys.path.insert(0, {str(Path(__file__).parent)!r});"
        "from bench_embedding_warm import suite; p, r = suite(); compute('embedding_similarity', p, r)"
    )
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ})
    fresh = time.perf_counter() - started

    cold_s, warm_s = statistics.median(cold), statistics.median(warm)
    print(f"Embedding-similarity partition, {CASES} cases, dagster.materialize in-process")
    print(
        f"cold (private pool, new worker loads the model): median {cold_s:.3f}s  runs {[round(c, 3) for c in cold]}"
    )
    print(
        f"warm (pool server already up):                   median {warm_s:.3f}s  runs {[round(w, 3) for w in warm]}"
    )
    print(f"fresh interpreter, no Dagster (import+load+score): {fresh:.3f}s")
    print(f"cold / warm = {cold_s / warm_s:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
