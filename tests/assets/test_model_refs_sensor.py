"""The model reference sensor records a new data version for exactly the evaluation partitions
whose metric or system uses a reference, when what it points to changes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from flowstone.baking.artifacts import Artifact
from flowstone.baking.registry import record_passed
from flowstone.evaluation.catalog import load_catalog
from flowstone.systems.base import SystemRegistry
from flowstone.systems.baselines import baseline_systems
from flowstone.systems.retrieval import DenseNearestSentence
from sensors.model_refs import SCORING_CONFIG_KEY, SYSTEM_SPEC_KEY, build_model_refs_sensor

REPO = Path(__file__).resolve().parents[2]


def _bake(workspace: Path, version: str, content: bytes) -> None:
    folder = workspace / "minilm" / version
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(content)
    record_passed(workspace, "minilm", version, hashlib.sha256(content).hexdigest(),
                  Artifact("onnx", folder / "model.onnx", "embedding", folder))  # fmt: skip


@pytest.fixture()
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    workspace = tmp_path / "baking"
    monkeypatch.setenv("FLOWSTONE_BAKE_WORKSPACE", str(workspace))
    monkeypatch.setenv("FLOWSTONE_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("FLOWSTONE_DEPLOY_DIR", str(tmp_path / "deployments"))
    _bake(workspace, "v1", b"one")
    config = tmp_path / "evaluation.yaml"
    config.write_text("defaults:\n  metrics:\n    exact_match: {}\nsuites:\n  paraphrase:\n"
                      "    metrics:\n      embedding_similarity: {model: 'baked:minilm'}\n")  # fmt: skip
    systems = SystemRegistry([*baseline_systems(),
                              DenseNearestSentence("minilm-baked-nearest", "baked:minilm")])  # fmt: skip
    return load_catalog(REPO / "suites", config, systems), workspace


def _tick(sensor: dg.SensorDefinition, cursor: str | None) -> dg.SensorResult:
    with dg.instance_for_test() as instance:
        result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
    assert isinstance(result, dg.SensorResult)
    return result


def _observed(result: dg.SensorResult) -> dict[tuple[str, str], str]:
    return {
        (e.asset_key.to_user_string(), str(e.partition)): e.tags[DATA_VERSION_TAG]
        for e in result.asset_events or []
    }


def test_sensor_observes_only_partitions_that_use_a_reference_and_only_on_change(catalog) -> None:
    catalog, workspace = catalog
    sensor = build_model_refs_sensor(catalog)
    first = _tick(sensor, None)
    observed = _observed(first)
    assert set(observed) == {
        (SCORING_CONFIG_KEY.to_user_string(), "paraphrase"),
        (SYSTEM_SPEC_KEY.to_user_string(), "minilm-baked-nearest"),
    }
    # the same fingerprints the observable sources compute
    assert observed[(SCORING_CONFIG_KEY.to_user_string(), "paraphrase")] == (
        catalog.settings.for_suite("paraphrase").fingerprint()
    )
    second = _tick(sensor, first.cursor)
    assert _observed(second) == {}
    _bake(workspace, "v2", b"two")  # a new bake passed its gates
    third = _observed(_tick(sensor, second.cursor))
    assert set(third) == set(observed)
    assert all(third[k] != observed[k] for k in third)
