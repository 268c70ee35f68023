"""The code location on Dagster's own scale-out: the Celery or Kubernetes executor.

Nothing changes unless ``FLOWSTONE_EXECUTOR`` is set, so a fresh clone keeps the
single-machine default. With ``FLOWSTONE_EXECUTOR=celery`` (or ``k8s``):

- every job and asset backfill runs its steps on the executor: Celery workers fed through a
  Redis broker (settings in ``deploy/celery.yaml``, shared with the workers) or one
  Kubernetes Job per step;
- the evaluation assets get a step :class:`~dagster.RetryPolicy` (a step that raises, e.g. on
  a dropped database connection, runs again with backoff), their predictions step joins the
  ``llm`` concurrency pool (provider rate limits are per process, so the pool is what bounds
  the calls of many workers), and a backfill is cut into runs of
  ``FLOWSTONE_PARTITIONS_PER_RUN`` partitions (default 1) instead of one single run, so the
  queued run coordinator and the workers have something to spread;
- asset values must then live where every host reads them: set
  ``FLOWSTONE_OBJECT_STORE_URL=s3://bucket/prefix`` (honoured in every mode, see
  :mod:`flowstone.storage.location`); the local default folder breaks once steps of one run
  land on two hosts.

A worker that dies under a step is covered by Celery itself (late acknowledgement: the step's
message goes to another worker), not by the RetryPolicy: dagster-celery reports a lost task
as a failed run, never as a failed step. ``deploy/README.md`` has the whole picture.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg

from assets.evaluation import StepSettings
from assets.pools import LLM_POOL
from flowstone.errors import ConfigError
from flowstone.paths import project_root

EXECUTOR_ENV = "FLOWSTONE_EXECUTOR"
CELERY_CONFIG_ENV = "FLOWSTONE_CELERY_CONFIG"
K8S_CONFIG_ENV = "FLOWSTONE_K8S_EXECUTOR_CONFIG"
PARTITIONS_PER_RUN_ENV = "FLOWSTONE_PARTITIONS_PER_RUN"
EXECUTORS = ("default", "multiprocess", "celery", "k8s")
ONE_HOST = ("default", "multiprocess")
# What the forkserver imports once, so that each step's process forks with the code location
# (and pandas, which every evaluation step loads) already in memory.
FORKSERVER_PRELOAD = ["dagster", "pandas", "flowstone.definitions"]
EXECUTOR_FILES = {
    "celery": (CELERY_CONFIG_ENV, "deploy/celery.yaml"),
    "k8s": (K8S_CONFIG_ENV, "deploy/k8s/executor.yaml"),
}

STEP_RETRY = dg.RetryPolicy(
    max_retries=2, delay=2.0, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


def executor_mode() -> str:
    """``default`` (each run's steps in its own process), ``multiprocess`` (a process per
    step, forked from a forkserver that preloaded the code location), ``celery`` or ``k8s``."""
    mode = (os.environ.get(EXECUTOR_ENV) or "default").strip().lower()
    if mode not in EXECUTORS:
        raise ConfigError(
            f"environment variable {EXECUTOR_ENV}",
            mode,
            f"not one of {', '.join(EXECUTORS)} (unset means default)",
        )
    return mode


def executor_config_path(mode: str) -> Path:
    """The YAML holding ``execution.config`` for ``mode``: ``$FLOWSTONE_CELERY_CONFIG`` /
    ``$FLOWSTONE_K8S_EXECUTOR_CONFIG``, else deploy/celery.yaml / deploy/k8s/executor.yaml."""
    variable, default = EXECUTOR_FILES[mode]
    value = os.environ.get(variable)
    return Path(value).expanduser().resolve() if value else project_root() / default


def executor_config(mode: str, path: Path | None = None) -> dict[str, Any]:
    """The ``execution.config`` block of the executor's YAML, the same file the Celery workers
    start with (``dagster-celery worker start -y``).

    Values stay as written (``{env: FLOWSTONE_CELERY_BROKER}``): Dagster resolves them in the
    run worker, so the broker URL and its password never show in the UI.
    """
    import yaml

    source = path or executor_config_path(mode)
    if not source.is_file():
        raise ConfigError(
            source,
            "<file>",
            f"{mode} executor settings not found; set {EXECUTOR_FILES[mode][0]} or restore it",
        )
    document = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    config = (document.get("execution") or {}).get("config") if isinstance(document, dict) else None
    if not isinstance(config, dict):
        raise ConfigError(
            source, "execution.config", f"must be a mapping of {mode} executor settings"
        )
    return config


def build_executor(mode: str | None = None) -> dg.ExecutorDefinition:
    """The executor for ``mode`` (default: from the environment).

    On one host every job runs its steps in the run's own process (``in_process_executor``):
    Dagster's multiprocess default starts a process per step, and each one loads the code
    location again, which on two cores made a launched partition cost 1.4x one process doing
    the same work (bench/bench_launch.py has the figures, forkserver with preloaded modules
    included). The steps of one run depend on each other, so a run loses no parallelism;
    runs still go side by side (``max_concurrent_runs`` in dagster.yaml), and scale-out modes
    keep their Celery or Kubernetes executors."""
    mode = mode or executor_mode()
    if mode == "multiprocess":
        return dg.multiprocess_executor.configured(
            {"start_method": {"forkserver": {"preload_modules": FORKSERVER_PRELOAD}}},
            name="multiprocess_forkserver",
        )
    if mode == "celery":
        from dagster_celery import celery_executor

        return _configured(celery_executor, mode)
    if mode == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError as exc:
            raise ConfigError(
                f"environment variable {EXECUTOR_ENV}",
                "k8s",
                "needs dagster-k8s: pip install 'dagster-k8s>=0.29,<0.30'",
            ) from exc
        return _configured(k8s_job_executor, mode)
    return dg.in_process_executor


def _configured(executor_def: dg.ExecutorDefinition, mode: str) -> dg.ExecutorDefinition:
    """``executor_def`` with the YAML's settings, checked now against the executor's schema
    (Dagster would only check them when a run starts); ``{env: ...}`` values stay unresolved."""
    # Private on purpose: dagster's public validate_run_config resolves ``{env: ...}`` values,
    # which must stay unresolved until a worker runs the step (its environment, not ours).
    # test_a_typo_in_the_executor_settings_stops_the_code_location fails if this breaks.
    from dagster._config import validate_config

    config = executor_config(mode)
    checked = validate_config(executor_def.config_schema.config_type, config)
    if not checked.success:
        raise ConfigError(
            executor_config_path(mode),
            "execution.config",
            "; ".join(error.message for error in checked.errors or ()),  # set when not success
        )
    return executor_def.configured(config, name=mode)


def partitions_per_run() -> int:
    from flowstone.env import positive_int

    return positive_int(PARTITIONS_PER_RUN_ENV, 1)


def bake_backfill_policy(mode: str | None = None) -> dg.BackfillPolicy:
    """How a backfill of many models is cut into runs: one run on one host (a run each would
    pay a run worker, the code location and torch's import per model), runs of
    ``FLOWSTONE_PARTITIONS_PER_RUN`` models on a scale-out executor, as for the evaluation."""
    mode = mode or executor_mode()
    if mode in ONE_HOST:
        return dg.BackfillPolicy.single_run()
    return dg.BackfillPolicy.multi_run(partitions_per_run())


def evaluation_step_settings(mode: str | None = None) -> StepSettings:
    """The evaluation steps' settings for ``mode``: Dagster's one-machine defaults, or on a
    scale-out executor a retry policy, the ``llm`` pool on the step that calls providers and
    backfills of ``FLOWSTONE_PARTITIONS_PER_RUN`` partitions a run."""
    mode = mode or executor_mode()
    if mode in ONE_HOST:
        return StepSettings()
    return StepSettings(
        backfill_policy=dg.BackfillPolicy.multi_run(partitions_per_run()),
        retry_policy=STEP_RETRY,
        llm_pool=LLM_POOL,
    )
