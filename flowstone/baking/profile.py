"""Latency, throughput and memory of the original and the baked variant, measured alike, in
rounds, until their throughput ratio is known well enough.

Why rounds: one pass per variant on a shared machine measured the load more than the models
(3.37x at load 4 that was 1.31x on a quiet machine; a 0.10x bake reported as a success). Each
round runs both variants, one after the other, alternating which goes first; each in a FRESH
process, with the same thread count (``config.threads`` or every CPU) and the same inputs,
warm-up then timed iterations at every batch size. A round gives one throughput ratio, baked /
original at the largest batch size (the headline batch): both sides of a round see about the
same machine, so the ratio is steadier than either throughput.

The interval: a throughput ratio is multiplicative, so the rounds' ratios are averaged on the
log scale: a t-interval (``scipy.stats.t``, ``n - 1`` degrees of freedom) on the mean log ratio,
back-transformed with ``exp``; the point estimate is the geometric mean of the ratios. Rounds go
on until, after at least ``speed.min_rounds``, the interval's half-width ``(high - low) / 2``
is within ``speed.rel_ci`` of the ratio; at ``speed.max_rounds`` without that the profile is
"noisy" and has no headline ratio (``throughput_ratio=None``): its interval and every round
are kept, and the speed check judges the interval it has.

Why a measuring server: a fresh spawned process per variant per round pays the interpreter,
``import torch`` (2-3 s), ONNX Runtime and sentence-transformers every time. Instead one
spawned process imports the libraries the variants need (and loads no model), then forks one
child per measurement: every child starts from that same clean state, loads its model, measures,
sends its figures and exits, so each variant still runs in a process of its own and its peak
RSS belongs to it. ``model_rss_bytes`` is the child's peak minus its RSS before the model loaded:
the libraries' imported state is in neither side's figure (a spawned process charged the
original with importing sentence-transformers); pages of library code that loading and running
the model touch are, alike for both sides. The server restores the user's OpenMP
wait policy before torch loads (``flowstone.threads``), as the spawned processes did, and never
runs a torch operation itself, so the children's thread pools start fresh.

What rounds do not fix: a busy machine slows the variants unequally (an OpenMP thread pool
waits for its preempted threads at every barrier; ONNX Runtime's pool and a small model suffer
differently), so a ratio measured at a load above the CPU count can be steady and wrong. The
record keeps the host and the load at the start, after each round and at the end, and its
summary names a load above the CPU count (``ProfileRecord.busy_note``).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import math
import multiprocessing
import os
import pickle
import resource
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from flowstone.baking.artifacts import Artifact
from flowstone.baking.config import BakeConfig, SpeedGate
from flowstone.baking.host import HostInfo, host_info, load_average
from flowstone.baking.quality import resolve_validation, validation_pairs
from flowstone.baking.records.bake import BakeRecord
from flowstone.baking.records.profile import (
    BatchRatios,
    BatchTiming,
    ProfileRecord,
    ProfileRound,
    VariantProfile,
)
from flowstone.baking.records.source import SourceRecord

WARMUP = 2
MIN_ITERATIONS = 3  # rounds repeat the measurement: a slow call needs only a few per process
MIN_SECONDS = 0.5  # per batch size and process
# The soak benchmark (bench/bench_bake_soak.py) measures recovery, not speed: it shortens the
# timing loops with this variable. Nothing else should.
MIN_SECONDS_ENV = "FLOWSTONE_PROFILE_MIN_SECONDS"


def min_seconds() -> float:
    """MIN_SECONDS, or the value of FLOWSTONE_PROFILE_MIN_SECONDS (seconds, > 0)."""
    raw = os.environ.get(MIN_SECONDS_ENV)
    if not raw:
        return MIN_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        from flowstone.errors import ConfigError

        raise ConfigError(f"environment variable {MIN_SECONDS_ENV}", raw, "not a number > 0")
    return value


MAX_ITERATIONS = 20_000  # a safety only: a fast model is timed for MIN_SECONDS like a slow one
SENTENCE_PAIRS = 64  # pairs of validation sentences an embedding model is timed on
SIDES = ("original", "baked")
# What load_encoder sets before sentence-transformers loads, read by huggingface_hub and
# transformers at import, which is in the server now. (TOKENIZERS_PARALLELISM, read when
# tokenising, load_encoder still sets in the child that loads the original, as before.)
_HF_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


class ProfileError(RuntimeError):
    """A variant could not be measured: the message holds its process's traceback."""


# --- the interval and the stop rule (pure: tested on synthetic rounds) -----------------------


@dataclass(frozen=True)
class RatioInterval:
    """The rounds' throughput ratios summarised: geometric mean ``ratio`` and the
    ``confidence`` interval [``low``, ``high``] (t-interval on the log ratios, exponentiated).
    With one round the interval is unbounded (``low`` 0, ``high`` infinity)."""

    ratio: float
    low: float
    high: float
    rounds: int
    confidence: float

    @property
    def relative_half_width(self) -> float:
        """Half the interval's width over the ratio: what ``SpeedGate.rel_ci`` bounds."""
        return (self.high - self.low) / 2 / self.ratio

    @property
    def bounded(self) -> bool:
        return math.isfinite(self.high)


def ratio_interval(ratios: Sequence[float], confidence: float) -> RatioInterval:
    """Geometric mean and ``confidence`` t-interval of ``ratios`` (positive, one a round).

    A ratio of throughputs is multiplicative (2x and 0.5x are equally far from 1x), so the
    interval is a Student t-interval on the mean of ``log(ratio)`` with ``n - 1`` degrees of
    freedom, back-transformed with ``exp``: asymmetric around the geometric mean, never below
    zero."""
    if not ratios:
        raise ValueError("no rounds to summarise")
    if any(not (r > 0 and math.isfinite(r)) for r in ratios):
        raise ValueError(f"throughput ratios must be positive and finite, got {list(ratios)}")
    logs = [math.log(r) for r in ratios]
    n = len(logs)
    mean = statistics.fmean(logs)
    if n < 2:
        return RatioInterval(math.exp(mean), 0.0, math.inf, n, confidence)
    from scipy.stats import t

    half = float(t.ppf((1 + confidence) / 2, n - 1)) * statistics.stdev(logs) / math.sqrt(n)
    return RatioInterval(math.exp(mean), math.exp(mean - half), math.exp(mean + half), n,
                         confidence)  # fmt: skip


def converged(ratios: Sequence[float], gate: SpeedGate) -> bool:
    """At least ``gate.min_rounds`` rounds and the interval within ``gate.rel_ci`` of the
    ratio."""
    if len(ratios) < max(2, gate.min_rounds):
        return False
    return ratio_interval(ratios, gate.confidence).relative_half_width <= gate.rel_ci


def should_stop(ratios: Sequence[float], gate: SpeedGate) -> bool:
    """Whether to run no more rounds: converged, or ``gate.max_rounds`` reached (then the
    profile is noisy unless it converged on the last round)."""
    return len(ratios) >= gate.max_rounds or converged(ratios, gate)


# --- one measurement, in a child of the measuring server ------------------------------------


def _inputs(task: str, batch: int, input_shape: list[int] | None, sentences: list[str]) -> Any:
    if task == "embedding":
        return [sentences[i % len(sentences)] for i in range(batch)]
    import numpy as np

    assert input_shape is not None  # the source step records it for classifiers
    return np.random.default_rng(0).standard_normal((batch, *input_shape)).astype(np.float32)


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(round(q * (len(sorted_values) - 1))))]


def _timing(batch: int, timings: list[float]) -> BatchTiming:
    ordered = sorted(timings)
    return BatchTiming(
        latency_p50_ms=statistics.median(ordered) * 1000,
        latency_p95_ms=_percentile(ordered, 0.95) * 1000,
        throughput_per_s=batch * len(ordered) / sum(ordered),
        iterations=len(ordered),
    )


def _reset_peak_rss() -> None:
    """Start this process's peak RSS afresh where Linux allows (a forked child's peak does
    not include its parent's on current kernels; this makes sure)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _measure(artifact_dict: dict[str, Any], batch_sizes: list[int], threads: int,
             input_shape: list[int] | None, sentences: list[str]) -> VariantProfile:  # fmt: skip
    """Runs in a fresh child process: load the variant, warm up and time every batch size."""
    from flowstone.threads import restore_user_policy

    restore_user_policy()  # measured as the user's environment runs it (the server did too)
    from flowstone.baking.artifacts import open_runner, set_threads

    artifact = Artifact.from_dict(artifact_dict)
    torch_threads = set_threads(threads)
    _reset_peak_rss()
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
        shortest = min_seconds()
        begin = time.perf_counter()
        while len(timings) < MAX_ITERATIONS and (
            len(timings) < MIN_ITERATIONS or time.perf_counter() - begin < shortest
        ):
            t0 = time.perf_counter()
            call()
            timings.append(time.perf_counter() - t0)
        per_batch[str(batch)] = _timing(batch, timings)
    peak = max(_peak_rss_bytes(), _rss_bytes())
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


# --- the measuring server: imports once, forks a fresh child per measurement ----------------


def preload_modules(artifacts: Iterable[Artifact]) -> list[str]:
    """The libraries the variants' runners import, for the server to import once."""
    modules = ["numpy", "psutil", "torch", "flowstone.baking.artifacts"]
    for artifact in artifacts:
        if artifact.format == "onnx":
            modules += ["onnxruntime"]
            if artifact.task == "embedding":
                modules += ["tokenizers", "flowstone.baking.onnx.runtime"]
        elif artifact.task == "embedding":  # a SentenceTransformer (folder or pickled)
            modules += ["sentence_transformers", "flowstone.encoder"]
    return list(dict.fromkeys(modules))


def _run_child(write_fd: int, job: tuple[Any, ...]) -> None:
    """In the forked child: measure, write the pickled outcome, exit without cleanup of the
    server's state (the child owns none of it)."""
    code = 0
    try:
        try:
            outcome: tuple[str, Any] = ("ok", _measure(*job))
        except BaseException:  # noqa: BLE001 - reported to the parent with the traceback
            outcome, code = ("error", traceback.format_exc()), 1
        with os.fdopen(write_fd, "wb") as out:
            out.write(pickle.dumps(outcome))
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _fork_one(job: tuple[Any, ...]) -> tuple[str, Any]:
    """In the server: one fresh child for ``job``; its pickled outcome, or why there is none."""
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns on fork with library threads alive
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _run_child(write_fd, job)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as result:
        data = result.read()
    _, status = os.waitpid(pid, 0)
    if data:
        return "result", data
    return "died", f"the measuring process ended without a result (wait status {status})"


def _serve(conn: Any, modules: list[str]) -> None:
    """The measuring server's main: import ``modules`` (no model), then one fresh child per
    job until told to stop."""
    from flowstone.threads import restore_user_policy

    restore_user_policy()  # before torch loads: the children inherit the loaded libraries
    for key, value in _HF_ENV.items():
        os.environ.setdefault(key, value)
    # Locks libraries make in a child (tqdm's) then need no resource tracker.
    multiprocessing.set_start_method("fork", force=True)
    started = time.perf_counter()
    try:
        for name in modules:
            importlib.import_module(name)
    except BaseException:  # noqa: BLE001 - reported to the parent
        conn.send(("error", traceback.format_exc()))
        return
    gc.collect()
    gc.freeze()  # the children's collections skip the imported objects (steadier timings)
    conn.send(("ready", time.perf_counter() - started))
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        conn.send(_fork_one(job))


class MeasuringServer:
    """A spawned process that imported the variants' libraries and forks a fresh child for
    each measurement (see the module docstring). Use as a context manager."""

    def __init__(self, modules: list[str]):
        context = multiprocessing.get_context("spawn")
        self._conn, theirs = context.Pipe()
        self._process = context.Process(target=_serve, args=(theirs, modules), daemon=True,
                                        name="flowstone-profile-server")  # fmt: skip
        self._process.start()
        theirs.close()
        self.import_seconds = 0.0
        kind, payload = self._receive()
        if kind != "ready":
            self.close()
            raise ProfileError(f"the measuring server could not import {modules}:\n{payload}")
        self.import_seconds = float(payload)

    def _receive(self) -> tuple[str, Any]:
        try:
            message: tuple[str, Any] = self._conn.recv()
        except EOFError:
            code = self._process.exitcode
            return "died", f"the measuring server exited (exit code {code})"
        return message

    def measure(self, artifact: Artifact, batch_sizes: list[int], threads: int,
                input_shape: list[int] | None, sentences: list[str]) -> VariantProfile:  # fmt: skip
        """``artifact`` measured in a fresh child process."""
        self._conn.send((artifact.as_dict(), batch_sizes, threads, input_shape, sentences))
        kind, payload = self._receive()
        if kind == "result":
            status, value = pickle.loads(payload)
            if status == "ok":
                return value
            payload = value
        raise ProfileError(f"measuring {artifact.format} {artifact.path} failed:\n{payload}")

    def close(self) -> None:
        """Stop the server: it exits on its own (so what it registered is released), else it
        is terminated."""
        with contextlib.suppress(OSError, ValueError):  # already closed: it is gone
            self._conn.send(None)
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5)
        self._conn.close()

    @property
    def alive(self) -> bool:
        return self._process.is_alive()

    def __enter__(self) -> MeasuringServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MeasuringServers:
    """Measuring servers kept for the models of one step, one per set of libraries.

    Why: a server costs a process and ``import torch`` (2-3 s), more than profiling a small
    model takes; a backfill of many models in one step pays it once per library set instead of
    once per model. Sharing changes nothing measured: every measurement is still a child forked
    from the server's clean imported state, and the server never runs a model itself. A server
    that died is replaced. Use as a context manager."""

    def __init__(self) -> None:
        self._servers: dict[tuple[str, ...], MeasuringServer] = {}

    def get(self, modules: list[str]) -> MeasuringServer:
        key = tuple(modules)
        server = self._servers.get(key)
        if server is None or not server.alive:
            if server is not None:
                server.close()
            server = self._servers[key] = MeasuringServer(modules)
        return server

    def close(self) -> None:
        servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            server.close()

    def __enter__(self) -> MeasuringServers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the profile ------------------------------------------------------------------------------


def profiling_sentences(record: SourceRecord, config: BakeConfig) -> list[str]:
    """What an embedding model is timed on: the first validation pairs' sentences (none for a
    classifier, which is timed on random inputs of its input shape)."""
    if config.task != "embedding":
        return []
    pairs = validation_pairs(record, resolve_validation(record, config.validation))
    return [s for pair in pairs[:SENTENCE_PAIRS] for s in pair]


def combined(per_round: Sequence[VariantProfile], batch_sizes: Sequence[int]) -> VariantProfile:
    """One variant over its rounds, each round weighing the same: per batch size the median of
    the rounds' p50, p95 and throughput (``iterations``: all timed calls); the largest peak and
    model RSS of its processes; the median load time."""
    first = per_round[0]
    per_batch = {}
    for batch in map(str, batch_sizes):
        timings = [p.per_batch[batch] for p in per_round]
        per_batch[batch] = BatchTiming(
            latency_p50_ms=statistics.median(t.latency_p50_ms for t in timings),
            latency_p95_ms=statistics.median(t.latency_p95_ms for t in timings),
            throughput_per_s=statistics.median(t.throughput_per_s for t in timings),
            iterations=sum(t.iterations for t in timings),
        )
    return VariantProfile(
        per_batch=per_batch,
        peak_rss_bytes=max(p.peak_rss_bytes for p in per_round),
        model_rss_bytes=max(p.model_rss_bytes for p in per_round),
        load_seconds=statistics.median(p.load_seconds for p in per_round),
        torch_threads=first.torch_threads,
        threads=first.threads,
        size_bytes=first.size_bytes,
        format=first.format,
    )


def _geometric_mean(values: Iterable[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def profile_round(index: int, first: str, original: VariantProfile, baked: VariantProfile,
                  load: float | None = None) -> ProfileRound:  # fmt: skip
    """Round ``index`` (from 1) of both variants' figures: its ratio at the largest batch."""
    largest = str(max(int(b) for b in original.per_batch))
    o = original.per_batch[largest].throughput_per_s
    b = baked.per_batch[largest].throughput_per_s
    return ProfileRound(index=index, first=first, ratio=b / o, original_throughput_per_s=o,
                        baked_throughput_per_s=b, original=dict(original.per_batch),
                        baked=dict(baked.per_batch), load_average=load)  # fmt: skip


def profile_record(rounds: Sequence[ProfileRound], original: Sequence[VariantProfile],
                   baked: Sequence[VariantProfile], gate: SpeedGate,
                   host: HostInfo) -> ProfileRecord:  # fmt: skip
    """The record of a finished profile: ``rounds`` and each round's figures of both variants
    (same order). Headline ratio and interval come from the rounds' ratios; the profile is
    noisy (no headline) unless they converged under ``gate``. Per batch size the ratios are
    geometric means over rounds of the round's own ratios (paired: both sides of a round saw
    the same machine), shown even for a noisy profile."""
    batch_sizes = [int(b) for b in original[0].per_batch]  # in the config's order
    ratios = [r.ratio for r in rounds]
    interval = ratio_interval(ratios, gate.confidence)
    noisy = not converged(ratios, gate)
    o_all, b_all = combined(original, batch_sizes), combined(baked, batch_sizes)
    per_batch: dict[str, BatchRatios] = {}
    for batch in map(str, batch_sizes):
        pairs = [(r.original[batch], r.baked[batch]) for r in rounds]
        per_batch[batch] = BatchRatios(
            speedup_p50=_geometric_mean(o.latency_p50_ms / b.latency_p50_ms for o, b in pairs),
            speedup_p95=_geometric_mean(o.latency_p95_ms / b.latency_p95_ms for o, b in pairs),
            throughput_ratio=_geometric_mean(
                b.throughput_per_s / o.throughput_per_s for o, b in pairs
            ),
        )
    return ProfileRecord(
        threads=host.threads,
        # Speed ratios are only as good as a quiet machine: record how busy it was.
        load_average=host.load_average_end if host.load_average_end is not None else 0.0,
        batch_sizes=batch_sizes,
        original=o_all,
        baked=b_all,
        ratios=per_batch,
        throughput_ratio=None if noisy else interval.ratio,
        size_ratio=b_all.size_bytes / o_all.size_bytes,
        peak_rss_ratio=b_all.peak_rss_bytes / o_all.peak_rss_bytes,
        model_rss_ratio=b_all.model_rss_bytes / o_all.model_rss_bytes
        if o_all.model_rss_bytes
        else None,
        host=host,
        rounds=list(rounds),
        ratio_ci_low=interval.low if interval.bounded else None,
        ratio_ci_high=interval.high if interval.bounded else None,
        confidence=gate.confidence,
        noisy=noisy,
    )


def profile_variants(
    record: SourceRecord,
    baked: BakeRecord,
    config: BakeConfig,
    sentences: list[str],
    *,
    log: Callable[[str], None] | None = None,
    servers: MeasuringServers | None = None,
) -> ProfileRecord:
    """Figures for the original and the baked variant and their ratios, measured in rounds
    under ``config.speed`` (see the module docstring); ``log`` gets a line per round.
    ``servers``: measuring servers shared with other models of the step (else one of its own)."""
    say = log or (lambda _line: None)
    gate = config.speed
    threads = int(config.threads or os.cpu_count() or 1)
    batch_sizes = list(config.batch_sizes)
    largest = str(max(batch_sizes))
    shape = record.input_shape
    artifacts = {"original": record.original, "baked": baked.artifact}
    host = host_info(threads)
    measured: dict[str, list[VariantProfile]] = {side: [] for side in SIDES}
    rounds: list[ProfileRound] = []
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if servers is None:
            servers = stack.enter_context(MeasuringServers())
        server = servers.get(preload_modules(artifacts.values()))
        say(f"profile: {host.describe()}; measuring server ready (its imports took "
            f"{server.import_seconds:.1f}s)")  # fmt: skip
        while True:
            index = len(rounds) + 1
            order = SIDES if index % 2 else SIDES[::-1]  # alternate which goes first
            round_started = time.perf_counter()
            for side in order:
                measured[side].append(
                    server.measure(artifacts[side], batch_sizes, threads, shape, sentences)
                )
            done = profile_round(index, order[0], measured["original"][-1],
                                 measured["baked"][-1], load_average())  # fmt: skip
            rounds.append(done)
            ratios = [r.ratio for r in rounds]
            interval = ratio_interval(ratios, gate.confidence)
            width = (f"CI {interval.low:.2f}-{interval.high:.2f}, "
                     f"+-{interval.relative_half_width:.1%} (asked {gate.rel_ci:.0%})"
                     if interval.bounded else "no interval yet")  # fmt: skip
            say(f"round {index}/{gate.max_rounds} ({order[0]} first, "
                f"{time.perf_counter() - round_started:.1f}s): batch {largest} original "
                f"{done.original_throughput_per_s:.1f}/s, baked "
                f"{done.baked_throughput_per_s:.1f}/s, ratio {done.ratio:.3f}; {width}")  # fmt: skip
            if should_stop(ratios, gate):
                break
    profile = profile_record(rounds, measured["original"], measured["baked"], gate, host.ended())
    say(f"profile: {len(rounds)} rounds in {time.perf_counter() - started:.1f}s: "
        f"{profile.summary()}")  # fmt: skip
    return profile
