"""The FlowStone code location: one `Definitions` object built from the packages around the core.

Loading must stay fast (no torch, no model, no network): it reads the suite files and the
evaluation settings, which is also where bad input is caught.
"""

from __future__ import annotations

import warnings

import dagster as dg

from assets.analytics import build_analytics_definitions
from assets.baking import build_baking_definitions
from assets.evaluation import REPORT_KEY, build_evaluation_assets, evaluation_partitions
from assets.promotion import PROMOTED_SYSTEM_KEY, build_promotion_asset
from assets.scaleout import build_executor, evaluation_step_settings, executor_mode
from flowstone.evaluation.catalog import load_catalog
from io_managers.object_store import object_store_io_manager_from_env
from resources.approvals import approvals_resource_from_env
from resources.llm import LLMResource
from resources.notifications import notifications_resource_from_env
from resources.worker_pool import worker_pool_resource_from_env
from sensors.approvals import build_approval_sensors
from sensors.notifications import build_notification_sensors

# Observable sources and multi-to-single partition mappings are beta in Dagster 1.13; we rely on
# them on purpose (per-partition staleness) and pin the minor version.
warnings.filterwarnings("ignore", category=dg.BetaWarning)


def build_definitions(mode: str | None = None) -> dg.Definitions:
    """The whole code location. ``mode`` is the executor (``default``, ``celery`` or ``k8s``;
    unset: ``FLOWSTONE_EXECUTOR``): on the default one, one process runs a backfill as one run;
    the scale-out ones give the evaluation steps retries, the ``llm`` pool and multi-run
    backfills (``assets/scaleout.py``)."""
    mode = mode or executor_mode()
    catalog = load_catalog()
    evaluation_assets = build_evaluation_assets(catalog, evaluation_step_settings(mode))
    promotion = build_promotion_asset(evaluation_partitions(catalog), upstream_key=REPORT_KEY)
    evaluation_job = dg.define_asset_job(
        "evaluation_job",
        selection=dg.AssetSelection.groups("evaluation"),
        description="Suite -> predictions -> scores -> report for suite x system partitions.",
    )
    core = dg.Definitions(
        assets=[*evaluation_assets, promotion],
        jobs=[evaluation_job],
        sensors=[
            *build_approval_sensors(PROMOTED_SYSTEM_KEY, REPORT_KEY),
            *build_notification_sensors(),
        ],
        resources={
            "io_manager": object_store_io_manager_from_env(),
            "llm": LLMResource(),
            "worker_pool": worker_pool_resource_from_env(),
            "approvals": approvals_resource_from_env(),
            "notifications": notifications_resource_from_env(),
        },
        executor=build_executor(mode),
    )

    return dg.Definitions.merge(
        core, build_analytics_definitions(catalog, evaluation_job), build_baking_definitions()
    )


# The single-machine default unless FLOWSTONE_EXECUTOR asks for Celery or Kubernetes
# (deploy/README.md).
defs = build_definitions()
