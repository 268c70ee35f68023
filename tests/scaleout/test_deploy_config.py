"""deploy/: the PostgreSQL instance, the Celery and Kubernetes executor settings, and the
scale-out wiring of the code location, each loaded through Dagster's own machinery.

- deploy/dagster.yaml becomes a real instance on a fresh PostgreSQL database and stores a run.
- deploy/k8s/dagster.yaml becomes a real instance too (K8sRunLauncher, S3 compute logs): no
  cluster runs here, so the pod's service-account files are written to a temp folder and
  KUBERNETES_SERVICE_HOST points at loopback, which is all ``load_incluster_config`` reads.
  The run-worker and step Job manifests are built from it with dagster-k8s's own builder.
- FLOWSTONE_EXECUTOR switches the executor and the evaluation step settings, and a step that
  fails once (its LLM server answers 500) is run again by the RetryPolicy.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import pytest

from tests.scaleout import stack as st

REPO = st.REPO
EVAL_STEPS = ("suite", "predictions", "scores", "report")


@pytest.fixture
def pg_env(monkeypatch) -> dict[str, str]:
    with st.fresh_database("fs_deploy_test") as env:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        yield env


def _instance(config: Path, home: Path):
    import dagster as dg

    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config, home / "dagster.yaml")
    return dg.DagsterInstance.from_config(str(home))


# --------------------------------------------------------------------------- instances


@pytest.mark.slow
def test_deploy_instance_runs_on_postgres(pg_env, tmp_path: Path) -> None:
    import dagster as dg
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    from assets.pools import ensure_pool_limits

    instance = _instance(REPO / "deploy" / "dagster.yaml", tmp_path / "home")
    try:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == 4
        assert {
            "key": "dagster/backfill",
            "value": {"applyLimitPerUniqueValue": True},
            "limit": 3,
        } in (queue.tag_concurrency_limits)
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert instance.run_retries_retry_on_asset_or_op_failure is False
        assert instance.run_monitoring_enabled

        # Per-pool limits live in the database; an operator's own setting is kept.
        instance.event_log_storage.set_concurrency_slots("llm", 2)
        assert ensure_pool_limits(instance) == {"warehouse": 1, "baking": 1, "llm": 2}
        assert instance.event_log_storage.get_concurrency_info("baking").slot_count == 1

        # Writing events is where the psycopg driver matters (dagster-postgres' NOTIFY).
        @dg.asset
        def probe() -> int:
            return 1

        result = dg.materialize([probe], instance=instance)
        assert result.success
        stored = instance.get_run_by_id(result.run_id)
        assert stored is not None and stored.status == dg.DagsterRunStatus.SUCCESS
        assert instance.fetch_materializations(probe.key, limit=1).records
    finally:
        instance.dispose()


@pytest.fixture
def in_cluster(tmp_path: Path, monkeypatch) -> Path:
    """What a pod sees: service-account token and CA files, and the API server's address."""
    from kubernetes.config import incluster_config

    folder = tmp_path / "serviceaccount"
    folder.mkdir()
    (folder / "token").write_text("test-token")
    (folder / "ca.crt").write_text("test-ca")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(folder / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(folder / "ca.crt"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(st.free_port()))
    monkeypatch.setenv("FLOWSTONE_IMAGE", "registry.example/flowstone:1.2.3")
    monkeypatch.setenv("FLOWSTONE_K8S_NAMESPACE", "flowstone")
    monkeypatch.setenv("FLOWSTONE_COMPUTE_LOG_BUCKET", "flowstone-logs")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return folder


@pytest.mark.slow
def test_k8s_instance_builds_run_and_step_jobs(
    pg_env, in_cluster, tmp_path: Path, monkeypatch
) -> None:
    from dagster._config import validate_config
    from dagster._core.storage.dagster_run import DagsterRun
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
    from dagster_k8s import K8sRunLauncher, k8s_job_executor
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import UserDefinedDagsterK8sConfig, construct_dagster_k8s_job

    from assets.scaleout import build_executor, executor_config

    instance = _instance(REPO / "deploy" / "k8s" / "dagster.yaml", tmp_path / "home")
    try:
        launcher = instance.run_launcher
        assert isinstance(launcher, K8sRunLauncher)
        assert launcher.job_namespace == "flowstone"
        assert launcher.job_image == "registry.example/flowstone:1.2.3"
        assert isinstance(instance.compute_log_manager, S3ComputeLogManager)
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 10

        run = DagsterRun(job_name="__ASSET_JOB", run_id="0123456789abcdef")
        context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=True)
        run_job = construct_dagster_k8s_job(
            job_config=context.get_k8s_job_config(job_image=None, run_launcher=launcher),
            args=["dagster", "api", "execute_run", "{}"],
            job_name="dagster-run-0123456789abcdef",
            component="run_worker",
            user_defined_k8s_config=context.run_k8s_config,
        )
        pod = run_job.spec.template.spec
        container = pod.containers[0]
        assert container.image == "registry.example/flowstone:1.2.3"
        assert pod.service_account_name == "flowstone"
        sources = {(s.config_map_ref or s.secret_ref).name for s in container.env_from}
        assert sources == {"flowstone-env", "flowstone-secrets"}
        env = {e.name: e for e in container.env}
        assert env["FLOWSTONE_EXECUTOR"].value == "k8s"
        assert env["DAGSTER_PG_PASSWORD"].value_from.secret_key_ref.name == "flowstone-postgresql"
        assert container.resources.limits == {"memory": "1Gi"}

        # Step pods: the executor settings validate and turn into a Job manifest.
        monkeypatch.setenv("FLOWSTONE_EXECUTOR", "k8s")
        assert build_executor().name == "k8s"
        config = executor_config("k8s")
        checked = validate_config(k8s_job_executor.config_schema.config_type, config)
        assert checked.success, checked.errors
        step_context = context.merge(
            K8sContainerContext(
                run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(config["step_k8s_config"])
            )
        ).merge(
            K8sContainerContext(
                run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(
                    config["per_step_k8s_config"]["evaluation__scores"]
                )
            )
        )
        step_job = construct_dagster_k8s_job(
            job_config=context.get_k8s_job_config(job_image=None, run_launcher=launcher),
            args=["dagster", "api", "execute_step"],
            job_name="dagster-step-abc",
            component="step_worker",
            user_defined_k8s_config=step_context.run_k8s_config,
        )
        assert step_job.spec.ttl_seconds_after_finished == 3600
        assert step_job.spec.template.spec.containers[0].resources.limits == {"memory": "6Gi"}
    finally:
        instance.dispose()


# --------------------------------------------------------------------------- code location


@pytest.mark.slow
def test_default_mode_runs_steps_in_the_run_process(monkeypatch) -> None:
    import dagster as dg

    from assets.scaleout import executor_mode
    from flowstone.definitions import build_definitions
    from flowstone.errors import ConfigError

    monkeypatch.delenv("FLOWSTONE_EXECUTOR", raising=False)
    defs = build_definitions()
    assert executor_mode() == "default"
    # one process per run, not one per step (each would load the code location again)
    assert defs.resolve_implicit_global_asset_job_def().executor_def.name == "in_process"
    assert defs.resolve_job_def("evaluation_job").executor_def.name == "in_process"
    assert defs.resolve_job_def("bake_model").executor_def.name == "in_process"
    for name in EVAL_STEPS:
        step = defs.get_assets_def(dg.AssetKey(["evaluation", name]))
        assert step.op.retry_policy is None and step.op.pool is None
        assert step.backfill_policy == dg.BackfillPolicy.single_run()
    monkeypatch.setenv("FLOWSTONE_EXECUTOR", "dask")
    with pytest.raises(
        ConfigError, match="FLOWSTONE_EXECUTOR.*dask.*default, multiprocess, celery, k8s"
    ):
        executor_mode()


@pytest.mark.slow
def test_multiprocess_mode_forks_steps_from_a_preloaded_forkserver(monkeypatch) -> None:
    """The executor option measured against the default in bench/bench_launch.py (f): one
    host, so the evaluation keeps single-run backfills and no step retries."""
    import dagster as dg

    from flowstone.definitions import build_definitions

    monkeypatch.setenv("FLOWSTONE_EXECUTOR", "multiprocess")
    defs = build_definitions()
    executor = defs.resolve_job_def("evaluation_job").executor_def
    assert executor.name == "multiprocess_forkserver"  # configured: forkserver, preloaded
    for name in EVAL_STEPS:
        step = defs.get_assets_def(dg.AssetKey(["evaluation", name]))
        assert step.op.retry_policy is None
        assert step.backfill_policy == dg.BackfillPolicy.single_run()


def test_celery_mode_sets_executor_retries_pools_and_backfill(monkeypatch) -> None:
    import dagster as dg
    from dagster_celery.cli import get_validated_config

    from assets.pools import LLM_POOL
    from assets.scaleout import STEP_RETRY
    from flowstone.definitions import build_definitions

    monkeypatch.setenv("FLOWSTONE_EXECUTOR", "celery")
    monkeypatch.setenv("FLOWSTONE_PARTITIONS_PER_RUN", "5")
    monkeypatch.setenv("FLOWSTONE_CELERY_BROKER", "redis://127.0.0.1:6379/9")
    monkeypatch.setenv("FLOWSTONE_CELERY_BACKEND", "redis://127.0.0.1:6379/10")
    original = build_definitions(mode="default")
    defs = build_definitions()  # FLOWSTONE_EXECUTOR=celery

    job = defs.resolve_implicit_global_asset_job_def()
    assert job.executor_def.name == "celery"
    assert defs.resolve_job_def("evaluation_job").executor_def.name == "celery"
    for name in EVAL_STEPS:
        before = original.get_assets_def(dg.AssetKey(["evaluation", name]))
        after = defs.get_assets_def(dg.AssetKey(["evaluation", name]))
        assert after.op.retry_policy == STEP_RETRY
        assert after.op.pool == (LLM_POOL if name == "predictions" else None)
        assert after.backfill_policy == dg.BackfillPolicy.multi_run(5)
        assert after.check_keys == before.check_keys
        assert after.partitions_def == before.partitions_def
        assert after.code_versions_by_key == before.code_versions_by_key
        assert after.op.required_resource_keys == before.op.required_resource_keys
    warehouse = defs.get_assets_def(dg.AssetKey(["evaluation", "warehouse_scores"]))
    assert warehouse.op.pool == "warehouse"
    assert warehouse.backfill_policy == dg.BackfillPolicy.single_run()

    # The file the workers start with validates the way `dagster-celery worker start` reads it,
    # and both sides share the late-ack settings.
    worker = get_validated_config(str(REPO / "deploy" / "celery.yaml"))
    assert worker["broker"] == "redis://127.0.0.1:6379/9"
    assert worker["backend"] == "redis://127.0.0.1:6379/10"
    assert worker["config_source"]["task_acks_late"] is True
    assert worker["config_source"]["task_reject_on_worker_lost"] is True

    monkeypatch.setenv("FLOWSTONE_PARTITIONS_PER_RUN", "0")
    from flowstone.errors import ConfigError

    with pytest.raises(ConfigError, match="FLOWSTONE_PARTITIONS_PER_RUN"):
        build_definitions()


@pytest.mark.slow
def test_step_retry_policy_reruns_a_failed_llm_step(tmp_path: Path, monkeypatch) -> None:
    """The rebuilt evaluation ops still compute, their values go to the shared object store
    (S3 on moto's server), and a predictions step whose provider fails (HTTP 500, no
    client-side retry) runs again and succeeds."""
    import boto3
    import dagster as dg
    from dagster._core.events import DagsterEventType
    from moto.server import ThreadedMotoServer
    from support.llm_stub_server import StubLLMServer

    from flowstone.definitions import build_definitions

    with contextlib.ExitStack() as cleanup:
        stub = cleanup.enter_context(StubLLMServer())
        port = st.free_port()
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        moto.start()
        cleanup.callback(moto.stop)
        s3_env = {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "FLOWSTONE_OBJECT_STORE_URL": "s3://fs-scaleout/evals",
        }
        for key, value in s3_env.items():
            monkeypatch.setenv(key, value)
        s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
        s3.create_bucket(Bucket="fs-scaleout")
        catalog = st.write_catalog(
            tmp_path,
            suites=1,
            cases_per_suite=3,
            llm_systems=[
                {
                    "name": "stub-llm",
                    "providers": [
                        {
                            "kind": "openai",
                            "model": "stub-model",
                            "base_url": stub.openai_url,
                            "api_key": "env:STUB_LLM_KEY",
                        }
                    ],
                }
            ],
            systems_defaults={
                "cache": False,
                "concurrency": 1,
                "retry": {"max_attempts": 1},
                "breaker": {"failure_threshold": 100},
            },
        )
        for key, value in {**catalog, "STUB_LLM_KEY": "k"}.items():
            monkeypatch.setenv(key, value)
        defs = build_definitions(mode="celery")
        assert defs.resources["io_manager"].bucket == "fs-scaleout"
        selected = [
            a
            for a in defs.assets
            if isinstance(a, dg.AssetsDefinition)
            and a.is_executable
            and len(a.keys) == 1
            and a.key.path[-1] in EVAL_STEPS
            and a.key.path[0] == "evaluation"
        ]
        stub.inject("500")
        instance = cleanup.enter_context(dg.instance_for_test())
        started = time.monotonic()
        result = dg.materialize(
            selected,
            partition_key="suite00|stub-llm",
            instance=instance,
            resources=defs.resources,
        )
        assert result.success
        events = instance.all_logs(result.run_id)
        kinds = [e.dagster_event.event_type for e in events if e.dagster_event]
        assert kinds.count(DagsterEventType.STEP_UP_FOR_RETRY) == 1
        retried = [
            e.dagster_event.step_key
            for e in events
            if e.dagster_event and e.dagster_event.event_type == DagsterEventType.STEP_UP_FOR_RETRY
        ]
        assert retried == ["evaluation__predictions"]
        report = result.asset_materializations_for_node("evaluation__report")[0]
        assert report.metadata["cases"].value == 3
        assert stub.calls >= 4  # the failed call and the three answered ones
        stored = [o["Key"] for o in s3.list_objects_v2(Bucket="fs-scaleout")["Contents"]]
        for name in EVAL_STEPS:
            assert any(k.startswith(f"evals/evaluation/{name}/") for k in stored), stored
        assert time.monotonic() - started < 120


def test_a_typo_in_the_executor_settings_stops_the_code_location(
    tmp_path: Path, monkeypatch
) -> None:
    import yaml

    from assets.scaleout import build_executor
    from flowstone.errors import ConfigError

    document = yaml.safe_load((REPO / "deploy" / "celery.yaml").read_text())
    document["execution"]["config"]["brokr"] = "redis://127.0.0.1:6379/0"
    bad = tmp_path / "celery.yaml"
    bad.write_text(yaml.safe_dump(document))
    monkeypatch.setenv("FLOWSTONE_CELERY_CONFIG", str(bad))
    with pytest.raises(ConfigError, match=r"celery\.yaml: 'execution.config': .*\"brokr\""):
        build_executor("celery")
    monkeypatch.setenv("FLOWSTONE_CELERY_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="missing.yaml.*FLOWSTONE_CELERY_CONFIG"):
        build_executor("celery")
