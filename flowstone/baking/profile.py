"""Latency, throughput and memory of the original and the baked variant, measured alike.

Each variant runs in a fresh spawned process: its peak RSS then belongs to that variant alone
(not to whatever the step loaded before), and both sides start from the same empty state.
Both use the same thread count, recorded with the figures, and the same inputs, after a
warm-up. Ratios are baked / original for latency, size and memory, original-relative
speed-up for throughput.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import statistics
import time
from typing import Any

from flowstone.baking.artifacts import Artifact
from flowstone.baking.config import BakeConfig
from flowstone.baking.quality import resolve_validation, validation_pairs
from flowstone.baking.records.bake import BakeRecord
from flowstone.baking.records.profile import BatchRatios, BatchTiming, ProfileRecord, VariantProfile
from flowstone.baking.records.source import SourceRecord

WARMUP = 3
MIN_ITERATIONS = 10
MIN_SECONDS = 1.0
MAX_ITERATIONS = 200
SENTENCE_PAIRS = 64  # pairs of validation sentences an embedding model is timed on


def _inputs(task: str, batch: int, input_shape: list[int] | None, sentences: list[str]) -> Any:
    if task == "embedding":
        return [sentences[i % len(sentences)] for i in range(batch)]
    import numpy as np

    assert input_shape is not None  # the source step records it for classifiers
    return np.random.default_rng(0).standard_normal((batch, *input_shape)).astype(np.float32)


def _measure(artifact_dict: dict[str, Any], batch_sizes: list[int], threads: int,
             input_shape: list[int] | None, sentences: list[str]) -> VariantProfile:  # fmt: skip
    """Runs in the child process."""
    from flowstone.threads import restore_user_policy

    restore_user_policy()  # measured as the user's environment runs it (before torch loads)
    from flowstone.baking.artifacts import open_runner, set_threads

    artifact = Artifact.from_dict(artifact_dict)
    torch_threads = set_threads(threads)
    baseline_rss = _rss_bytes()
    started = time.perf_counter()
    runner = open_runner(artifact, threads=threads)
    load_seconds = time.perf_counter() - started
    per_batch = {}
    for batch in batch_sizes:
        inputs = _inputs(artifact.task, batch, input_shape, sentences)
        kwargs = {"batch_size": batch} if artifact.task == "embedding" else {}

        def call(inputs: Any = inputs, kwargs: dict = kwargs) -> None:
            runner.run(inputs, **kwargs)

        for _ in range(WARMUP):
            call()
        timings: list[float] = []
        begin = time.perf_counter()
        while len(timings) < MAX_ITERATIONS and (
            len(timings) < MIN_ITERATIONS or time.perf_counter() - begin < MIN_SECONDS
        ):
            t0 = time.perf_counter()
            call()
            timings.append(time.perf_counter() - t0)
        timings.sort()
        p95 = timings[min(len(timings) - 1, int(round(0.95 * (len(timings) - 1))))]
        per_batch[str(batch)] = BatchTiming(
            latency_p50_ms=statistics.median(timings) * 1000,
            latency_p95_ms=p95 * 1000,
            throughput_per_s=batch * len(timings) / sum(timings),
            iterations=len(timings),
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return VariantProfile(
        per_batch=per_batch,
        peak_rss_bytes=peak,
        model_rss_bytes=max(0, peak - baseline_rss),
        load_seconds=load_seconds,
        torch_threads=torch_threads,
        threads=threads,
        size_bytes=artifact.size_bytes(),
        format=artifact.format,
    )


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def measure_in_subprocess(artifact: Artifact, batch_sizes: list[int], threads: int,
                          input_shape: list[int] | None, sentences: list[str]) -> VariantProfile:  # fmt: skip
    """``_measure`` in a fresh spawned process."""
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(1)
    try:
        return pool.apply(
            _measure, (artifact.as_dict(), batch_sizes, threads, input_shape, sentences)
        )
    finally:
        # Let the child exit rather than be terminated (what ``with Pool`` does): its exit
        # releases what it registered with the resource tracker (tqdm, inside
        # sentence-transformers, makes a semaphore), else a "leaked semaphore" warning follows.
        pool.close()
        pool.join()


def profiling_sentences(record: SourceRecord, config: BakeConfig) -> list[str]:
    """What an embedding model is timed on: the first validation pairs' sentences (none for a
    classifier, which is timed on random inputs of its input shape)."""
    if config.task != "embedding":
        return []
    pairs = validation_pairs(record, resolve_validation(record, config.validation))
    return [s for pair in pairs[:SENTENCE_PAIRS] for s in pair]


def profile_variants(
    record: SourceRecord, baked: BakeRecord, config: BakeConfig, sentences: list[str]
) -> ProfileRecord:
    """Figures for the original and the baked variant, and their ratios."""
    threads = int(config.threads or os.cpu_count() or 1)
    batch_sizes = list(config.batch_sizes)
    shape = record.input_shape
    original = measure_in_subprocess(record.original, batch_sizes, threads, shape, sentences)
    bake = measure_in_subprocess(baked.artifact, batch_sizes, threads, shape, sentences)
    ratios: dict[str, BatchRatios] = {}
    for batch in map(str, batch_sizes):
        o, b = original.per_batch[batch], bake.per_batch[batch]
        ratios[batch] = BatchRatios(
            speedup_p50=o.latency_p50_ms / b.latency_p50_ms,
            speedup_p95=o.latency_p95_ms / b.latency_p95_ms,
            throughput_ratio=b.throughput_per_s / o.throughput_per_s,
        )
    largest = str(max(batch_sizes))
    return ProfileRecord(
        threads=threads,
        # Latency ratios are only as good as a quiet machine: record how busy it was.
        load_average=round(os.getloadavg()[0], 2),
        batch_sizes=batch_sizes,
        original=original,
        baked=bake,
        ratios=ratios,
        throughput_ratio=ratios[largest].throughput_ratio,
        size_ratio=bake.size_bytes / original.size_bytes,
        peak_rss_ratio=bake.peak_rss_bytes / original.peak_rss_bytes,
        model_rss_ratio=bake.model_rss_bytes / original.model_rss_bytes
        if original.model_rss_bytes
        else None,
    )
