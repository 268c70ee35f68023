"""The FlowStone code location: the one place that assembles ``Definitions``.

The modules around the core each export their pieces: ``assets/*`` assets, jobs, partitions
and keys; ``sensors/*`` sensors and schedules; ``resources/*`` and ``io_managers/*``
resources. Only this module puts them together, so a newcomer finds every asset, job,
sensor, schedule, resource and the executor of the location here.

Loading must stay fast (no torch, no model, no network): it reads the suite files and the
evaluation settings, which is also where bad input is caught.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster_dbt import DbtProject

from assets.baking import BAKE_JOB, BAKE_WAREHOUSE_IO_MANAGER_KEY, DEPLOYED_KEY, bake_assets
from assets.baking import PACKAGE_KEY as BAKE_PACKAGE_KEY
from assets.comparison import COMPARISON_KEY, build_comparison_asset, comparison_job
from assets.dbt import build_dbt_assets, build_dbt_job, dbt_resource, load_dbt_project
from assets.evaluation import (
    EVALUATION_JOB,
    REPORT_KEY,
    build_evaluation_assets,
    evaluation_partitions,
)
from assets.promotion import PROMOTED_SYSTEM_KEY, build_promotion_asset
from assets.scaleout import (
    bake_backfill_policy,
    build_executor,
    evaluation_step_settings,
    executor_mode,
)
from assets.warehouse import GROUP as WAREHOUSE_GROUP
from assets.warehouse import (
    WAREHOUSE_IO_MANAGER_KEY,
    build_warehouse_assets,
    warehouse_job,
)
from flowstone.evaluation.catalog import Catalog, load_catalog
from flowstone.llm import state as llm_state
from io_managers.database import DatabaseIOManager
from io_managers.object_store import object_store_io_manager_from_env
from resources.approvals import approvals_resource_from_env
from resources.baking import ModelIntakeResource
from resources.llm import LLMResource
from resources.notifications import notifications_resource_from_env
from resources.worker_pool import worker_pool_resource_from_env
from sensors.approvals import build_approval_sensors
from sensors.baking import model_drop_sensor
from sensors.dead_runs import dead_run_sensor
from sensors.llm_batches import build_llm_batch_sensor
from sensors.model_refs import build_model_refs_sensor
from sensors.notifications import build_notification_sensors
from sensors.schedules import (
    build_dbt_schedule,
    build_nightly_evaluation_schedule,
    build_warehouse_automation_sensor,
)

# Observable sources and multi-to-single partition mappings are beta in Dagster 1.13; we rely on
# them on purpose (per-partition staleness) and pin the minor version.
warnings.filterwarnings("ignore", category=dg.BetaWarning)


def build_definitions(
    mode: str | None = None,
    catalog: Catalog | None = None,
    resources: Mapping[str, Any] | None = None,
) -> dg.Definitions:
    """The whole code location. ``mode`` is the executor (``default``, ``celery`` or ``k8s``;
    unset: ``FLOWSTONE_EXECUTOR``): on the default one, one process runs a backfill as one run;
    the scale-out ones give the evaluation steps retries, the ``llm`` pool and multi-run
    backfills (``assets/scaleout.py``). ``catalog`` (default: the project's suites, systems and
    settings) and ``resources`` (replacing the defaults by key) let a test or a notebook run
    the same location on its own suites and stores."""
    mode = mode or executor_mode()
    llm_state.current_config()  # a malformed FLOWSTONE_LLM_STATE fails the load, naming it
    catalog = catalog or load_catalog()
    partitions = evaluation_partitions(catalog)
    project = load_dbt_project()
    warehouse_assets = build_warehouse_assets(catalog)
    dbt_assets = build_dbt_assets(project)
    dbt_job = build_dbt_job(dbt_assets)
    return dg.Definitions(
        assets=[
            # evaluation: suite -> predictions -> scores -> report, and the gated promotion
            *build_evaluation_assets(catalog, evaluation_step_settings(mode)),
            build_comparison_asset(catalog),
            build_promotion_asset(partitions, upstream_key=REPORT_KEY),
            # analytics: the DuckDB warehouse and the dbt project over it
            *warehouse_assets,
            *dbt_assets,
            # baking: source -> baked -> quality -> profile -> package -> deployed
            *bake_assets(bake_backfill_policy(mode)),
        ],
        jobs=[EVALUATION_JOB, comparison_job, warehouse_job, dbt_job, BAKE_JOB],
        schedules=[
            build_nightly_evaluation_schedule(EVALUATION_JOB, partitions),
            build_dbt_schedule(dbt_job),
        ],
        sensors=[
            *build_approval_sensors(PROMOTED_SYSTEM_KEY, REPORT_KEY),
            *build_approval_sensors(DEPLOYED_KEY, BAKE_PACKAGE_KEY),
            *build_notification_sensors(),
            model_drop_sensor,
            build_llm_batch_sensor(catalog, EVALUATION_JOB),
            build_model_refs_sensor(catalog),
            build_warehouse_automation_sensor(
                dg.AssetSelection.groups(WAREHOUSE_GROUP)
                | dg.AssetSelection.assets(*dbt_assets, COMPARISON_KEY)
            ),
            # pids mean something on one host only (Celery and Kubernetes runs are elsewhere)
            *([dead_run_sensor] if mode == "default" else []),
        ],
        resources={**default_resources(project), **(resources or {})},
        executor=build_executor(mode),
    )


def default_resources(project: DbtProject) -> dict[str, Any]:
    """The embedded defaults, each switched to a real service by the environment
    (``.env.example``)."""
    return {
        "io_manager": object_store_io_manager_from_env(),
        "llm": LLMResource(),
        "worker_pool": worker_pool_resource_from_env(),
        "approvals": approvals_resource_from_env(),
        "notifications": notifications_resource_from_env(),
        "models": ModelIntakeResource(),
        # a release may add columns (e.g. confidence intervals): add them to an existing
        # warehouse instead of refusing to write it; existing columns never change
        WAREHOUSE_IO_MANAGER_KEY: DatabaseIOManager(allow_schema_evolution=True),
        BAKE_WAREHOUSE_IO_MANAGER_KEY: DatabaseIOManager(partition_column="model"),
        "dbt": dbt_resource(project),
    }


# The single-machine default unless FLOWSTONE_EXECUTOR asks for Celery or Kubernetes
# (deploy/README.md).
defs = build_definitions()
