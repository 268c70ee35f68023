"""The approval sensors and the gated asset, ticked against a real Dagster test instance."""

from datetime import timedelta

import dagster as dg
import pytest

from assets.evaluation import REPORT_KEY
from assets.promotion import PROMOTED_SYSTEM_KEY, build_promotion_asset
from flowstone.approvals.flow import APPROVAL_REQUEST_TAG, process_decisions, run_key
from flowstone.approvals.machine import ApprovalPolicy, State
from flowstone.approvals.store import ApprovalStore
from flowstone.storage.sql import utcnow
from resources.approvals import ApprovalsResource
from resources.notifications import NotificationsResource
from sensors.approvals import build_approval_sensors

PARTITIONS = dg.MultiPartitionsDefinition(
    {
        "suite": dg.StaticPartitionsDefinition(["qa"]),
        "system": dg.StaticPartitionsDefinition(["base", "tuned"]),
    }
)
BASE = dg.MultiPartitionKey({"suite": "qa", "system": "base"})
TUNED = dg.MultiPartitionKey({"suite": "qa", "system": "tuned"})


@dg.asset(key=REPORT_KEY, partitions_def=PARTITIONS)
def report(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    version = context.run.tags.get("test/version", "v1")
    return dg.MaterializeResult(
        metadata={"exact_match": 0.82, "cases": 40}, data_version=dg.DataVersion(version)
    )


promoted = build_promotion_asset(PARTITIONS)


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def resources(store_url: str, outbox_url: str, fake_slack) -> dict:
    return {
        "approvals": ApprovalsResource(
            database_url=store_url,
            approvers={"promoted_system": ["alice", "group:leads"]},
            groups={"leads": ["bob"]},
            signing_secret="test-secret",
            base_url="http://approvals.test",
        ),
        "notifications": NotificationsResource(
            database_url=outbox_url,
            slack_token=fake_slack.token,
            slack_base_url=fake_slack.base_url,
            slack_channel="#approvals",
        ),
    }


def materialize_report(instance, partition, version: str) -> None:
    result = dg.materialize(
        [report], instance=instance, partition_key=partition, tags={"test/version": version}
    )
    assert result.success


def tick(sensor, instance, resources, cursor=None):
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as ctx:
        return sensor(ctx)


@pytest.mark.slow
def test_one_request_per_data_version_across_ticks(instance, resources, fake_slack, store_url):
    requests_sensor, _ = build_approval_sensors(PROMOTED_SYSTEM_KEY, REPORT_KEY)
    store = ApprovalStore(store_url)
    materialize_report(instance, BASE, "v1")
    first = tick(requests_sensor, instance, resources)
    assert first.cursor and first.skip_reason is None
    assert len(store.list()) == 1

    # Repeated ticks, with the cursor and without it (a reset cursor or a new daemon).
    again = tick(requests_sensor, instance, resources, first.cursor)
    assert again.skip_reason is not None
    tick(requests_sensor, instance, resources, None)
    rebuilt, _ = build_approval_sensors(PROMOTED_SYSTEM_KEY, REPORT_KEY)
    tick(rebuilt, instance, resources, None)
    # The same data version materialized again is the same question.
    materialize_report(instance, BASE, "v1")
    cursor = tick(requests_sensor, instance, resources, first.cursor).cursor
    requests = store.list()
    assert len(requests) == 1
    request = requests[0]
    assert (request.asset, request.partition, request.data_version) == (
        "promoted_system", "qa|base", "v1",
    )  # fmt: skip
    assert request.summary["exact_match"] == 0.82 and request.approvers == ["alice", "bob"]
    assert fake_slack.titles() == ["Approval required: promoted_system [qa|base]"]
    buttons = fake_slack.messages[0]["blocks"][-1]["elements"]
    assert buttons[0]["url"].startswith(f"http://approvals.test/requests/{request.id}?t=")

    # A new version supersedes the pending request and is announced once.
    materialize_report(instance, BASE, "v2")
    materialize_report(instance, TUNED, "v1")
    tick(requests_sensor, instance, resources, cursor)
    tick(requests_sensor, instance, resources, cursor)
    assert store.get(request.id).state == State.SUPERSEDED
    pending = {(r.partition, r.data_version) for r in store.list(states=[State.PENDING])}
    assert pending == {("qa|base", "v2"), ("qa|tuned", "v1")}
    assert len(fake_slack.messages) == 3


def _approved_request(instance, resources, store, by="alice", comment="ship it"):
    requests_sensor, _ = build_approval_sensors(PROMOTED_SYSTEM_KEY, REPORT_KEY)
    materialize_report(instance, BASE, "v1")
    tick(requests_sensor, instance, resources)
    (request,) = store.list(states=[State.PENDING])
    return store.decide(request.id, approve=True, by=by, comment=comment)


def test_exactly_one_run_per_approval_across_restarts(instance, resources, fake_slack, store_url):
    store = ApprovalStore(store_url)
    request = _approved_request(instance, resources, store)
    _, decisions = build_approval_sensors(PROMOTED_SYSTEM_KEY, REPORT_KEY)

    first = tick(decisions, instance, resources)
    assert len(first.run_requests) == 1
    run_request = first.run_requests[0]
    assert run_request.run_key == run_key(request.id)
    assert run_request.partition_key == "qa|base"
    assert run_request.tags[APPROVAL_REQUEST_TAG] == request.id
    assert run_request.asset_selection == [PROMOTED_SYSTEM_KEY]

    # Ticks repeat, the daemon restarts (new sensor objects, new contexts, no cursor).
    assert tick(decisions, instance, resources).run_requests == []
    _, restarted = build_approval_sensors(PROMOTED_SYSTEM_KEY, REPORT_KEY)
    assert tick(restarted, instance, resources).run_requests == []

    # The run the daemon would launch from that RunRequest: the gate lets it through.
    result = dg.materialize(
        [promoted],
        instance=instance,
        partition_key=run_request.partition_key,
        tags=run_request.tags,
        resources={"approvals": resources["approvals"]},
    )
    assert result.success
    metadata = result.asset_materializations_for_node(promoted.op.name)[0].metadata
    assert metadata["approved_by"].value == "alice"
    assert metadata["upstream_data_version"].value == "v1"

    assert tick(restarted, instance, resources).run_requests == []
    assert store.get(request.id).run_id == result.run_id
    assert "Approved: promoted_system [qa|base]" in fake_slack.titles()
    assert fake_slack.titles().count("Approved: promoted_system [qa|base]") == 1


@pytest.mark.slow
def test_gated_asset_refuses_runs_without_an_approval(instance, resources, store_url):
    materialize_report(instance, BASE, "v1")
    with pytest.raises(dg.Failure, match="gated on human approval"):
        dg.materialize(
            [promoted], instance=instance, partition_key=BASE,
            resources={"approvals": resources["approvals"]},
        )  # fmt: skip
    store = ApprovalStore(store_url)
    request = _approved_request(instance, resources, store)
    materialize_report(instance, BASE, "v2")  # upstream moved on after the approval
    with pytest.raises(dg.Failure, match="covers data version v1 .* current version is v2"):
        dg.materialize(
            [promoted], instance=instance, partition_key=BASE,
            tags={APPROVAL_REQUEST_TAG: request.id},
            resources={"approvals": resources["approvals"]},
        )  # fmt: skip


def test_relaunch_when_a_run_request_never_became_a_run(store_url):
    store = ApprovalStore(store_url)
    request = store.open_request("g", "", "v1", {}, ApprovalPolicy()).request
    store.decide(request.id, approve=True, by="x")
    sent = []
    now = utcnow()
    kwargs = dict(notify=sent.append, link_for=lambda i: i, has_run=lambda r: None)
    first = process_decisions(store, "g", now=now, **kwargs)
    assert [launch.relaunch for launch in first.launches] == [False]
    assert process_decisions(store, "g", now=now + timedelta(minutes=1), **kwargs).launches == []
    late = process_decisions(store, "g", now=now + timedelta(minutes=11), **kwargs)
    assert [launch.relaunch for launch in late.launches] == [True]  # same run key again
    kwargs["has_run"] = lambda r: "run-9"
    assert process_decisions(store, "g", now=now + timedelta(minutes=30), **kwargs).launches == []
    assert store.get(request.id).run_id == "run-9"
    assert [n.kind for n in sent] == ["approval_decided"]


def test_rejection_is_recorded_on_the_asset_and_notified(
    instance, resources, fake_slack, store_url
):
    requests_sensor, decisions = build_approval_sensors(PROMOTED_SYSTEM_KEY, REPORT_KEY)
    store = ApprovalStore(store_url)
    materialize_report(instance, TUNED, "v1")
    tick(requests_sensor, instance, resources)
    (request,) = store.list()
    store.decide(request.id, approve=False, by="bob", comment="exact match regressed")
    result = tick(decisions, instance, resources)
    assert result.run_requests == []
    (observation,) = result.asset_events
    assert isinstance(observation, dg.AssetObservation)
    assert observation.asset_key == PROMOTED_SYSTEM_KEY and observation.partition == "qa|tuned"
    assert observation.metadata["comment"].value == "exact match regressed"
    assert observation.metadata["decided_by"].value == "bob"
    assert tick(decisions, instance, resources).asset_events == []
    assert fake_slack.titles()[-1] == "Rejected: promoted_system [qa|tuned]"
    assert "exact match regressed" in fake_slack.messages[-1]["text"]


def test_timeout_escalates_and_notifies(instance, resources, fake_slack, store_url):
    resources["approvals"] = ApprovalsResource(
        database_url=store_url,
        approvers={"promoted_system": ["alice"]},
        on_timeout="escalate",
        escalation_approvers=["carol"],
        timeout_hours=1,
        signing_secret="test-secret",
    )
    store = ApprovalStore(store_url)
    past = utcnow() - timedelta(hours=2)
    request = store.open_request(
        "promoted_system", "qa|base", "v1", {}, resources["approvals"].policy(), now=past
    ).request
    _, decisions = build_approval_sensors(PROMOTED_SYSTEM_KEY, REPORT_KEY)
    result = tick(decisions, instance, resources)
    assert store.get(request.id).state == State.ESCALATED
    assert result.asset_events[0].metadata["decision"].value == "escalated"
    assert fake_slack.titles() == ["Approval escalated: promoted_system [qa|base]"]
    assert "Escalated to carol" in fake_slack.messages[0]["text"]
    tick(decisions, instance, resources)
    assert len(fake_slack.messages) == 1
    # The escalation approver can now decide; the gated run follows.
    store.decide(request.id, approve=True, by="carol")
    assert len(tick(decisions, instance, resources).run_requests) == 1


def test_timeout_expires_when_configured(instance, resources, fake_slack, store_url):
    store = ApprovalStore(store_url)
    policy = ApprovalPolicy(timeout_hours=1, on_timeout="expire")
    past = utcnow() - timedelta(hours=2)
    request = store.open_request("promoted_system", "qa|base", "v1", {}, policy, now=past).request
    _, decisions = build_approval_sensors(PROMOTED_SYSTEM_KEY, REPORT_KEY)
    result = tick(decisions, instance, resources)
    assert store.get(request.id).state == State.EXPIRED and result.run_requests == []
    assert fake_slack.titles() == ["Approval expired: promoted_system [qa|base]"]


def test_definitions_load_and_ticks_run_through_evaluate_tick(instance, resources, store_url):
    """The path the daemon's code server takes (evaluate_tick), not just direct invocation."""
    from sensors.notifications import build_notification_sensors

    defs = dg.Definitions(
        assets=[report, promoted],
        sensors=[
            *build_approval_sensors(PROMOTED_SYSTEM_KEY, REPORT_KEY),
            *build_notification_sensors(),
        ],
        resources=resources,
    )
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    requests_sensor = repo.get_sensor_def("promoted_system_approval_requests")
    decisions = repo.get_sensor_def("promoted_system_approval_decisions")
    materialize_report(instance, BASE, "v1")
    top = repo.get_top_level_resources()

    def scoped(sensor):  # what the code server builds for a tick
        return {k: top[k] for k in sensor.required_resource_keys}

    with dg.build_sensor_context(instance=instance, resources=scoped(requests_sensor)) as ctx:
        data = requests_sensor.evaluate_tick(ctx)
    assert data.cursor and ApprovalStore(store_url).list()
    (request,) = ApprovalStore(store_url).list()
    ApprovalStore(store_url).decide(request.id, approve=True, by="bob")
    with dg.build_sensor_context(
        instance=instance, resources=scoped(decisions), repository_def=repo
    ) as ctx:
        data = decisions.evaluate_tick(ctx)
    assert [r.run_key for r in data.run_requests] == [run_key(request.id)]
    # Resolution against the asset graph accepted the multi-partition key.
    assert data.run_requests[0].partition_key == "qa|base"


@pytest.mark.slow
def test_a_partition_that_failed_a_blocking_check_is_not_offered(instance, resources, store_url):
    """Blocking stops what is downstream of the failing partition only: its sibling, checked
    and passed, still gets a request; the failing one never does."""
    spec = dg.AssetCheckSpec(
        "good_enough", asset=REPORT_KEY, partitions_def=PARTITIONS, blocking=True
    )

    @dg.asset(key=REPORT_KEY, partitions_def=PARTITIONS, check_specs=[spec])
    def checked_report(context: dg.AssetExecutionContext):
        yield dg.Output(None, data_version=dg.DataVersion("v1"))
        yield dg.AssetCheckResult(passed=context.partition_key == BASE)

    for partition in (BASE, TUNED):
        result = dg.materialize(
            [checked_report], instance=instance, partition_key=partition, raise_on_error=False
        )
        assert result.success is (partition == BASE)
    requests_sensor, _ = build_approval_sensors(PROMOTED_SYSTEM_KEY, REPORT_KEY)
    tick(requests_sensor, instance, resources)
    assert [r.partition for r in ApprovalStore(store_url).list()] == [str(BASE)]
