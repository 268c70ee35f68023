"""A backfill of many models as one run (the one-host BackfillPolicy.single_run()): each model
keeps its own metadata, check result and warehouse rows; a model that fails its quality bar
fails only its own check result, and the batch stops before profile and package; a model that
fails to load is named, with its siblings, in the step's failure. A model launched alone (the
drop sensor, the UI) is still a run of its own."""

import dagster as dg
import duckdb
import pytest
from bake_helpers import write_tiny_classifier

from assets.baking import (
    BAKE_JOB,
    DEPLOYED_KEY,
    MODELS,
    PACKAGE_KEY,
    PROFILE_KEY,
    QUALITY_CHECK,
    QUALITY_KEY,
    SOURCE_KEY,
)
from assets.runner import PARTITION_RANGE_END_TAG, PARTITION_RANGE_START_TAG
from flowstone.definitions import build_definitions, defs


def bake_batch(instance, names):
    """What the backfill daemon launches for a single-run backfill over ``names``."""
    instance.add_dynamic_partitions(MODELS.name, names)
    job = defs.resolve_job_def(BAKE_JOB.name)
    tags = {PARTITION_RANGE_START_TAG: names[0], PARTITION_RANGE_END_TAG: names[-1]}
    return job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)


def metadata(instance, key, name):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[name]), limit=5
    ).records
    return [r.asset_materialization.metadata for r in records]


def check_status(instance) -> dict[str, str]:
    """Each model's status of the quality check, as the Dagster UI computes it."""
    key = dg.AssetCheckKey(QUALITY_KEY, QUALITY_CHECK)
    with dg.partition_loading_context(dynamic_partitions_store=instance):  # models are dynamic
        state = instance.event_log_storage.get_asset_check_state([(key, MODELS)])[key]
    return {
        partition: status.value
        for status, subset in state.subsets.items()
        for partition in subset.value.get_partition_keys()
    }


def test_the_bake_job_backfills_as_one_run_on_one_host_and_per_model_elsewhere(monkeypatch):
    monkeypatch.setenv("FLOWSTONE_PARTITIONS_PER_RUN", "3")
    for mode, policy in (("default", dg.BackfillPolicy.single_run()),
                         ("celery", dg.BackfillPolicy.multi_run(3))):  # fmt: skip
        built = defs if mode == "default" else build_definitions(mode=mode)
        job = built.resolve_job_def(BAKE_JOB.name)
        keys = job.asset_layer.selected_asset_keys
        assert DEPLOYED_KEY not in keys and {SOURCE_KEY, PACKAGE_KEY} <= keys
        for key in keys:
            assert built.get_assets_def(key).backfill_policy == policy, (mode, key)
        # deployment stays a run per approval, never part of a batch
        assert built.get_assets_def(DEPLOYED_KEY).backfill_policy is None


@pytest.mark.slow  # two whole bakes in one run (~30 s)
def test_two_models_in_one_run_keep_their_own_metadata_checks_and_rows(env, instance):
    write_tiny_classifier(env / "drop", name="alpha")
    write_tiny_classifier(env / "drop", name="beta", passes="[quantize_dynamic, torchscript]")
    result = bake_batch(instance, ["alpha", "beta"])
    assert result.success
    assert len(instance.get_run_records()) == 1

    checks = {c.partition: c for c in result.get_asset_check_evaluations()}
    assert set(checks) == {"alpha", "beta"} and all(c.passed for c in checks.values())
    assert check_status(instance) == {"alpha": "SUCCEEDED", "beta": "SUCCEEDED"}
    versions = {}
    for name, passes in (("alpha", 3), ("beta", 2)):
        (source,) = metadata(instance, SOURCE_KEY, name)
        assert source["path"].value.endswith(f"{name}.pt")
        assert source["passes"].value.count(",") == passes - 1
        (baked,) = metadata(instance, dg.AssetKey(["baking", "baked_model"]), name)
        assert baked["memory_reserved_mb"].value > 0
        (profile,) = metadata(instance, PROFILE_KEY, name)
        assert name in profile["chart_view"].value
        (package,) = metadata(instance, PACKAGE_KEY, name)
        versions[name] = package["version"].value
        assert f"partition%3D{name}" in package["uris"].value[name]  # the I/O manager's, by model
        manifest = result.output_for_node("baking__bake_package")[name]
        from flowstone.baking.package import read_manifest

        assert read_manifest(manifest).model == name
        assert len(read_manifest(manifest).passes) == passes
    assert versions["alpha"] != versions["beta"]  # each model's own metadata, not the last one's
    with duckdb.connect(str(env / "wh.duckdb"), read_only=True) as db:
        rows = db.execute(
            "select model, count(*) from baking.warehouse_bake_profile group by model order by model"
        ).fetchall()
        assert rows == [("alpha", 2), ("beta", 2)]


def test_a_failing_model_fails_only_its_own_check_and_stops_the_batch(env, instance):
    write_tiny_classifier(env / "drop", name="good", passes="[quantize_dynamic]")
    write_tiny_classifier(env / "drop", name="worse", passes="[prune]", threshold=1.01)
    result = bake_batch(instance, ["good", "worse"])
    assert not result.success
    verdicts = {
        c.partition: c.passed
        for c in result.get_asset_check_evaluations()
        if c.check_name == QUALITY_CHECK
    }
    assert verdicts == {"good": True, "worse": False}
    assert check_status(instance) == {"good": "SUCCEEDED", "worse": "FAILED"}
    # each model's quality is recorded on its own partition; nothing went past the check
    for name in ("good", "worse"):
        (quality,) = metadata(instance, QUALITY_KEY, name)
        assert quality["passed"].value is (name == "good")
        assert metadata(instance, PROFILE_KEY, name) == []
        assert metadata(instance, PACKAGE_KEY, name) == []


def test_a_model_that_fails_to_load_is_named_with_its_siblings(env, instance):
    write_tiny_classifier(env / "drop", name="fine", passes="[quantize_dynamic]")
    write_tiny_classifier(env / "drop", name="broken", passes="[quantize_dynamic]")
    (env / "drop" / "broken.pt").write_bytes(b"not a state dict")
    result = bake_batch(instance, ["fine", "broken"])
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert failure.step_key == "baking__source_model"
    error = failure.event_specific_data.error
    text = error.to_string()
    assert "1 of 2 models of this run failed" in text and "- broken:" in text
    assert "The other 1 were done" in text
    assert metadata(instance, SOURCE_KEY, "fine") == []  # the step shares the batch's fate


def _step_events(result, kind):
    return [e.step_key for e in result.all_events if e.event_type_value == kind]


@pytest.mark.slow  # two bakes in one run, two steps run twice (~30 s)
def test_a_passing_failure_is_retried_in_the_step_and_the_run_succeeds(env, instance, monkeypatch):
    """A pass that raises once: the bake steps' retry policy runs the step again in the same
    run. Package writes the object store refuses once, for both models: each is written again
    where it failed, so the package step is not started over. No run re-execution."""
    import json

    from flowstone.faults import fired

    write_tiny_classifier(env / "drop", name="alpha", passes="[quantize_dynamic, torchscript]")
    write_tiny_classifier(env / "drop", name="beta", passes="[quantize_dynamic]")
    plan = env / "faults.json"
    plan.write_text(json.dumps([
        {"id": "alpha-pass", "point": "pass", "action": "raise",
         "match": {"model": "alpha", "index": 1}},
        {"id": "alpha-store", "point": "store:put", "action": "raise",
         "match": {"key_contains": "bake_package/partition=alpha."}},
        {"id": "beta-store", "point": "store:put", "action": "raise",
         "match": {"key_contains": "bake_package/partition=beta."}},
    ]))  # fmt: skip
    monkeypatch.setenv("FLOWSTONE_FAULTS", str(plan))
    result = bake_batch(instance, ["alpha", "beta"])
    assert fired(plan) == {"alpha-pass", "alpha-store", "beta-store"}  # every fault happened
    assert result.success and len(instance.get_run_records()) == 1
    assert _step_events(result, "STEP_UP_FOR_RETRY") == ["baking__baked_model"]
    from flowstone.baking.package import read_manifest

    packages = result.output_for_node("baking__bake_package")
    assert {read_manifest(packages[n]).model for n in ("alpha", "beta")} == {"alpha", "beta"}
    assert len(read_manifest(packages["alpha"]).passes) == 2


def test_a_failure_that_would_fail_again_is_not_retried(env, instance):
    """A model that cannot load fails its step at once: the retry policy is for passing
    failures (flowstone.transient), not for a broken file."""
    write_tiny_classifier(env / "drop", name="broken", passes="[quantize_dynamic]")
    (env / "drop" / "broken.pt").write_bytes(b"not a state dict")
    result = bake_batch(instance, ["broken"])
    assert not result.success
    assert _step_events(result, "STEP_UP_FOR_RETRY") == []
    (failure,) = result.get_step_failure_events()
    text = failure.event_specific_data.error.to_string()
    assert "broken" in text and "source_model" in text
