"""The shipped gold STS pairs (flowstone/baking/data/sts_gold_pairs.jsonl) and the bake quality
figures measured on them: the set's shape, its separation from the other shipped texts, the
loader's errors, the Spearman-vs-gold math, and the real fp32 MiniLM against the labels."""

import json
import math
import zlib
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import spearmanr

from flowstone.baking import quality
from flowstone.baking.config import parse_config
from flowstone.baking.errors import BakeError
from flowstone.baking.fidelity import FIDELITY_PAIRS, gold_spearman
from flowstone.baking.quality import (
    BUILTIN_GOLD,
    GOLD_PAIRS,
    Pair,
    builtin_gold_pairs,
    load_pairs,
    load_scored_pairs,
    measure_quality,
    validation_pairs,
)
from flowstone.baking.records.quality import EmbeddingFigures, QualityRecord

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"id", "a", "b", "score", "domain"}


def shipped_lines() -> list[dict]:
    return [json.loads(line) for line in GOLD_PAIRS.read_text("utf-8").splitlines() if line]


def norm(text: str) -> str:
    return " ".join(text.casefold().split())


def test_the_shipped_set_is_large_balanced_and_well_formed():
    rows = shipped_lines()
    assert len(rows) >= 300
    assert all(set(row) == KEYS for row in rows)
    ids = [row["id"] for row in rows]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("sts-") and i[4:].isdigit() for i in ids)
    for row in rows:
        score = row["score"]
        assert isinstance(score, int | float) and not isinstance(score, bool)
        assert 0 <= score <= 5, row["id"]
        assert row["a"].strip() and row["b"].strip() and norm(row["a"]) != norm(row["b"])
        assert all(5 <= len(text.split()) <= 35 for text in (row["a"], row["b"])), row["id"]
    bands = Counter(min(int(row["score"]), 4) for row in rows)  # [0,1) ... [3,4), [4,5]
    assert all(bands[band] >= 40 for band in range(5)), bands
    assert len({row["domain"] for row in rows}) >= 12
    # no pair twice (either order)
    pairs = Counter(frozenset((norm(row["a"]), norm(row["b"]))) for row in rows)
    assert pairs.most_common(1)[0][1] == 1


def test_no_sentence_is_shared_with_the_suites_or_the_fidelity_pairs():
    others: set[str] = set()
    for suite in sorted((ROOT / "suites").glob("*.jsonl")):
        for line in suite.read_text("utf-8").splitlines():
            if line.strip():
                item = json.loads(line)
                others |= {norm(v) for v in item.values() if isinstance(v, str)}
                for value in item.values():  # e.g. a list of references
                    if isinstance(value, list):
                        others |= {norm(v) for v in value if isinstance(v, str)}
    assert len(others) > 100  # the suites were read
    others |= {norm(t) for t in json.loads(FIDELITY_PAIRS.read_text("utf-8"))["texts"]}
    shared = {s for row in shipped_lines() for s in (row["a"], row["b"]) if norm(s) in others}
    assert not shared


def test_builtin_gold_pairs_load_with_scores_and_are_cached():
    pairs = builtin_gold_pairs()
    assert pairs is builtin_gold_pairs()
    assert len(pairs) == len(shipped_lines())
    assert all(isinstance(p, Pair) and p.score is not None for p in pairs)
    first = shipped_lines()[0]
    assert pairs[0] == Pair(first["a"], first["b"], float(first["score"]))


def write(tmp_path: Path, lines: list[str], name: str = "pairs.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def line(i: int, score: object = ..., **extra: object) -> str:
    item: dict = {"a": f"sentence a{i}", "b": f"sentence b{i}", **extra}
    if score is not ...:
        item["score"] = score
    return json.dumps(item)


def test_pairs_without_scores_still_load_as_tuples(tmp_path):
    path = write(tmp_path, [line(i) for i in range(12)])
    assert load_pairs(path, "m")[0] == ("sentence a0", "sentence b0")
    assert all(p.score is None for p in load_scored_pairs(path, "m"))
    record = SimpleNamespace(model="m")
    assert validation_pairs(record, path) == load_pairs(path, "m")  # what profile.py reads


def test_scored_pairs_load_and_tuples_drop_the_scores(tmp_path):
    path = write(tmp_path, [line(i, score=i % 6 * 0.9, extra="ignored") for i in range(12)])
    scored = load_scored_pairs(path, "m")
    assert [p.score for p in scored[:3]] == [0.0, 0.9, 1.8]
    assert isinstance(scored[5].score, float) and scored[5].score == 4.5
    assert load_pairs(path, "m")[1] == ("sentence a1", "sentence b1")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (True, "'score' must be a number from 0 to 5, got True"),
        ("3.5", "'score' must be a number from 0 to 5, got '3.5'"),
        (None, "'score' must be a number from 0 to 5, got None"),
        (5.2, "'score' 5.2 is outside the STS scale 0 to 5"),
        (-0.1, "'score' -0.1 is outside the STS scale 0 to 5"),
    ],
)
def test_a_bad_score_names_the_file_and_line(tmp_path, bad, message):
    lines = [line(i, score=2.0) for i in range(12)]
    lines[3] = line(3, score=bad)
    path = write(tmp_path, lines)
    with pytest.raises(BakeError) as error:
        load_scored_pairs(path, "m")
    assert str(error.value) == f"model 'm' [bake_quality]: {path}, line 4: {message}"


def test_a_nan_score_is_refused(tmp_path):
    lines = [line(i, score=2.0) for i in range(12)]
    lines[0] = '{"a": "x", "b": "y", "score": NaN}'  # Python's json reads NaN
    path = write(tmp_path, lines)
    with pytest.raises(BakeError, match=rf"{path}, line 1: 'score' must be a number .* got nan"):
        load_scored_pairs(path, "m")


def test_a_mixed_file_names_the_first_line_that_differs(tmp_path):
    lines = [line(i, score=1.0 + i % 3) for i in range(12)]
    lines[6] = line(6)
    path = write(tmp_path, [""] + lines)  # a blank first line: the first pair is line 2
    with pytest.raises(BakeError) as error:
        load_scored_pairs(path, "m")
    assert f"{path}, line 8: has no 'score' but line 2 does; give every pair" in str(error.value)
    lines = [line(i) for i in range(12)]
    lines[2] = line(2, score=3)
    path = write(tmp_path, lines, "other.jsonl")
    with pytest.raises(BakeError, match=rf"{path}, line 3: has 'score' but line 1 does not"):
        load_pairs(path, "m")


def test_a_missing_key_and_equal_scores_are_refused(tmp_path):
    lines = [line(i, score=1.5) for i in range(12)]
    lines[4] = json.dumps({"a": "only a", "score": 2})
    path = write(tmp_path, lines)
    with pytest.raises(BakeError, match=rf"{path}, line 5: expected .*'b'"):
        load_scored_pairs(path, "m")
    path = write(tmp_path, [line(i, score=1.5) for i in range(12)], "flat.jsonl")
    with pytest.raises(BakeError, match=rf"{path}: every pair has the score 1.5"):
        load_scored_pairs(path, "m")


def test_gold_spearman_is_scipys_rho_of_the_pair_cosines():
    embeddings = np.array([[1.0, 0.0], [3.0, 0.3], [0.0, 2.0], [1.0, 1.0], [-1.0, 0.2]])
    pairs = [(0, 1), (0, 2), (0, 3), (2, 3), (1, 4), (3, 4)]
    scores = [4.8, 0.4, 3.0, 3.0, 0.0, 1.2]
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    cosines = [float(unit[i] @ unit[j]) for i, j in pairs]
    expected = spearmanr(cosines, scores).statistic
    assert gold_spearman(embeddings, pairs, scores) == pytest.approx(expected, abs=1e-12)
    assert gold_spearman(unit * 7.0, pairs, scores) == pytest.approx(expected, abs=1e-12)
    assert gold_spearman(embeddings, [(0, 1), (0, 2)], [1.0, 0.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="3 pairs but 2 gold scores"):
        gold_spearman(embeddings, pairs[:3], scores[:2])


class BagOfWords:
    """A stand-in runner: hashed bag-of-words vectors (the 'original'), and the same with
    sentence-seeded noise (the 'baked' model), so quality runs without loading a model."""

    def __init__(self, artifact: str, noise: float):
        self.artifact, self.noise = artifact, noise

    def run(self, sentences, batch_size=32):
        rows = []
        for sentence in sentences:
            vector = np.zeros(64)
            for word in sentence.lower().split():
                vector[zlib.crc32(word.strip(".,?!'").encode()) % 64] += 1.0
            if self.artifact == "baked":
                rng = np.random.default_rng(zlib.crc32(sentence.encode()))
                vector += self.noise * rng.normal(size=64)
            rows.append(vector)
        return np.array(rows, dtype=np.float32)


@pytest.fixture
def fake_runners(monkeypatch):
    opened: list[str] = []

    def open_runner(artifact):
        opened.append(artifact)
        return BagOfWords(artifact, noise=0.6)

    monkeypatch.setattr(quality, "open_runner", open_runner)
    return opened


def embedding_config(metric: str, threshold: float, validation: str | None = None):
    raw = {"quality": {"metric": metric, "threshold": threshold}, "passes": ["onnx_export"]}
    return parse_config({**raw, "validation": validation} if validation else raw, task="embedding")


def test_quality_measures_the_builtin_gold_set_and_gates_on_the_drop(tmp_path, fake_runners):
    record = SimpleNamespace(model="m", source_path=str(tmp_path), original="original")
    baked = SimpleNamespace(artifact="baked")
    result = measure_quality(record, baked, embedding_config("spearman_gold_drop", 0.5))
    figures = result.figures
    assert isinstance(figures, EmbeddingFigures) and fake_runners == ["original", "baked"]
    assert figures.validation == "builtin: held-out pairs from the suites"
    assert (figures.gold_source, figures.gold_pairs) == (BUILTIN_GOLD, len(builtin_gold_pairs()))
    assert figures.spearman_gold_drop == pytest.approx(
        figures.spearman_gold_original - figures.spearman_gold_baked
    )
    assert 0.2 < figures.spearman_gold_original < 1 and figures.spearman_gold_drop > 0  # noise
    assert result.value == figures.spearman_gold_drop and result.passed  # lower is better
    strict = measure_quality(record, baked, embedding_config("spearman_gold_drop", 0.0))
    assert strict.value == result.value and not strict.passed
    # the fidelity figures are over the held-out pairs only, as before the gold set was added
    held_out = quality.builtin_pairs()
    assert figures.pairs == len(held_out)
    assert figures.sentences == len({s for pair in held_out for s in pair})


def test_a_scored_validation_file_is_the_gold_source(tmp_path, fake_runners):
    rows = [r for r in shipped_lines() if r["domain"] in ("weather", "sport")]
    path = write(tmp_path, [json.dumps({k: r[k] for k in ("a", "b", "score")}) for r in rows])
    record = SimpleNamespace(model="m", source_path=str(tmp_path / "m.onnx"), original="original")
    config = embedding_config("spearman_rho", 0.5, validation=path.name)
    figures = measure_quality(record, SimpleNamespace(artifact="baked"), config).figures
    assert (figures.gold_source, figures.validation) == (str(path), str(path))
    assert figures.gold_pairs == figures.pairs == len(rows)


def test_gold_figures_round_trip_and_read_well_in_the_ui():
    figures = EmbeddingFigures(
        pairs=20, sentences=40, spearman_rho=0.998, cosine_mean=0.99, cosine_min=0.97,
        max_abs_similarity_diff=0.02, validation="v.jsonl", gold_pairs=462,
        gold_source=BUILTIN_GOLD, spearman_gold_original=0.684257, spearman_gold_baked=0.681049,
        spearman_gold_drop=0.003208,
    )  # fmt: skip
    record = QualityRecord(figures, "spearman_gold_drop", 0.003208, 0.01, True)
    assert QualityRecord.from_dict(record.to_dict()) == record
    meta = record.metadata()
    assert meta["spearman_gold_original"] == 0.6843 and meta["spearman_gold_drop"] == 0.0032
    assert meta["gold_pairs"] == 462.0 and meta["gold_source"] == BUILTIN_GOLD
    check = record.check_metadata()
    assert check["spearman_gold_baked"] == 0.681 and check["gold_source"] == BUILTIN_GOLD
    assert "original 0.6843, baked 0.6810, drop 0.0032" in record.check_description()
    old = QualityRecord.from_dict(
        {k: v for k, v in record.to_dict().items() if "gold" not in k} | {"metric": "spearman_rho"}
    )
    assert old.figures.spearman_gold_drop is None and "gold_source" not in old.metadata()
    assert "gold_source" not in old.check_metadata() and "gold" not in old.check_description()
    assert not math.isnan(old.figures.spearman_rho)


@pytest.mark.slow  # loads the packaged fp32 all-MiniLM-L6-v2 and encodes ~900 sentences
def test_fp32_minilm_ranks_the_pairs_like_the_gold_labels():
    from flowstone.encoder import encode

    pairs = builtin_gold_pairs()
    texts = sorted({s for p in pairs for s in (p.a, p.b)})
    row = {s: i for i, s in enumerate(texts)}
    rho = gold_spearman(encode(texts), [(row[p.a], row[p.b]) for p in pairs],
                        [float(p.score or 0) for p in pairs])  # fmt: skip
    # 0.687 when the labels were written (STS_GOLD.md): the traps (negations, swapped roles)
    # the model cannot see pull it below the ~0.8 MiniLM reaches on STS-B
    assert rho > 0.65
