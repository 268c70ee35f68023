"""The FlowStone code location: one `Definitions` object built from the packages around the core.

Loading must stay fast (no torch, no model, no network): it reads the suite files and the
evaluation settings, which is also where bad input is caught.
"""

from __future__ import annotations

import warnings

import dagster as dg

from assets.evaluation import build_evaluation_assets
from flowstone import paths
from flowstone.evaluation.catalog import load_catalog
from io_managers.local_fs import LocalPickleIOManager

# Observable sources and multi-to-single partition mappings are beta in Dagster 1.13; we rely on
# them on purpose (per-partition staleness) and pin the minor version.
warnings.filterwarnings("ignore", category=dg.BetaWarning)


def build_definitions() -> dg.Definitions:
    catalog = load_catalog()
    evaluation_assets = build_evaluation_assets(catalog)
    return dg.Definitions(
        assets=evaluation_assets,
        jobs=[
            dg.define_asset_job(
                "evaluation_job",
                selection=dg.AssetSelection.groups("evaluation"),
                description="Suite -> predictions -> scores -> report for one suite x system partition.",
            )
        ],
        resources={
            "io_manager": LocalPickleIOManager(base_dir=str(paths.outputs_dir() / "storage")),
        },
    )


defs = build_definitions()
