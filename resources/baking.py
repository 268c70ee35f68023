"""Where models come from and where approved bakes go, as one resource the baking assets and
the drop sensor share.

``location`` is a local folder (default ``<outputs>/models``, or ``FLOWSTONE_MODELS_DIR``) or
an ``s3://bucket/prefix`` (``FLOWSTONE_MODELS_URI``) read through dagster-aws's S3Resource;
``deploy_dir`` is the deployment location. The memory budget caps what concurrent bakes on
one host may hold together (see ``flowstone.baking.budget``).
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import Field

from flowstone.baking import intake
from flowstone.baking.budget import DEFAULT_BUDGET_MB, MemoryBudget
from flowstone.baking.deploy import Deployments
from flowstone.errors import FlowStoneError
from flowstone.paths import bake_workspace, deployments_dir, models_dir


class ModelIntakeResource(dg.ConfigurableResource):
    """The model drop location, the deployment location and the bake memory budget."""

    location: str | None = Field(
        default=None,
        description="Drop folder or s3://bucket/prefix watched for models (default: "
        "FLOWSTONE_MODELS_URI, else FLOWSTONE_MODELS_DIR, else <outputs>/models).",
    )
    s3: S3Resource | None = Field(default=None, description="S3 access for an s3:// location.")
    deploy_dir: str | None = Field(
        default=None, description="Deployment location (default <outputs>/deployments)."
    )
    memory_budget_mb: float = Field(
        default=DEFAULT_BUDGET_MB,
        description="Memory all bakes on this host may reserve together, in MB.",
    )

    def resolved_location(self) -> str:
        return self.location or os.environ.get("FLOWSTONE_MODELS_URI") or str(models_dir())

    def _client(self) -> object:
        if self.s3 is None:
            return S3Resource(endpoint_url=os.environ.get("FLOWSTONE_S3_ENDPOINT_URL")).get_client()
        return self.s3.get_client()

    def scan(self) -> list[intake.Drop]:
        location = self.resolved_location()
        if location.startswith("s3://"):
            return intake.scan_s3(self._client(), location)
        return intake.scan_local(Path(location))

    def local_path(self, name: str) -> Path:
        """The dropped model ``name`` on local disk (downloaded first from S3)."""
        drop = next((d for d in self.scan() if d.name == name), None)
        if drop is None:
            raise FlowStoneError(
                f"model '{name}' is not in {self.resolved_location()} any more; drop it again or "
                "delete the partition"
            )
        if drop.location.startswith("s3://"):
            return intake.fetch_s3(
                self._client(), drop.location, bake_workspace() / "_downloads" / name
            )
        return Path(drop.location)

    def deployments(self) -> Deployments:
        return Deployments(Path(self.deploy_dir) if self.deploy_dir else deployments_dir())

    def budget(self) -> MemoryBudget:
        return MemoryBudget(bake_workspace() / "memory_budget.sqlite", self.memory_budget_mb)
