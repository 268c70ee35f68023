"""``recipe: auto``: measure the candidate recipes on this host, keep the fastest that passes.

Why: the shipped recipe (``flowstone.baking.onnx.recipe.recommended_recipe``) was chosen on a
CPU with AVX512-VNNI; another host ranks the recipes differently (without VNNI,
``reduce_range=False`` can saturate; fusions, per-tensor scales and fp32 layers pay off
unevenly). So, like accuracy-driven tuning in Intel Neural Compressor, the search walks the
candidates (``candidate_recipes``) most promising first, measures each one's fidelity on the
bake's validation pairs against the bake's quality gate, times those that pass against each
other, and keeps the fastest that passes. fp32 ONNX is the fallback that always holds fidelity.
It stops adding candidates when ``search_budget_s`` would be exceeded (counted after the
shared export, which is the bake's own first pass: the original's reference embeddings, the
candidates and the timing rounds are the search's cost).

* Quality: ``fidelity_report`` of the candidate against the original over the bake's
  validation pairs (``quality.validation_pairs``: the configured file or the shipped held-out
  pairs), gated like ``quality.measure_quality`` (``quality_metric`` / ``quality_threshold``).
  A metric the search cannot measure (``spearman_gold_drop`` needs the gold STS set, which
  must never choose a recipe) falls back to ``spearman_rho >= 0.99``, and the record says so.
  The gold set itself is refused as validation data here.
* Speed: texts/s of ``encode(batch_size=32)`` end to end (tokenise, run, pool) on up to 128
  validation sentences spread over all lengths; the candidates that pass (the first of them
  and the fastest others by one paired reading against it, ``MAX_TIMED`` in all) run once per
  round, in a new shuffled order each round, with the profile step's thread count, in this
  process; ranked by their best round (see :func:`pick`), median and spread recorded. The
  figures only rank the candidates; the profile step then measures the winner against the
  original in fresh processes.
* Cache: ``<bake workspace>/.recipe_cache/<key>.json``; the key covers the model's sha256, the
  candidate set (version and content), the gate and the validation pairs, the CPU flags, the
  thread count and the onnxruntime version. A rebake on the same host reads it and measures
  nothing.

The candidates share their first step (the ONNX export): the search builds it once, through
the pipeline's checkpoints when ``build_base`` is given, so the bake then resumes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flowstone.atomic import write_text
from flowstone.baking.artifacts import Artifact, open_runner
from flowstone.baking.config import LOWER_IS_BETTER, RECIPE_STEPS, BakeConfig, PassSpec
from flowstone.baking.errors import BakeError
from flowstone.baking.fidelity import DATA_DIR, fidelity_report
from flowstone.baking.onnx import recipe as recipes
from flowstone.baking.passes import PASSES
from flowstone.baking.quality import resolve_validation, validation_pairs
from flowstone.baking.recipe_gate import ExtraGate
from flowstone.baking.records.bake import CandidateResult, RecipeRecord
from flowstone.baking.records.source import SourceRecord
from flowstone.baking.sources import SAMPLE_SENTENCES

STAGE = "baked_model"
CACHE_DIR = ".recipe_cache"
#: The gold STS pairs (another engineer's, for the task gate): never read here, never the
#: validation data of a search.
GOLD_PAIRS = DATA_DIR / "sts_gold_pairs.jsonl"
#: Gate metrics the search can measure (``fidelity_report`` figures); others fall back.
SEARCH_METRICS = ("spearman_rho", "cosine_mean", "cosine_min")
FALLBACK_GATE = ("spearman_rho", 0.99)
BATCH = 32
TIMING_SENTENCES = 128
MIN_ROUNDS = 3
MAX_ROUNDS = 7
# Candidates timed against each other (the fastest in the quality pass): each open ONNX
# Runtime session holds ~140 MB at batch 32 on MiniLM, and they are all open at once.
MAX_TIMED = 4
PAUSE_S = 0.02  # before each timed call: the previous session's spinning threads go idle
# A candidate must be more than this much faster (best round, texts/s) to win over one
# listed before it: a few rounds on a shared 2-core host do not resolve finer differences,
# and the earlier candidates are the better-founded ones (fidelity, the bench's curve).
TIE_MARGIN = 0.05
#: The CPU flags that decide int8 kernels (VNNI: u8s8 without saturation; AMX: tiles).
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})

Log = Callable[[str], None]
BuildBase = Callable[[Sequence[PassSpec]], Artifact]


@dataclass(frozen=True)
class Gate:
    """The threshold the search holds each candidate to."""

    metric: str
    threshold: float
    lower_is_better: bool
    note: str = ""

    def passes(self, value: float) -> bool:
        return bool(value <= self.threshold if self.lower_is_better else value >= self.threshold)

    def describe(self) -> str:
        return f"{self.metric} {'<=' if self.lower_is_better else '>='} {self.threshold:g}"

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "threshold": self.threshold,
                "lower_is_better": self.lower_is_better, "note": self.note}  # fmt: skip


def search_gate(config: BakeConfig) -> Gate:
    """The bake's quality gate when the search can measure its metric, else rho >= 0.99."""
    if config.quality_metric in SEARCH_METRICS:
        return Gate(config.quality_metric, config.quality_threshold,
                    config.quality_metric in LOWER_IS_BETTER)  # fmt: skip
    metric, threshold = FALLBACK_GATE
    return Gate(metric, threshold, False,
                f"the bake's metric {config.quality_metric} cannot be measured during the recipe "
                f"search (it needs data that must not choose a recipe); the search gated on "
                f"{metric} >= {threshold} instead, and bake_quality checks "
                f"{config.quality_metric} on the chosen recipe")  # fmt: skip


# --------------------------------------------------------------------------- host and cache


def _cpu_flags() -> list[str] | None:
    """The int8-relevant flags of this CPU (``flowstone.baking.host``, the same reading the
    profile records); None when unknown."""
    from flowstone.baking.host import host_info

    info = host_info()
    return list(info.flags) if info.flags_known else None


def _cpu_flags_key(flags: list[str] | None = None) -> str:
    """The host part of the cache key: the profile's ``HostInfo.flags_key`` spelling."""
    if flags is None:
        from flowstone.baking.host import host_info

        return host_info().flags_key()
    return "+".join(flags) or "baseline"


def candidate_set_id(candidates: Sequence[dict[str, Any]]) -> str:
    """The candidate set's version and a hash of its content."""
    blob = json.dumps(list(candidates), sort_keys=True, default=str)
    return f"v{recipes.CANDIDATES_VERSION}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def cache_key(*, model_sha256: str, candidate_set: str, gate: Gate, validation_digest: str,
              flags_key: str, threads: int, runtime: str) -> str:  # fmt: skip
    """What a search's result depends on; any change is another cache entry."""
    blob = json.dumps(
        {"model": model_sha256, "candidates": candidate_set, "gate": gate.as_dict(),
         "validation": validation_digest, "flags": flags_key, "threads": threads,
         "runtime": runtime},
        sort_keys=True,
    )  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _runtime_version() -> str:
    from importlib import metadata

    try:
        return f"onnxruntime {metadata.version('onnxruntime')}"
    except metadata.PackageNotFoundError:  # pragma: no cover - a dependency of the bake line
        return "onnxruntime ?"


def _read_cache(path: Path, say: Log) -> RecipeRecord | None:
    if not path.is_file():
        return None
    try:
        return RecipeRecord.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        say(f"recipe cache {path} is unreadable ({exc}); searching again")
        return None


# --------------------------------------------------------------------------- candidates


def pass_steps(candidate: dict[str, Any]) -> list[dict[str, Any]]:
    """A candidate's steps as pass specs ``{"name": pass, **options}`` (the bake config's
    ``passes`` shape)."""
    return [{"name": RECIPE_STEPS[step["step"]], **step["options"]} for step in candidate["steps"]]


def pass_specs(steps: Sequence[dict[str, Any]]) -> tuple[PassSpec, ...]:
    return tuple(
        PassSpec(step["name"], {k: v for k, v in step.items() if k != "name"}) for step in steps
    )


def plan_candidates(
    candidates: Sequence[dict[str, Any]], flags: list[str] | None
) -> list[tuple[dict[str, Any], str | None]]:
    """Each candidate with the reason it is skipped on a host with ``flags`` (None: kept).
    Without AVX512-VNNI/AVX-VNNI (or when the flags are unknown) a recipe that needs VNNI is
    skipped, not demoted: its fidelity on the validation pairs would not show where it
    saturates."""
    vnni = bool(flags and VNNI_FLAGS & set(flags))
    return [
        (
            candidate,
            None
            if vnni or not recipes.needs_vnni(candidate)
            else "needs AVX512-VNNI or AVX-VNNI (reduce_range=False saturates without)",
        )
        for candidate in candidates
    ]


def pick(results: Sequence[CandidateResult]) -> CandidateResult | None:
    """The fastest timed candidate that passed, or None.

    Fastest by its best round (``throughput_max``): other work on the host only ever slows a
    run down, so the least disturbed round is the best estimate of a recipe's own speed (the
    rule ``timeit`` follows); on a shared 2-core host the medians mostly said which candidate
    a burst of load happened to hit. ``results`` are in the candidates' order (expected
    merit): one within ``TIE_MARGIN`` of the fastest is as fast as the host can tell, and the
    first such one wins."""
    timed = [r for r in results if r.passed and r.throughput_max is not None]
    if not timed:
        return None
    fastest = max(r.throughput_max or 0.0 for r in timed)
    return next(r for r in timed if (r.throughput_max or 0.0) * (1 + TIE_MARGIN) >= fastest)


def _timing_subset(sentences: Sequence[str], count: int = TIMING_SENTENCES) -> list[str]:
    """``count`` sentences evenly spread over the length order (short and long ones alike)."""
    by_length = sorted(sentences, key=lambda s: (len(s), s))
    if len(by_length) <= count:
        return by_length
    step = (len(by_length) - 1) / (count - 1)
    return [by_length[round(i * step)] for i in range(count)]


def _refuse_gold(record: SourceRecord, path: Path | None) -> None:
    """The gold STS set must never influence a recipe choice."""
    if path is None:
        return
    same = path.name == GOLD_PAIRS.name
    with contextlib.suppress(OSError):
        same = same or (GOLD_PAIRS.exists() and path.samefile(GOLD_PAIRS))
    if same:
        raise BakeError(
            record.model, STAGE, f"validation data {path} is the gold STS set, which must never "
            "choose a recipe; point 'validation' at held-out pairs, or set 'recipe: recommended'"
        )  # fmt: skip


class _Builder:
    """Builds candidates, sharing every step prefix already built (the export, the fused
    graph) between them."""

    def __init__(self, record: SourceRecord, scratch: Path, build_base: BuildBase | None):
        self.record, self.scratch, self.build_base = record, scratch, build_base
        self.built: dict[str, Artifact] = {}
        self.base_s = 0.0

    @staticmethod
    def _key(specs: Sequence[PassSpec]) -> str:
        blob = json.dumps([spec.as_dict() for spec in specs], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def base(self, spec: PassSpec) -> Artifact:
        """The shared first step; its failure stops the search (no candidate can be built)."""
        key = self._key([spec])
        if key not in self.built:
            started = time.perf_counter()
            if self.build_base is not None:
                self.built[key] = self.build_base([spec])
            else:
                self.built[key] = self._run(self.record.original, spec, key)
            self.base_s += time.perf_counter() - started
        return self.built[key]

    def build(self, specs: Sequence[PassSpec]) -> Artifact:
        artifact = self.base(specs[0])
        for index in range(1, len(specs)):
            key = self._key(specs[: index + 1])
            if key not in self.built:
                self.built[key] = self._run(artifact, specs[index], key)
            artifact = self.built[key]
        return artifact

    def _run(self, artifact: Artifact, spec: PassSpec, key: str) -> Artifact:
        out = self.scratch / key
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        return PASSES[spec.name](artifact, dict(spec.options), out, SAMPLE_SENTENCES)


# --------------------------------------------------------------------------- the search


def choose_recipe(
    record: SourceRecord,
    config: BakeConfig,
    *,
    workspace: Path | None = None,
    log: Log | None = None,
    candidates: Sequence[dict[str, Any]] | None = None,
    build_base: BuildBase | None = None,
    extra_gate: ExtraGate | None = None,
) -> RecipeRecord:
    """The recipe for ``record`` on this host: from the search cache, or searched now.

    ``workspace``: the bake workspace holding ``.recipe_cache`` (default: the record's);
    ``candidates``: the recipes to consider (default ``recipe.candidate_recipes()``);
    ``build_base``: builds the candidates' shared first step as a checkpoint of the bake
    (``pipeline.run_pass_chain``), else the search builds it in its scratch folder.
    ``extra_gate``: a further gate a candidate must pass once its fidelity passes (the task
    suites: ``recipe_gate``); part of the cache key.
    Raises BakeError when no candidate passes the gate, not even the fp32 fallback.
    """
    say: Log = log or (lambda _message: None)
    workspace = workspace or record.workdir.parent.parent
    path = resolve_validation(record, config.validation)
    _refuse_gold(record, path)
    pairs = validation_pairs(record, path)
    candidates = list(recipes.candidate_recipes() if candidates is None else candidates)
    if not candidates:
        raise BakeError(record.model, STAGE, "recipe search: no candidate recipes")
    gate = search_gate(config)
    threads = int(config.threads or os.cpu_count() or 1)
    flags = _cpu_flags()
    key = cache_key(
        model_sha256=record.sha256,
        candidate_set=candidate_set_id(candidates),
        gate=gate,
        validation_digest=hashlib.sha256(
            json.dumps([pairs, extra_gate.identity if extra_gate else None]).encode()
        ).hexdigest(),
        flags_key=_cpu_flags_key(flags),
        threads=threads,
        runtime=_runtime_version(),
    )
    cache_file = workspace / CACHE_DIR / f"{key}.json"
    cached = _read_cache(cache_file, say)
    if cached is not None:
        say(f"recipe from cache: {cached.name} ({cache_file.name}, searched "
            f"{cached.searched_at})")  # fmt: skip
        return cached.cached_copy()
    chosen = _search(record, config, pairs, candidates, gate, threads, flags, key, say,
                     build_base, extra_gate)  # fmt: skip
    write_text(cache_file, json.dumps(chosen.to_dict(), indent=2, sort_keys=True))
    return chosen


def _search(record: SourceRecord, config: BakeConfig, pairs: list[tuple[str, str]],
            candidates: list[dict[str, Any]], gate: Gate, threads: int,
            flags: list[str] | None, key: str, say: Log,
            build_base: BuildBase | None,
            extra_gate: ExtraGate | None = None) -> RecipeRecord:  # fmt: skip
    started = time.perf_counter()
    budget = float(config.search_budget_s)
    deadline = started + budget  # from the shared first step on (below)
    plan = plan_candidates(candidates, flags)
    if len({json.dumps(pass_steps(c)[0], sort_keys=True) for c in candidates}) != 1:
        raise ValueError("recipe search: the candidates must share their first step (export)")
    eligible = sum(1 for _, skip in plan if skip is None)
    say(f"recipe search: {eligible} of {len(plan)} candidates on this host "
        f"({_cpu_flags_key(flags)}), gate {gate.describe()}, budget {budget:.0f} s, "
        f"{threads} threads")  # fmt: skip
    if gate.note:
        say(gate.note)
    sentences = sorted({s for pair in pairs for s in pair})
    index = {s: i for i, s in enumerate(sentences)}
    pair_rows = [(index[a], index[b]) for a, b in pairs]
    subset = _timing_subset(sentences)
    scratch = record.workdir / ".recipe_search"
    shutil.rmtree(scratch, ignore_errors=True)
    builder = _Builder(record, scratch, build_base)
    results: dict[str, CandidateResult] = {}
    artifacts: dict[str, Artifact] = {}
    quality_tps: dict[str, float] = {}  # texts/s in the quality pass: the timing reserve
    anchor: dict[str, Any] = {}  # the first candidate to pass: its open runner
    screen: dict[str, float] = {}  # speed relative to the anchor, paired: who gets timed
    fallback = next((c for c in candidates if c.get("fallback")), None)
    reference_s = timing_s = 0.0
    rounds = 0
    load: list[float] = []
    try:
        builder.base(pass_specs(pass_steps(candidates[0]))[0])
        # The export is the bake's own first pass (a checkpoint the bake resumes), not search
        # work: the budget counts from here.
        deadline = time.perf_counter() + budget
        say(f"recipe search: shared first step ready in {builder.base_s:.1f} s")
        t0 = time.perf_counter()
        reference = open_runner(record.original, threads=threads).run(sentences, batch_size=BATCH)
        reference_s = time.perf_counter() - t0
        say(f"recipe search: original encoded {len(sentences)} validation sentences in "
            f"{reference_s:.1f} s")  # fmt: skip

        def measure(candidate: dict[str, Any], position: int) -> None:
            name, steps = candidate["name"], pass_steps(candidate)
            t0 = time.perf_counter()
            try:
                artifact = builder.build(pass_specs(steps))
                runner = open_runner(artifact, threads=threads)
                t1 = time.perf_counter()
                embeddings = runner.run(sentences, batch_size=BATCH)
                quality_tps[name] = len(sentences) / max(time.perf_counter() - t1, 1e-9)
                report = fidelity_report(reference, embeddings, pair_rows)
                value = float(getattr(report, gate.metric))
                passed = gate.passes(value)
                extra_note = ""
                if passed and extra_gate is not None:
                    passed, extra_note = extra_gate.check(artifact)
                if passed:  # paired with the first to pass (itself, if it is the first)
                    screen[name] = _paired_ratio(runner, next(iter(anchor.values()), runner),
                                                 subset)  # fmt: skip
                    anchor.setdefault(name, runner)
                del runner
            except Exception as exc:  # one candidate's failure is a figure, not the bake's
                results[name] = CandidateResult(
                    name, steps, "error", seconds=round(time.perf_counter() - t0, 2),
                    note=f"{type(exc).__name__}: {exc}"[:500],
                )  # fmt: skip
                say(f"recipe search [{position}/{eligible}] {name}: error: {exc}")
                return
            figures = {
                "spearman_rho": report.spearman_rho,
                "cosine_mean": report.cosine_mean,
                "cosine_min": report.cosine_min,
                "max_abs_similarity_diff": report.pair_similarity_max_abs_change,
            }
            results[name] = CandidateResult(
                name, steps, "passed" if passed else "failed", metric_value=value,
                figures=figures, seconds=round(time.perf_counter() - t0, 2),
                size_bytes=artifact.size_bytes(), screen_ratio=screen.get(name),
                note="" if passed else (extra_note or f"fails {gate.describe()}"),
            )  # fmt: skip
            artifacts[name] = artifact
            say(f"recipe search [{position}/{eligible}] {name}: {gate.metric} {value:.5f} "
                f"{'passes' if passed else 'fails'} {gate.describe()}"
                + (f"; {extra_note}" if extra_note else "") + " "
                f"({results[name].seconds:.1f} s; {quality_tps[name]:.0f} texts/s while "
                f"measuring" + (f", {screen[name]:.2f}x the first to pass" if passed else "")
                + ")")  # fmt: skip

        position = 0
        for candidate, skip in plan:
            name = candidate["name"]
            if skip is not None:
                results[name] = CandidateResult(name, pass_steps(candidate), "skipped", note=skip)
                continue
            position += 1
            if position > 1 and not _fits(results, quality_tps, len(subset), deadline):
                results[name] = CandidateResult(name, pass_steps(candidate), "skipped",
                                                note="time budget")  # fmt: skip
                say(f"recipe search [{position}/{eligible}] {name}: skipped (time budget)")
                continue
            measure(candidate, position)
        nothing = not any(r.passed for r in results.values())
        if nothing and fallback is not None and results[fallback["name"]].status == "skipped":
            say(f"recipe search: nothing passed; measuring the fallback {fallback['name']} "
                "beyond the budget")  # fmt: skip
            measure(fallback, position)
        passed = [r for r in results.values() if r.passed]
        if not passed:
            raise BakeError(record.model, STAGE, _nothing_passed(gate, list(results.values()),
                                                                 fallback))  # fmt: skip
        anchor.clear()  # its session closes; the timing opens its own
        load_before = os.getloadavg()[0]
        timed, timing_s, rounds = _time_rounds(passed, artifacts, screen, subset, threads,
                                               deadline, say)  # fmt: skip
        results.update(timed)
        # the speed figures are only as good as a quiet machine: record how busy it was
        load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ordered = [results[c["name"]] for c in candidates]
    best = pick(ordered)
    assert best is not None  # at least one candidate passed and every timed one has a median
    used = time.perf_counter() - (deadline - budget)  # what counts against the budget
    is_fallback = bool(fallback and best.name == fallback["name"]) and not any(
        r.passed for r in ordered if r.name != best.name
    )
    say(f"recipe search chose {best.name}: {best.throughput_max:.0f} texts/s best round "
        f"({gate.metric} {best.metric_value:.5f}); {used:.0f} s of the {budget:.0f} s budget"
        + (" (fallback: no other candidate passed)" if is_fallback else ""))  # fmt: skip
    return RecipeRecord(
        name=best.name,
        steps=best.steps,
        candidates=ordered,
        gate=gate.as_dict(),
        host_flags=list(flags or []),
        flags_key=_cpu_flags_key(flags),
        threads=threads,
        budget_s=budget,
        used_s=round(used, 1),
        timing={
            "sentences": len(subset),
            "batch_size": BATCH,
            "rounds": rounds,
            "base_s": round(builder.base_s, 1),
            "reference_s": round(reference_s, 1),
            "timing_s": round(timing_s, 1),
            "validation_pairs": len(pairs),
            "total_s": round(time.perf_counter() - started, 1),
            "load_average": load,
        },  # fmt: skip
        cache_key=key,
        candidate_set=candidate_set_id(candidates),
        searched_at=datetime.now(UTC).isoformat(timespec="seconds"),
        fallback=is_fallback,
    )


def _fits(results: dict[str, CandidateResult], quality_tps: dict[str, float], timing_texts: int,
          deadline: float) -> bool:  # fmt: skip
    """Whether one more candidate fits before the deadline: its expected cost (the mean of
    those measured so far) plus the timing rounds of every passing candidate and its own."""
    measured = [r.seconds for r in results.values() if r.status != "skipped"]
    expected = statistics.mean(measured) if measured else 0.0
    passing = [quality_tps[r.name] for r in results.values() if r.passed and r.name in quality_tps]
    slowest = min(passing, default=max(quality_tps.values(), default=100.0))
    timed = sorted(passing, reverse=True)[: MAX_TIMED - 1] + [slowest]
    per_round = sum(timing_texts / tps + PAUSE_S for tps in timed)
    # x1.5: sessions side by side ran slower than one alone on a loaded host; + reopening them
    reserve = 1.5 * (MIN_ROUNDS + 0.5) * per_round + 2.0
    return time.perf_counter() + expected + reserve <= deadline


def _paired_ratio(runner: Any, anchor: Any, subset: list[str]) -> float:
    """How much faster ``runner`` is than ``anchor`` on ``subset``, one paired reading (the
    two run back to back, so they see the same machine load): anchor time / runner time, the
    runner's better of two runs around the anchor's. It only screens who gets timed."""

    def run(which: Any) -> float:
        time.sleep(PAUSE_S)
        t0 = time.perf_counter()
        which.run(subset, batch_size=BATCH)
        return time.perf_counter() - t0

    if runner is anchor:
        return 1.0
    first, anchor_s, second = run(runner), run(anchor), run(runner)
    return anchor_s / max(min(first, second), 1e-9)


def _time_rounds(passed: list[CandidateResult], artifacts: dict[str, Artifact],
                 screen: dict[str, float], subset: list[str], threads: int,
                 deadline: float, say: Log) -> tuple[dict[str, CandidateResult], float, int]:  # fmt: skip
    """Interleaved rounds over the passing candidates (at most ``MAX_TIMED``: the first to
    pass and the fastest others by their paired screen reading): each round runs every one
    once on ``subset``, in a new shuffled order. At least ``MIN_ROUNDS``; more, up to
    ``MAX_ROUNDS``, while the budget lasts."""
    started = time.perf_counter()
    # the first to pass (the screen's anchor, listed earliest) is always timed: the others
    # have to beat it
    ranked = passed[:1] + sorted(passed[1:], key=lambda r: -screen.get(r.name, 0.0))
    out: dict[str, CandidateResult] = {}
    for result in ranked[MAX_TIMED:]:
        out[result.name] = replace(result, note=f"not timed: slower than the {MAX_TIMED} fastest "
                                   f"in the screen ({screen.get(result.name, 0.0):.2f}x the first "
                                   "to pass)")  # fmt: skip
    runners = {r.name: open_runner(artifacts[r.name], threads=threads) for r in ranked[:MAX_TIMED]}
    for runner in runners.values():
        runner.run(subset[:BATCH], batch_size=BATCH)  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    rng = random.Random(0)
    rounds = 0
    while rounds < MAX_ROUNDS and (rounds < MIN_ROUNDS or time.perf_counter() < deadline):
        order = list(runners)
        rng.shuffle(order)
        for name in order:
            time.sleep(PAUSE_S)
            t0 = time.perf_counter()
            runners[name].run(subset, batch_size=BATCH)
            seconds[name].append(time.perf_counter() - t0)
        rounds += 1
    for result in ranked[:MAX_TIMED]:
        speeds = [len(subset) / s for s in seconds[result.name]]
        median = statistics.median(speeds)
        out[result.name] = replace(
            result, throughput_median=round(median, 1), throughput_min=round(min(speeds), 1),
            throughput_max=round(max(speeds), 1), spread=round((max(speeds) - min(speeds)) / median, 3),
            rounds=rounds,
        )  # fmt: skip
        say(f"recipe search timing: {result.name} {median:.0f} texts/s median, best round "
            f"{max(speeds):.0f}, worst {min(speeds):.0f} ({rounds} rounds)")  # fmt: skip
    return out, time.perf_counter() - started, rounds


def _nothing_passed(
    gate: Gate, results: list[CandidateResult], fallback: dict[str, Any] | None
) -> str:
    measured = [r for r in results if r.metric_value is not None]
    best = (min if gate.lower_is_better else max)(
        measured, key=lambda r: r.metric_value or 0.0, default=None
    )
    closest = f"; closest: {best.name} at {best.metric_value:.5f}" if best else ""
    errors = [f"{r.name}: {r.note}" for r in results if r.status == "error"]
    even = f", not even the fp32 fallback {fallback['name']}" if fallback else ""
    return (
        f"recipe search: no candidate recipe passes {gate.describe()} on the validation "
        f"pairs{even}{closest}{'; errors: ' + '; '.join(errors) if errors else ''}. No recipe "
        "reaches that threshold: lower it, or list the passes explicitly"
    )
