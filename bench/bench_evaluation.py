"""Orchestration overhead: the evaluation of 20 suite x system partitions through Dagster
against the same pipeline functions in a plain Python loop, in one process run.

Three ways are timed on the same partitions, with the embedding model already warm in this
process (both sides share it, so model load is not what is measured):
  plain loop        flowstone.evaluation.pipeline.run_partition per partition
  dagster 1 run     one in-process run over all 20 partitions (what a single-run backfill does)
  dagster 20 runs   one in-process run per partition (what a multi-run backfill does)
Both Dagster ways write to a real SQLite instance and the pickle I/O manager.
Target: dagster 1 run / plain loop <= 1.5.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
WORK = Path(tempfile.mkdtemp(prefix="flowstone-bench-eval-"))
SUITES = WORK / "suites"
SUITES.mkdir()
for copy in ("", "_b", "_c"):
    for name in ("qa", "summarisation", "paraphrase"):
        if len(list(SUITES.iterdir())) < 7:
            shutil.copy(REPO / "suites" / f"{name}.jsonl", SUITES / f"{name}{copy}.jsonl")
os.environ.update(
    DAGSTER_HOME=str(WORK / "home"),
    FLOWSTONE_SUITES_DIR=str(SUITES),
    FLOWSTONE_OUTPUTS_DIR=str(WORK / "out"),
    HF_HUB_OFFLINE="1",
    TOKENIZERS_PARALLELISM="false",
)
(WORK / "home").mkdir()
(WORK / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

import dagster as dg  # noqa: E402

warnings.filterwarnings("ignore")
from assets.runner import execute_partitions  # noqa: E402
from flowstone.definitions import defs  # noqa: E402
from flowstone.evaluation import embedding, pipeline  # noqa: E402
from flowstone.evaluation.catalog import load_catalog  # noqa: E402

PARTITIONS = 20


def main() -> None:
    catalog = load_catalog()
    job = defs.resolve_job_def("evaluation_job")
    keys = job.partitions_def.get_partition_keys()[:PARTITIONS]
    dims = [tuple(k.split("|")) for k in keys]
    cases = sum(len(catalog.suites[s].read_text().splitlines()) for s, _ in dims)
    print(f"{len(keys)} partitions, {cases} cases")
    embedding.cosine_similarities(["warm up"], ["the model"])  # load once, outside every timing
    instance = dg.DagsterInstance.get()

    def plain():
        for suite, system in dims:
            pipeline.run_partition(catalog, suite, system, reports_dir=WORK / "plain-reports")

    def single_run():
        outcomes = execute_partitions(job, instance, keys, single_run=True)
        assert len(outcomes) == len(keys)

    def run_per_partition():
        execute_partitions(job, instance, keys)

    timings = {}
    for name, fn in (
        ("plain loop", plain),
        ("dagster 1 run", single_run),
        ("dagster 20 runs", run_per_partition),
    ):
        runs = []
        for _ in range(3):
            embedding.clear_cache()  # each run encodes its texts, as a fresh process would
            start = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - start)
        timings[name] = sorted(runs)[1]
        print(
            f"{name:<16} median {timings[name]:6.2f} s   runs {', '.join(f'{r:.2f}' for r in runs)}"
        )
    base = timings["plain loop"]
    print(
        f"ratio dagster 1 run / plain loop:   {timings['dagster 1 run'] / base:.2f}x (target <= 1.5x)"
    )
    print(f"ratio dagster 20 runs / plain loop: {timings['dagster 20 runs'] / base:.2f}x")
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
