"""A baked ONNX MiniLM behind ``baked:NAME`` in the evaluation, for real: the embedding metric
and the dense retrieval system run it and agree with the packaged fp32 model, and the task gate
finds it non-inferior on the paraphrase suite. One ONNX export (seconds) is shared."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from flowstone.baking.artifacts import Artifact
from flowstone.baking.config import TaskGate
from flowstone.baking.registry import ModelRef, ResolvedModel, record_passed, resolve

pytestmark = pytest.mark.slow  # exports the real MiniLM to ONNX


@pytest.fixture(scope="module")
def baked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Artifact, str]:
    from flowstone.baking.onnx.export import export_transformer_onnx
    from flowstone.encoder import model_path

    root = tmp_path_factory.mktemp("refs")
    workspace = root / "baking"
    onnx = export_transformer_onnx(model_path(), workspace / "minilm" / "v1" / "m.onnx")
    artifact = Artifact("onnx", onnx, "embedding", model_path())
    digest = hashlib.sha256()
    for file in artifact.files():
        digest.update(file.read_bytes())
    return root, artifact, digest.hexdigest()


@pytest.fixture()
def recorded(baked, monkeypatch: pytest.MonkeyPatch) -> Artifact:
    root, artifact, sha = baked
    monkeypatch.setenv("FLOWSTONE_BAKE_WORKSPACE", str(root / "baking"))
    monkeypatch.setenv("FLOWSTONE_MODELS_DIR", str(root / "models"))
    monkeypatch.setenv("FLOWSTONE_DEPLOY_DIR", str(root / "deployments"))
    record_passed(root / "baking", "minilm", "v1", sha, artifact)
    return artifact


def test_embedding_metric_runs_the_baked_model(recorded: Artifact) -> None:
    from flowstone.evaluation.metrics import embedding_similarity

    predictions = ["The meeting moved to Thursday.", "Cats sleep a lot.", "It is raining."]
    references = ["The meeting was rescheduled for Thursday.", "Stocks fell sharply.",
                  "Rain is falling outside."]  # fmt: skip
    default = embedding_similarity(predictions, references)
    baked = embedding_similarity(predictions, references, model="baked:minilm")
    assert baked == pytest.approx(default, abs=2e-3)  # fp32 ONNX: the same model
    assert baked[0] > baked[1] and baked[2] > baked[1]


def test_dense_retrieval_system_on_the_baked_model(recorded: Artifact) -> None:
    from flowstone.cases import Case
    from flowstone.systems.retrieval import DenseNearestSentence

    case = Case(
        "q1", "What is the capital of Australia?", "Canberra",
        context="Sydney is the largest city. The capital of Australia is Canberra. "
        "Melbourne hosts the Open.",
    )  # fmt: skip
    system = DenseNearestSentence("minilm-baked-nearest", "baked:minilm")
    [prediction] = system.predict([case])
    assert prediction.output == "The capital of Australia is Canberra."
    assert system.params()["model"].startswith("baked:minilm=v1:")


def test_task_gate_finds_the_fp32_export_non_inferior_on_paraphrase(recorded: Artifact) -> None:
    from flowstone.encoder import model_path
    from flowstone.evaluation.model_gate import task_gate

    ref = ModelRef("baked", "minilm")
    original = ResolvedModel(ref, "original", None,
                             Artifact("sentence_transformers", model_path(), "embedding"))  # fmt: skip
    candidate = resolve("baked:minilm")
    result = task_gate(original, candidate, TaskGate(suites=("paraphrase",)))
    [suite] = result.suites
    assert suite.cases >= 30
    assert abs(suite.difference) < 0.002
    assert result.passed and suite.lower_bound > -0.005
    assert "paraphrase" in result.description()
