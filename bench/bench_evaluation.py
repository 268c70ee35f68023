"""The evaluation of 20 suite x system partitions, in one process run: what orchestration
costs, and what the statistics (a bootstrap interval on every mean) cost.

overhead: three ways are timed on the same partitions, with the embedding model already warm
in this process (both sides share it, so model load is not what is measured):
  plain loop        flowstone.evaluation.pipeline.run_partition per partition
  dagster 1 run     one in-process run over all 20 partitions (what a single-run backfill does)
  dagster 20 runs   one in-process run per partition (what a multi-run backfill does)
Both Dagster ways write to a real SQLite instance and the pickle I/O manager.
Target: dagster 1 run / plain loop <= 1.5.

statistics: the same pipeline with intervals against without (`aggregate.bootstrap_ci`
replaced by a stub returning the mean as both ends), sides interleaved round by round: first
the aggregation alone (`aggregate.build_report`, where the intervals are computed, over scores
made once; the report step's charts take about a second a partition and would hide it), then
the whole evaluation. Also printed: the intervals' own time as a share of the whole, and the
paired comparisons the comparison asset will make (every pair of systems on a suite, every
metric), which the report does not make. Target: whole evaluation with / without <= 1.10.

FLOWSTONE_BENCH_ONLY=overhead or statistics runs one section (default: both).
"""

from __future__ import annotations

import itertools
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from unittest import mock

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
from flowstone.evaluation import aggregate, embedding, pipeline  # noqa: E402
from flowstone.evaluation import statistics as stats  # noqa: E402
from flowstone.evaluation.catalog import Catalog, load_catalog  # noqa: E402

PARTITIONS = 20
AGGREGATION_ROUNDS = 15  # build_report over the 20 partitions, each side
WHOLE_ROUNDS = 3  # whole evaluation, each side


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def no_interval(values, *, level=stats.DEFAULT_LEVEL, **_) -> stats.Interval:
    """The "without" side: the mean as both ends, no resampling."""
    mean = float(sum(values) / len(values))
    return stats.Interval(mean, mean, level)


def spread(runs: list[float]) -> str:
    return f"median {statistics.median(runs):6.3f} s  ({min(runs):.3f}-{max(runs):.3f})"


def interleaved(sides: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Each side once a round, the order alternating, so load from elsewhere on a shared
    machine hits both sides alike."""
    runs: dict[str, list[float]] = {name: [] for name in sides}
    order = list(sides)
    for r in range(rounds):
        for name in order if r % 2 == 0 else reversed(order):
            embedding.clear_cache()  # each run encodes its texts, as a fresh process would
            start = time.perf_counter()
            sides[name]()
            runs[name].append(time.perf_counter() - start)
    return runs


def statistics_cost(catalog: Catalog, dims: list[tuple[str, str]]) -> None:
    print(f"\nstatistics: {cpu_name()}; load average {os.getloadavg()[0]:.2f} at the start")
    settings = catalog.settings.for_suite(dims[0][0]).statistics
    print(
        f"  intervals: {settings.method}, {settings.resamples} resamples, "
        f"level {settings.confidence_level}"
    )
    scored = {}
    for suite, system in dims:  # made once, outside every timing
        frame = pipeline.load_suite(catalog, suite).value
        predictions = pipeline.predict(catalog, suite, system, frame).value
        scored[suite, system] = pipeline.score(catalog, suite, frame, predictions).value
    reports = WORK / "stats-reports"

    def aggregation():
        for (suite, system), scores in scored.items():
            aggregate.build_report(scores, catalog.settings.for_suite(suite), system)

    def whole():
        for suite, system in dims:
            pipeline.run_partition(catalog, suite, system, reports_dir=reports)

    def without(fn):
        def run():
            with mock.patch.object(aggregate, "bootstrap_ci", no_interval):
                fn()

        return run

    values = [
        scores[m].dropna().to_numpy()
        for (suite, _), scores in scored.items()
        for m in catalog.settings.for_suite(suite).metrics
        if m in scores.columns
    ]
    start = time.perf_counter()
    for v in values:
        stats.bootstrap_ci(v)
    all_intervals = time.perf_counter() - start
    print(
        f"  {len(values)} intervals (partition x metric): {all_intervals * 1e3:.1f} ms in all, "
        f"{all_intervals / len(values) * 1e3:.2f} ms each"
    )

    ratios, medians = {}, {}
    for label, fn, rounds in (
        ("aggregation", aggregation, AGGREGATION_ROUNDS),
        ("whole evaluation", whole, WHOLE_ROUNDS),
    ):
        runs = interleaved({"with": fn, "without": without(fn)}, rounds)
        for side, timings in runs.items():
            print(f"  {label:<17} {side:<8} {spread(timings)}   runs {len(timings)}")
        medians[label] = statistics.median(runs["without"])
        # each round's two sides ran back to back, so a round's ratio sees one machine load
        per_round = [w / wo for w, wo in zip(runs["with"], runs["without"], strict=True)]
        ratios[label] = statistics.median(per_round)
        each = (
            ", ".join(f"{r:.3f}" for r in per_round)
            if len(per_round) <= 5
            else f"{min(per_round):.3f}-{max(per_round):.3f}"
        )
        print(f"  ratio {label} with / without: {ratios[label]:.3f}x (median of rounds: {each})")
    share = all_intervals / medians["whole evaluation"]
    print(f"  the intervals' own time is {share:.2%} of the whole evaluation without them")

    by_suite: dict[str, list[str]] = {}
    for suite, system in dims:
        by_suite.setdefault(suite, []).append(system)
    start = time.perf_counter()
    made = 0
    for suite, systems in by_suite.items():
        for a, b in itertools.combinations(systems, 2):
            for metric in catalog.settings.for_suite(suite).metrics:
                x, y = scored[suite, a][metric], scored[suite, b][metric]
                valid = x.notna() & y.notna()
                stats.compare_paired(x[valid], y[valid], metric=metric, a=a, b=b)
                made += 1
    paired = time.perf_counter() - start
    print(
        f"  paired comparisons (not in the report): {made} in {paired:.2f} s, "
        f"{paired / max(made, 1) * 1e3:.1f} ms each"
    )
    print(
        f"ratio whole evaluation with / without statistics: {ratios['whole evaluation']:.3f}x "
        f"measured, {1 + share:.4f}x from the intervals' own time (target <= 1.10); load "
        f"average {os.getloadavg()[0]:.2f} at the end"
    )


def main() -> None:
    catalog = load_catalog()
    job = defs.resolve_job_def("evaluation_job")
    keys = job.partitions_def.get_partition_keys()[:PARTITIONS]
    dims = [tuple(k.split("|")) for k in keys]
    cases = sum(len(catalog.suites[s].read_text().splitlines()) for s, _ in dims)
    print(f"{len(keys)} partitions, {cases} cases")
    embedding.cosine_similarities(["warm up"], ["the model"])  # load once, outside every timing
    only = os.environ.get("FLOWSTONE_BENCH_ONLY", "overhead,statistics").split(",")
    if "overhead" in only:
        overhead(catalog, keys, dims)
    if "statistics" in only:
        statistics_cost(catalog, dims)
    shutil.rmtree(WORK, ignore_errors=True)


def overhead(catalog: Catalog, keys: list[str], dims: list[tuple[str, str]]) -> None:
    job = defs.resolve_job_def("evaluation_job")
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


if __name__ == "__main__":
    main()
