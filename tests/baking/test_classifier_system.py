"""A classifier bake as a system under evaluation, for real: the shipped intent classifier (a head
over the packaged MiniLM) is trained, dropped and baked through the Dagster bake job; a
``classifiers:`` entry in systems.yaml then makes ``baked:intent_classifier`` a system, whose
intent-suite partition is materialized like any other and carries accuracy and F1. Its
partition on a suite without class labels is left out of the runs, and fails with the reason
when run anyway. Bad references are load errors naming the file and key."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from flowstone import paths
from flowstone.errors import ConfigError

pytestmark = pytest.mark.slow  # trains on MiniLM embeddings, bakes, profiles

SYSTEM = "intent-baked"


@pytest.fixture
def baked_intent(env: Path, instance: dg.DagsterInstance) -> Path:
    """The intent classifier staged, dropped and baked; returns the systems.yaml naming it."""
    from assets.runner import bake_models
    from flowstone.baking.demo_models import write_intent_classifier
    from flowstone.baking.intake import add_model
    from flowstone.definitions import defs

    path = write_intent_classifier(env / "staging", epochs=150)
    add_model(path, "intent_classifier", env / "drop")
    outcomes = bake_models(defs, instance, ["intent_classifier"])
    assert all(ok for ok in outcomes.values()), outcomes
    systems = env / "systems.yaml"
    systems.write_text(f"classifiers:\n  - {{name: {SYSTEM}, model: 'baked:intent_classifier'}}\n")
    return systems


def _report_metadata(instance: dg.DagsterInstance, key: str) -> dict:
    [record] = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(["evaluation", "report"]), asset_partitions=[key]
        ),
        limit=1,
    ).records
    return dict(record.asset_materialization.metadata)


def test_a_baked_intent_classifier_is_evaluated_as_a_system(
    baked_intent: Path, env: Path, instance: dg.DagsterInstance
) -> None:
    from assets.runner import execute_partitions
    from flowstone.definitions import build_definitions
    from flowstone.evaluation.catalog import load_catalog
    from flowstone.systems.base import SystemRegistry
    from flowstone.systems.baselines import ZeroShotLabel
    from flowstone.systems.config import load_classifier_systems
    from io_managers.object_store import ObjectStoreIOManager

    [classifier] = load_classifier_systems(baked_intent)
    assert classifier.labels() == sorted(classifier.labels()) and len(classifier.labels()) == 8
    suites = env / "suites"
    suites.mkdir()
    for suite in (paths.project_root() / "suites").glob("*.jsonl"):  # the shipped suites
        shutil.copy(suite, suites)
    catalog = load_catalog(suites, paths.project_root() / "evaluation.yaml",
                           SystemRegistry([ZeroShotLabel(), classifier]))  # fmt: skip
    skipped = catalog.not_applicable()
    text_suites = ("paraphrase", "qa", "summarisation")
    assert set(skipped) == {(s, y) for s in text_suites for y in (SYSTEM, "minilm-zero-shot")}
    assert "without a class label" in skipped[("paraphrase", SYSTEM)]
    keys = catalog.applicable_keys()
    assert f"intent|{SYSTEM}" in keys and f"paraphrase|{SYSTEM}" not in keys

    defs = build_definitions(
        catalog=catalog,
        resources={"io_manager": ObjectStoreIOManager(base_path=str(env / "objects"))},
    )
    job = defs.resolve_job_def("evaluation_job")
    results = execute_partitions(job, instance, keys, single_run=True)
    assert all(result.success for result in results.values())

    ours = _report_metadata(instance, f"intent|{SYSTEM}")
    zero_shot = _report_metadata(instance, "intent|minilm-zero-shot")
    accuracy, f1 = ours["suite/accuracy"].value, ours["suite/f1"].value
    print(f"intent accuracy: baked head {accuracy:.3f} (F1 {f1:.3f}), zero-shot "
          f"{zero_shot['suite/accuracy'].value:.3f}")  # fmt: skip
    # held-out messages the head never saw: nearly all are right (it is trained on the task,
    # and the zero-shot floor already gets most)
    assert 0.8 <= accuracy <= 1.0 and 0.8 <= f1 <= 1.0
    assert 0.5 <= zero_shot["suite/accuracy"].value <= 1.0
    predictions = defs.get_assets_def(dg.AssetKey(["evaluation", "predictions"]))
    assert predictions is not None

    # the partition that means nothing fails, with the reason, when run anyway
    [failed] = execute_partitions(
        job, instance, [f"paraphrase|{SYSTEM}"], single_run=False
    ).values()
    assert not failed.success
    message = " ".join(
        e.step_failure_data.error.to_string() for e in failed.all_events if e.is_step_failure
    )
    assert "without a class label" in message and "paraphrase" in message


def test_a_classifier_bake_is_fingerprinted_and_seen_by_the_model_refs_sensor(
    baked_intent: Path,
) -> None:
    from flowstone.evaluation.catalog import load_catalog
    from flowstone.systems.base import SystemRegistry
    from flowstone.systems.config import load_classifier_systems
    from sensors.model_refs import SYSTEM_SPEC_KEY, current_versions

    [classifier] = load_classifier_systems(baked_intent)
    params = classifier.params()
    assert params["model"].startswith("baked:intent_classifier=")
    assert params["features"].startswith("default=")
    catalog = load_catalog(systems=SystemRegistry([classifier]))
    versions = current_versions(catalog)[SYSTEM_SPEC_KEY.to_user_string()]
    assert versions == {SYSTEM: classifier.fingerprint()}


def test_bad_classifier_references_are_load_errors_naming_the_key(
    env: Path, instance: dg.DagsterInstance
) -> None:
    from bake_helpers import write_tiny_classifier

    from assets.runner import bake_models
    from flowstone.baking.intake import add_model
    from flowstone.definitions import defs
    from flowstone.systems.config import load_classifier_systems

    systems = env / "systems.yaml"
    systems.write_text("classifiers:\n  - {name: x, model: 'baked:nobody'}\n")
    with pytest.raises(ConfigError, match=r"classifiers\[0\]\.model.*no model named 'nobody'"):
        load_classifier_systems(systems)
    systems.write_text("classifiers:\n  - {name: x, model: default}\n")
    with pytest.raises(ConfigError, match="only a classifier bake can be a classifier system"):
        load_classifier_systems(systems)

    # a classifier without labels and text features cannot name its answers
    add_model(write_tiny_classifier(env / "staging"), "tiny", env / "drop")
    assert all(bake_models(defs, instance, ["tiny"]).values())
    systems.write_text("classifiers:\n  - {name: x, model: 'baked:tiny'}\n")
    with pytest.raises(ConfigError, match=r"classifiers\[0\]\.model.*no labels and text_features"):
        load_classifier_systems(systems)
