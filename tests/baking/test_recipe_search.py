"""``recipe: auto``: the search on the real packaged MiniLM (a small validation set and two
candidates, so it takes seconds), its cache, its gate and its refusal of the gold set; the
choice rules, the cache key and the records without a model."""

import builtins
import io
import json
import pathlib
from pathlib import Path

import pytest

from flowstone.baking import pipeline, recipe_search
from flowstone.baking.artifacts import Artifact
from flowstone.baking.config import parse_config
from flowstone.baking.errors import BakeError
from flowstone.baking.fidelity import load_fidelity_pairs
from flowstone.baking.onnx import recipe
from flowstone.baking.records.bake import BakeRecord, CandidateResult, RecipeRecord
from flowstone.baking.records.manifest import Manifest
from flowstone.baking.records.source import SourceRecord

STORED = json.loads((Path(__file__).parent / "data" / "stored_records.json").read_text())
# works on any host (reduce_range=True needs no VNNI), and the fallback
SMALL = ("ort-dyn-per-channel-reduce-range", "ort-fp32")


def candidates(*names: str) -> list[dict]:
    by_name = {c["name"]: c for c in recipe.candidate_recipes()}
    return [by_name[name] for name in names]


def make_record(root: Path, validation: Path | None, **config) -> SourceRecord:
    """The packaged MiniLM as a source record (no copy of the folder: the search only reads
    it). Every record shares one workdir, so the export checkpoint is built once."""
    from flowstone.encoder import model_path

    folder = model_path()
    raw = {"validation": str(validation) if validation else None, **config}
    parsed = parse_config(raw, task="embedding", source="test")
    return SourceRecord(
        model="minilm", version="v1", kind="sentence_transformers", task="embedding",
        sha256="test-minilm", size_bytes=90_000_000, parameters=22_713_216, load_seconds=0.0,
        forward_ms=0.0, output_shape=[2, 384], input_shape=None, source_path=str(folder),
        workdir=root / "ws" / "minilm" / "v1", config=parsed.as_dict(),
        original=Artifact("sentence_transformers", folder, "embedding", folder),
    )  # fmt: skip


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("recipe")


@pytest.fixture(scope="module")
def small_pairs(root: Path) -> Path:
    """40 of the shipped held-out pairs, spread over the kinds: a quick but real gate."""
    texts, pairs = load_fidelity_pairs()
    chosen = pairs[:: len(pairs) // 40][:40]
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps({"a": texts[a], "b": texts[b]}) + "\n"
                            for a, b, _ in chosen))  # fmt: skip
    return path


@pytest.fixture
def no_gold(monkeypatch):
    """Reading the gold STS set (by name, or through a loader) fails the test."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("the recipe search read the gold STS set")

    def guarded(real):
        def wrapper(file, *args, **kwargs):
            if recipe_search.GOLD_PAIRS.name in str(file):
                refuse()
            return real(file, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(builtins, "open", guarded(builtins.open))
    monkeypatch.setattr(io, "open", guarded(io.open))
    real_path_open = pathlib.Path.open
    monkeypatch.setattr(
        pathlib.Path, "open",
        lambda self, *a, **k: refuse() if self.name == recipe_search.GOLD_PAIRS.name
        else real_path_open(self, *a, **k),
    )  # fmt: skip
    from flowstone.baking import fidelity, quality

    for module in (quality, fidelity):  # the gold loader, once another change adds it
        monkeypatch.setattr(module, "builtin_gold_pairs", refuse, raising=False)


def build_base(record: SourceRecord):
    return lambda specs: pipeline.run_pass_chain(record, specs)[0]


@pytest.mark.slow  # exports, quantises and times the real MiniLM (~30 s)
def test_auto_bake_searches_records_caches_and_resumes(root, small_pairs, monkeypatch, no_gold):
    small = candidates(*SMALL)
    monkeypatch.setattr(recipe, "candidate_recipes", lambda: small)
    record = make_record(root, small_pairs, search_budget_s=60)
    assert record.bake_config().recipe == "auto"
    lines: list[str] = []
    baked = pipeline.run_passes(record, log=lines.append)

    chosen = baked.recipe
    assert chosen is not None and not chosen.from_cache
    assert [c.name for c in chosen.candidates] == list(SMALL)  # every candidate, in order
    winner = next(c for c in chosen.candidates if c.name == chosen.name)
    assert winner.passed and winner.metric_value is not None and winner.metric_value >= 0.99
    assert winner.throughput_median and winner.rounds >= recipe_search.MIN_ROUNDS
    assert winner.throughput_min <= winner.throughput_median <= winner.throughput_max
    for result in chosen.candidates:
        assert result.status in ("passed", "failed", "skipped", "error"), result
        if result.status in ("passed", "failed"):
            assert set(result.figures) >= {"spearman_rho", "cosine_mean", "cosine_min"}
            assert result.seconds > 0 and result.size_bytes
            assert (result.screen_ratio is not None) == result.passed
        if result.passed and result.throughput_median is None:
            assert "not timed" in result.note
    assert chosen.gate == {"metric": "spearman_rho", "threshold": 0.99,
                           "lower_is_better": False, "note": ""}  # fmt: skip
    assert chosen.flags_key == recipe_search._cpu_flags_key()
    assert chosen.timing["validation_pairs"] == 40 and chosen.budget_s == 60
    assert any(
        line.startswith("recipe search [1/2] ort-dyn-per-channel-reduce-range") for line in lines
    )

    # the bake ran the chosen steps, resuming the export the search built
    assert [p.as_dict() for p in recipe_search.pass_specs(chosen.steps)] == [
        {"name": s.name, **s.options} for s in baked.passes
    ]
    assert baked.passes[0].name == "onnx_export" and baked.passes[0].resumed
    assert any("resumed from checkpoint" in line for line in lines)

    # the cache: one file, the record as searched
    cache = root / "ws" / recipe_search.CACHE_DIR / f"{chosen.cache_key}.json"
    assert RecipeRecord.from_dict(json.loads(cache.read_text())) == chosen

    # records: the BakeRecord and the manifest carry the choice and read it back
    again = BakeRecord.from_dict(json.loads(json.dumps(baked.to_dict())))
    assert again == baked and again.recipe == chosen
    assert baked.metadata(record)["recipe"].startswith(chosen.name)
    manifest = Manifest.from_dict(STORED["manifest"])
    with_recipe = Manifest.from_dict({**manifest.to_dict(), "recipe": chosen.to_dict()})
    assert with_recipe.recipe == chosen
    assert Manifest.from_dict(json.loads(json.dumps(with_recipe.to_dict()))) == with_recipe

    # a rebake on this host: from the cache, nothing measured, every pass resumed
    def no_search(*_args, **_kwargs):
        raise AssertionError("searched again despite the cache")

    monkeypatch.setattr(recipe_search, "_search", no_search)
    monkeypatch.setattr(recipe_search, "open_runner", no_search)
    lines.clear()
    rebaked = pipeline.run_passes(record, log=lines.append)
    assert rebaked.recipe is not None and rebaked.recipe.from_cache
    assert rebaked.recipe.name == chosen.name and rebaked.recipe.candidates == chosen.candidates
    assert any(line.startswith("recipe from cache") for line in lines)
    assert all(p.resumed for p in rebaked.passes) and rebaked.sha256 == baked.sha256


@pytest.mark.slow  # quantises and measures the real MiniLM (~15 s)
def test_a_candidate_failing_the_gate_is_never_chosen(root, small_pairs, no_gold):
    # int8 moves some embedding's cosine below 0.9999; fp32 ONNX does not
    record = make_record(root, small_pairs,
                         quality={"metric": "cosine_min", "threshold": 0.9999})  # fmt: skip
    chosen = recipe_search.choose_recipe(
        record, record.bake_config(), candidates=candidates(*SMALL), build_base=build_base(record)
    )
    first, fp32 = chosen.candidates
    assert first.status == "failed" and not first.passed and first.metric_value < 0.9999
    assert first.throughput_median is None  # not timed: it cannot win
    assert chosen.name == "ort-fp32" and chosen.fallback and fp32.passed
    assert chosen.gate["metric"] == "cosine_min"


@pytest.mark.slow  # measures fp32 ONNX on the real MiniLM (~10 s)
def test_an_unreachable_gate_is_a_clear_error_and_not_cached(root, small_pairs, no_gold):
    record = make_record(root, small_pairs, quality={"threshold": 1.0001})
    with pytest.raises(BakeError, match="no candidate recipe passes spearman_rho >= 1.0001"):
        recipe_search.choose_recipe(
            record, record.bake_config(), candidates=candidates("ort-fp32"),
            build_base=build_base(record),
        )  # fmt: skip
    cached = [json.loads(p.read_text()) for p in (root / "ws" / ".recipe_cache").glob("*.json")]
    assert all(c["gate"]["threshold"] != 1.0001 for c in cached)
    assert not (record.workdir / ".recipe_search").exists()  # the scratch folder is gone


def test_the_gold_set_is_refused_as_validation(tmp_path, monkeypatch):
    gold = tmp_path / recipe_search.GOLD_PAIRS.name
    gold.write_text('{"a": "x", "b": "y"}\n' * 10)
    record = make_record(tmp_path, gold)
    monkeypatch.setattr(recipe_search, "_search", lambda *a, **k: pytest.fail("searched"))
    with pytest.raises(BakeError, match="gold STS set, which must never choose a recipe"):
        recipe_search.choose_recipe(record, record.bake_config())


def test_unmeasurable_metrics_fall_back_to_rho_and_say_so():
    config = parse_config({"quality": {"metric": "spearman_gold_drop", "threshold": 0.01}},
                          task="embedding")  # fmt: skip
    gate = recipe_search.search_gate(config)
    assert (gate.metric, gate.threshold, gate.lower_is_better) == ("spearman_rho", 0.99, False)
    assert "spearman_gold_drop cannot be measured" in gate.note
    own = recipe_search.search_gate(parse_config({"quality": {"metric": "cosine_mean",
                                                              "threshold": 0.995}}, task="embedding"))  # fmt: skip
    assert (own.metric, own.threshold, own.note) == ("cosine_mean", 0.995, "")
    assert own.passes(0.995) and not own.passes(0.99)


def test_cache_key_changes_with_model_flags_gate_and_candidates():
    gate = recipe_search.Gate("spearman_rho", 0.99, False)
    base = dict(model_sha256="abc", candidate_set=recipe_search.candidate_set_id(
        recipe.candidate_recipes()), gate=gate, validation_digest="v", flags_key="avx2+avx512_vnni",
        threads=2, runtime="onnxruntime 1.32.0")  # fmt: skip
    key = recipe_search.cache_key(**base)
    assert key == recipe_search.cache_key(**base)  # stable
    changes = {
        "model_sha256": "abd",
        "flags_key": "avx2",
        "gate": recipe_search.Gate("spearman_rho", 0.995, False),
        "validation_digest": "w",
        "threads": 4,
        "runtime": "onnxruntime 1.33.0",
        "candidate_set": recipe_search.candidate_set_id(candidates(*SMALL)),
    }
    keys = {
        name: recipe_search.cache_key(**{**base, name: value}) for name, value in changes.items()
    }
    assert key not in keys.values() and len(set(keys.values())) == len(keys)


def test_candidates_share_the_export_and_vnni_ones_are_skipped_without_it():
    listed = recipe.candidate_recipes()
    names = [c["name"] for c in listed]
    assert len(set(names)) == len(names) and names[0] == recipe.recommended_recipe()["name"]
    assert names[-1] == "ort-fp32" and listed[-1]["fallback"]
    assert sum(bool(c["fallback"]) for c in listed) == 1
    assert len({json.dumps(c["steps"][0], sort_keys=True) for c in listed}) == 1
    json.dumps(listed)  # plain data, for the record and the cache key
    vnni = {c["name"] for c in listed if recipe.needs_vnni(c)}
    assert {"ort-dyn-per-channel-fp32-l0-ffn-out", "ort-fused-dyn-per-tensor"} <= vnni
    assert "ort-dyn-per-channel-reduce-range" not in vnni and "ort-fused-nbits8" not in vnni
    for flags in (["avx2"], None, []):
        plan = recipe_search.plan_candidates(listed, flags)
        assert {c["name"] for c, skip in plan if skip} == vnni
        assert all("VNNI" in skip for _, skip in plan if skip)
    for flags in (["avx2", "avx512_vnni"], ["avx2", "avx_vnni"]):
        assert all(skip is None for _, skip in recipe_search.plan_candidates(listed, flags))
    assert recipe_search._cpu_flags_key([]) == "baseline" and recipe_search._cpu_flags_key(None) in (
        "unknown", recipe_search._cpu_flags_key())  # fmt: skip
    # a candidate's steps are what the bake runs: known passes, valid options
    for candidate in listed:
        parse_config({"passes": recipe_search.pass_steps(candidate)}, task="embedding")


def test_pick_takes_the_fastest_that_passed():
    def result(name, status, tps):
        median = tps and tps * 0.8  # ranked by the best round, not the median
        return CandidateResult(name, [], status, metric_value=0.99, throughput_median=median,
                               throughput_max=tps)  # fmt: skip

    results = [result("slow", "passed", 100.0), result("fast-but-failed", "failed", 900.0),
               result("fast", "passed", 300.0), result("untimed", "passed", None),
               result("skipped", "skipped", None)]  # fmt: skip
    assert recipe_search.pick(results).name == "fast"
    assert recipe_search.pick([result("x", "failed", 500.0)]) is None
    # within the tie margin the candidate listed first (expected merit) wins; beyond it, speed
    assert (
        recipe_search.pick([result("a", "passed", 300.0), result("b", "passed", 310.0)]).name == "a"
    )
    assert (
        recipe_search.pick([result("a", "passed", 300.0), result("b", "passed", 320.0)]).name == "b"
    )


def test_old_bake_records_read_and_write_back_without_a_recipe():
    old = STORED["baked_model"]
    assert "recipe" not in old
    record = BakeRecord.from_dict(old)
    assert record.recipe is None and record.to_dict() == old
    assert Manifest.from_dict(STORED["manifest"]).recipe is None


def test_timing_subset_spans_all_lengths():
    sentences = [f"w{'x' * n}" for n in range(300)]
    subset = recipe_search._timing_subset(sentences)
    assert len(subset) == recipe_search.TIMING_SENTENCES == len(set(subset))
    assert subset[0] == sentences[0] and subset[-1] == sentences[-1]
    assert recipe_search._timing_subset(sentences[:5]) == sentences[:5]


@pytest.mark.slow  # quantises the real MiniLM (~15 s)
def test_an_extra_gate_rejects_candidates_and_keys_the_cache(root, small_pairs, no_gold):
    """The task-suite gate the wiring hands in (recipe_gate.ExtraGate): a candidate that passes
    fidelity but fails it is never chosen, and a choice made under it is cached apart."""
    from flowstone.baking.recipe_gate import ExtraGate

    record = make_record(root, small_pairs, search_budget_s=60)
    seen: list[Artifact] = []

    def first_inferior(artifact: Artifact) -> tuple[bool, str]:
        """The int8 candidate is asked first (SMALL's order) and refused; fp32 passes."""
        seen.append(artifact)
        ok = len(seen) > 1
        return ok, "task gate: ok" if ok else "task gate: inferior on paraphrase"

    gate = ExtraGate("test-gate-1", first_inferior)
    chosen = recipe_search.choose_recipe(
        record, record.bake_config(), candidates=candidates(*SMALL),
        build_base=build_base(record), extra_gate=gate,
    )  # fmt: skip
    first, fp32 = chosen.candidates
    assert len(seen) == 2, "the extra gate is asked once a candidate passes fidelity"
    assert not first.passed and "inferior on paraphrase" in first.note
    assert chosen.name == "ort-fp32" and fp32.passed
    # another gate identity is another cache entry: searched again, not served from the cache
    again = recipe_search.choose_recipe(
        record, record.bake_config(), candidates=candidates(*SMALL),
        build_base=build_base(record), extra_gate=ExtraGate("test-gate-2", lambda a: (True, "")),
    )  # fmt: skip
    assert not again.from_cache and again.name != "ort-fp32"
