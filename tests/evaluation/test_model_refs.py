"""Model references (default, baked:NAME, deployed:NAME[@VERSION]) in the evaluation: parsing,
resolution, load-time errors naming the file and key, the embedding metric and the dense
retrieval system on a baked ONNX model, fingerprints that follow a new bake, and the task gate's
non-inferiority decision."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from flowstone.baking.artifacts import Artifact
from flowstone.baking.config import TaskGate
from flowstone.baking.registry import ModelRefError, parse_ref, record_passed, resolve, verify
from flowstone.errors import ConfigError
from flowstone.evaluation.model_gate import decide


@pytest.fixture()
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    found = {
        "workspace": tmp_path / "baking",
        "models": tmp_path / "models",
        "deployments": tmp_path / "deployments",
    }
    for path in found.values():
        path.mkdir()
    monkeypatch.setenv("FLOWSTONE_BAKE_WORKSPACE", str(found["workspace"]))
    monkeypatch.setenv("FLOWSTONE_MODELS_DIR", str(found["models"]))
    monkeypatch.setenv("FLOWSTONE_DEPLOY_DIR", str(found["deployments"]))
    return found


def _fake_bake(roots: dict[str, Path], name: str, content: bytes = b"onnx") -> Artifact:
    """A recorded bake: a file with a known hash (resolution never loads it)."""
    import hashlib

    folder = roots["workspace"] / name / "v1" / "passes" / "00-onnx_export"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(content)
    artifact = Artifact("onnx", folder / "model.onnx", "embedding", folder)
    record_passed(roots["workspace"], name, "v1", hashlib.sha256(content).hexdigest(), artifact)
    return artifact


@pytest.mark.parametrize(
    ("text", "kind", "name", "version"),
    [
        ("default", "default", None, None),
        ("baked:minilm", "baked", "minilm", None),
        ("deployed:minilm", "deployed", "minilm", None),
        ("deployed:minilm@abc123", "deployed", "minilm", "abc123"),
    ],
)
def test_parse_ref_forms(text: str, kind: str, name: str | None, version: str | None) -> None:
    ref = parse_ref(text)
    assert (ref.kind, ref.name, ref.version) == (kind, name, version)
    assert ref.text == text


@pytest.mark.parametrize("text", ["", "minilm", "trained:minilm", "baked:", "baked:m@v1",
                                  "deployed:m@", 3])  # fmt: skip
def test_parse_ref_refuses_malformed(text: object) -> None:
    with pytest.raises(ModelRefError):
        parse_ref(text)


def test_unknown_and_never_baked_models_are_named(roots: dict[str, Path]) -> None:
    with pytest.raises(ModelRefError, match="no model named 'ghost'"):
        resolve("baked:ghost")
    (roots["models"] / "minilm").mkdir()  # dropped, not baked yet
    with pytest.raises(ModelRefError, match="no bake that passed its gates"):
        resolve("baked:minilm")
    with pytest.raises(ModelRefError, match="nothing of 'minilm' is deployed"):
        resolve("deployed:minilm")


def test_baked_ref_points_to_the_latest_recorded_bake_and_verifies_it(
    roots: dict[str, Path],
) -> None:
    artifact = _fake_bake(roots, "minilm")
    resolved = resolve("baked:minilm")
    assert resolved.version == "v1" and resolved.artifact == artifact
    verify(resolved)
    artifact.path.write_bytes(b"changed under the reference")
    with pytest.raises(ModelRefError, match="no longer match"):
        verify(resolved)


def test_deployed_ref_reads_the_deployment(roots: dict[str, Path]) -> None:
    from flowstone.baking.deploy import Deployments

    manifest = {"model": "minilm", "version": "v7", "task": "embedding",
                "baked": {"format": "onnx", "sha256": "ab" * 32, "size_bytes": 4,
                          "path": "model/model.onnx"}}  # fmt: skip
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in (("manifest.json", json.dumps(manifest).encode()),
                           ("model/model.onnx", b"onnx")):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    Deployments(roots["deployments"]).deploy("minilm", buffer.getvalue())
    for text in ("deployed:minilm", "deployed:minilm@v7"):
        resolved = resolve(text)
        assert resolved.version == "v7"
        assert resolved.artifact is not None and resolved.artifact.path.name == "model.onnx"
    with pytest.raises(ModelRefError, match="version 'v8' of 'minilm' is not deployed"):
        resolve("deployed:minilm@v8")


def test_evaluation_settings_refuse_a_never_baked_model_naming_file_and_key(
    roots: dict[str, Path], tmp_path: Path
) -> None:
    from flowstone.evaluation.config import load_settings

    (roots["models"] / "minilm").mkdir()
    config = tmp_path / "evaluation.yaml"
    config.write_text("defaults:\n  metrics:\n    exact_match: {}\nsuites:\n  paraphrase:\n"
                      "    metrics:\n      embedding_similarity:\n        model: baked:minilm\n")  # fmt: skip
    with pytest.raises(ConfigError) as raised:
        load_settings(config, ["paraphrase"])
    message = str(raised.value)
    assert str(config) in message and "embedding_similarity.model" in message
    assert "no bake that passed its gates" in message


def test_systems_yaml_refuses_an_unknown_model_naming_file_and_key(
    roots: dict[str, Path], tmp_path: Path
) -> None:
    from flowstone.systems.config import load_retrieval_systems

    config = tmp_path / "systems.yaml"
    config.write_text("retrieval:\n  - {name: baked-nearest, model: 'baked:ghost'}\n")
    with pytest.raises(ConfigError) as raised:
        load_retrieval_systems(config)
    assert "retrieval[0].model" in str(raised.value) and str(config) in str(raised.value)


def test_fingerprint_follows_a_new_bake_for_the_suites_that_use_it_only(
    roots: dict[str, Path], tmp_path: Path
) -> None:
    from flowstone.evaluation.config import load_settings

    _fake_bake(roots, "minilm")
    config = tmp_path / "evaluation.yaml"
    config.write_text("defaults:\n  metrics:\n    exact_match: {}\nsuites:\n  paraphrase:\n"
                      "    metrics:\n      embedding_similarity:\n        model: baked:minilm\n"
                      "  qa:\n    metrics:\n"
                      "      embedding_similarity: {}\n")  # fmt: skip
    settings = load_settings(config, ["paraphrase", "qa"])
    before = {s: settings.for_suite(s).fingerprint() for s in ("paraphrase", "qa")}
    record_passed(roots["workspace"], "minilm", "v2", "cd" * 32,
                  Artifact("onnx", tmp_path / "x.onnx", "embedding", tmp_path))  # fmt: skip
    after = {s: settings.for_suite(s).fingerprint() for s in ("paraphrase", "qa")}
    assert after["paraphrase"] != before["paraphrase"]
    assert after["qa"] == before["qa"]


GATE = TaskGate(suites=("paraphrase",), margin=0.005, confidence=0.95)


def test_decide_passes_a_tiny_consistent_drop_and_fails_a_real_one() -> None:
    import numpy as np

    rng = np.random.default_rng(1)
    before = rng.uniform(0.5, 0.95, size=40)
    close = before - 0.001 + rng.normal(0, 0.0005, size=40)
    worse = before - 0.02 + rng.normal(0, 0.005, size=40)
    ok = decide("paraphrase", before.tolist(), close.tolist(), GATE)
    bad = decide("paraphrase", before.tolist(), worse.tolist(), GATE)
    assert ok.passed and ok.lower_bound > -0.005 and ok.cases == 40
    assert not bad.passed and bad.lower_bound < -0.005
    assert bad.difference == pytest.approx(float(np.mean(worse - before)))


def test_decide_uses_the_one_sided_bound() -> None:
    """Differences whose two-sided 95% lower end is below -margin but whose one-sided 95% bound
    (the two-sided 90% one) is above it pass: the gate asks "not worse by more than margin"."""
    import numpy as np

    from flowstone.evaluation.statistics import bootstrap_ci

    rng = np.random.default_rng(7)
    for _ in range(200):
        before = rng.uniform(0.5, 0.9, size=30)
        after = before - 0.003 + rng.normal(0, 0.004, size=30)
        diff = after - before
        two_sided = bootstrap_ci(diff, level=0.95, seed=0).low
        one_sided = bootstrap_ci(diff, level=0.90, seed=0).low
        if two_sided < -0.005 < one_sided:
            assert decide("s", before.tolist(), after.tolist(), GATE).passed
            return
    pytest.skip("no draw fell between the two bounds")  # pragma: no cover
