"""The baking line as Dagster runs it: the drop sensor adds a partition and requests a bake,
the bake job materializes every step with its check, the package goes through the object
store, deployment waits for an approval, a failing bake changes nothing downstream, and
`flowstone models rollback` restores the previous deployment."""

import dagster as dg
import duckdb
import pytest
from bake_helpers import write_tiny_classifier
from typer.testing import CliRunner

from assets.baking import (
    BAKE_JOB,
    DEPLOYED_KEY,
    MODELS,
    PACKAGE_KEY,
    PROFILE_KEY,
    QUALITY_CHECK,
    QUALITY_KEY,
    SPEED_CHECK,
    TASK_CHECK,
)
from flowstone.approvals.flow import APPROVAL_REQUEST_TAG
from flowstone.approvals.machine import State
from flowstone.baking import intake
from flowstone.baking.package import read_manifest
from flowstone.cli import app as cli_app
from flowstone.definitions import defs


def tick(name, instance, cursor=None):
    sensor = defs.resolve_sensor_def(name)
    resources = {
        k: v for k, v in defs.resources.items() if k in ("models", "approvals", "notifications")
    }
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as ctx:
        return sensor(ctx)


def bake(instance, name, tags=None):
    job = defs.resolve_job_def(BAKE_JOB.name)
    return job.execute_in_process(
        instance=instance, partition_key=name, raise_on_error=False, tags=tags
    )


def latest(instance, key, name="tiny"):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[name]), limit=5
    ).records
    return [r.asset_materialization for r in records]


def deploy(instance, tags=None):
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={DEPLOYED_KEY})
    return job.execute_in_process(
        instance=instance, partition_key="tiny", raise_on_error=False, tags=tags
    )


@pytest.mark.slow  # a whole bake, approval, deploy and rollback through Dagster (~35 s)
def test_drop_bake_approve_deploy_and_rollback(env, instance):
    staged = write_tiny_classifier(env / "staging")
    intake.add_model(staged, "tiny", env / "drop")
    (env / "drop" / "tiny.validation.npz").write_bytes(
        (env / "staging" / "tiny.validation.npz").read_bytes()
    )

    first = tick("model_drop_sensor", instance)
    assert [r.partition_key for r in first.run_requests] == ["tiny"]
    assert first.dynamic_partitions_requests[0].partition_keys == ["tiny"]
    # Once per version: the same drop on the next tick is skipped.
    assert isinstance(tick("model_drop_sensor", instance, first.cursor), dg.SkipReason)
    instance.add_dynamic_partitions(MODELS.name, ["tiny"])

    result = bake(instance, "tiny")
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [
        (QUALITY_CHECK, True), (TASK_CHECK, True), (SPEED_CHECK, True)]  # fmt: skip
    profile = latest(instance, PROFILE_KEY)[0].metadata
    assert profile["threads"].value >= 1 and profile["size_ratio"].value > 0
    # the package step made this bake what baked:tiny points to
    assert (env / "ws" / "tiny" / "passed.json").exists()
    package = result.output_for_node("baking__bake_package")
    manifest = read_manifest(package)
    assert manifest.model == "tiny" and [p.name for p in manifest.passes] == [
        "prune", "quantize_dynamic", "torchscript"]  # fmt: skip
    assert manifest.quality.metric == "accuracy_retention" and "torch" in manifest.libraries
    uri = latest(instance, PACKAGE_KEY)[0].metadata["uri"].value
    assert "baking/bake_package/partition%3Dtiny" in uri
    with duckdb.connect(str(env / "wh.duckdb"), read_only=True) as db:
        rows = db.execute(
            "select variant, batch_size from baking.warehouse_bake_profile where model='tiny' order by variant"
        ).fetchall()
        assert rows == [("baked", 8), ("original", 8)]
        assert db.execute("select passed from baking.warehouse_bake_quality").fetchall() == [
            (True,)
        ]

    # A manual launch of the gated asset is refused.
    manual = deploy(instance)
    assert not manual.success
    assert "gated on human approval" in str(
        manual.get_step_failure_events()[0].event_specific_data.error
    )

    # The approval sensors: one request for the package's version, then approval -> one run.
    tick("baking__deployed_model_approval_requests", instance)
    store = defs.resources["approvals"].store()
    (request,) = store.list(states=[State.PENDING])
    assert (request.asset, request.partition) == ("baking/deployed_model", "tiny")
    store.decide(request.id, approve=True, by="ada", comment="fast enough")
    decisions = tick("baking__deployed_model_approval_decisions", instance)
    (run,) = decisions.run_requests
    assert run.tags[APPROVAL_REQUEST_TAG] == request.id
    assert deploy(instance, tags=run.tags).success
    deployments = defs.resources["models"].deployments()
    v1 = deployments.current("tiny")
    assert v1 == manifest.version
    assert (deployments.version_dir("tiny", v1) / "manifest.json").exists()

    # A new version whose bake fails its quality bar stops before profile and package;
    # the deployed version stays.
    worse = write_tiny_classifier(env / "staging2", passes="[prune]", threshold=1.01)
    intake.add_model(worse, "tiny", env / "drop", replace=True)
    second = tick("model_drop_sensor", instance, first.cursor)
    assert [r.partition_key for r in second.run_requests] == ["tiny"]
    failed = bake(instance, "tiny")
    assert not failed.success
    verdicts = {c.check_name: c.passed for c in failed.get_asset_check_evaluations()}
    assert verdicts == {QUALITY_CHECK: False, TASK_CHECK: True}
    assert len(latest(instance, PACKAGE_KEY)) == 1 and len(latest(instance, QUALITY_KEY)) == 2
    assert deployments.current("tiny") == v1

    # A version that passes quality but is held to a speed floor no bake can reach stops at
    # the blocking speed check: no package, the deployed version stays. Four rounds: with two,
    # a t-interval on one degree of freedom is too wide to rule anything out (and a 16-32-3
    # net's sub-millisecond timings on a busy machine still spread its ratio over 0.02-160x).
    slow = write_tiny_classifier(
        env / "staging_slow", extra="speed: {floor: 1000000000.0, min_rounds: 4, max_rounds: 4}"
    )
    intake.add_model(slow, "tiny", env / "drop", replace=True)
    too_slow = bake(instance, "tiny")
    assert not too_slow.success
    speed = [c for c in too_slow.get_asset_check_evaluations() if c.check_name == SPEED_CHECK]
    assert [c.passed for c in speed] == [False]
    assert "slower than the floor 1e+09x" in (speed[0].description or "")
    assert len(latest(instance, PACKAGE_KEY)) == 1 and deployments.current("tiny") == v1

    # A second good version deployed, then rolled back from the CLI.
    better = write_tiny_classifier(
        env / "staging3", passes="[{name: prune, sparsity: 0.1}, quantize_dynamic]"
    )
    intake.add_model(better, "tiny", env / "drop", replace=True)
    assert bake(instance, "tiny").success
    tick("baking__deployed_model_approval_requests", instance)
    (request2,) = store.list(states=[State.PENDING])
    store.decide(request2.id, approve=True, by="ada")
    decisions = tick("baking__deployed_model_approval_decisions", instance, decisions.cursor)
    (run2,) = decisions.run_requests
    assert deploy(instance, tags=run2.tags).success
    v2 = deployments.current("tiny")
    assert v2 != v1
    out = CliRunner().invoke(cli_app, ["models", "rollback", "tiny"])
    assert out.exit_code == 0, out.output
    assert f"rolled back from {v2} to {v1}" in out.output and deployments.current("tiny") == v1
