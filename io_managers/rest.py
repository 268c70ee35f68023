"""Dagster I/O manager that reads and writes asset partitions through an HTTP API.

Wiring over :class:`flowstone.storage.rest.RestPartitionClient`: the URL comes from a template
with ``{asset}``, ``{partition_key}`` and one placeholder per multi-partition dimension; the
auth token comes from a secret (``dg.EnvVar``). Loads retry 429/5xx/timeouts and map 404 to a
"no data for partition" error; writes carry an idempotency key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from flowstone.storage.rest import IDEMPOTENCY_HEADER, RestPartitionClient, RestSettings
from io_managers._partitions import PartitionSpec, partition_specs, split_multi_partition_output


class RestIOManager(dg.ConfigurableIOManager):
    """Asset partitions as HTTP resources (JSON or CSV bodies)."""

    url_template: str = Field(
        description="e.g. https://api.example.com/data/{asset}/{partition_key}; multi-partition "
        "dimensions are available by name, e.g. {suite}/{system}."
    )
    method: Literal["POST", "PUT"] = Field(default="PUT", description="Verb used to store.")
    format: Literal["json", "csv"] = Field(default="json", description="Body format.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra non-secret headers.")
    auth_token: str | None = Field(
        default=None, description="Secret token; pass dg.EnvVar('...') rather than a literal."
    )
    auth_header: str = Field(default="Authorization", description="Header carrying the token.")
    auth_scheme: str = Field(default="Bearer", description="Prefix before the token ('' for none).")
    timeout_seconds: float = Field(default=30.0, description="Per-request timeout.")
    max_attempts: int = Field(default=5, description="Attempts for 429/5xx/timeouts.")
    backoff_initial_seconds: float = Field(default=0.5, description="First retry delay.")
    backoff_max_seconds: float = Field(default=30.0, description="Longest retry delay.")

    def build_client(self) -> RestPartitionClient:
        headers = dict(self.headers)
        if self.auth_token:
            scheme = f"{self.auth_scheme} " if self.auth_scheme else ""
            headers[self.auth_header] = scheme + self.auth_token
        return RestPartitionClient(
            RestSettings(
                url_template=self.url_template,
                method=self.method,
                format=self.format,
                headers=headers,
                timeout_seconds=self.timeout_seconds,
                max_attempts=self.max_attempts,
                backoff_initial_seconds=self.backoff_initial_seconds,
                backoff_max_seconds=self.backoff_max_seconds,
            )
        )

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None and context.dagster_type.is_nothing:
            return
        asset = "/".join(context.asset_key.path)
        specs = partition_specs(context)
        items: Sequence[tuple[str | None, PartitionSpec | None, Any]] = (
            [(None, None, obj)] if not specs else split_multi_partition_output(context, obj, specs)
        )
        client = self.build_client()
        sent = {}
        try:
            for partition_key, spec, value in items:
                url = client.url_for(asset, spec)
                what = f"asset {asset} partition {partition_key!r}" if spec else f"asset {asset}"
                response = client.store(url, value, what=what)
                sent[url] = response.request.headers.get(IDEMPOTENCY_HEADER)
        finally:
            client.close()
        context.add_output_metadata(
            {
                "urls": dg.MetadataValue.json(list(sent)),
                "idempotency_keys": dg.MetadataValue.json(list(sent.values())),
                "requests": len(sent),
            }
        )

    def load_input(self, context: dg.InputContext) -> Any:
        asset = "/".join(context.asset_key.path)
        specs = partition_specs(context)
        client = self.build_client()
        try:
            if not specs:
                return client.load(client.url_for(asset, None), what=f"asset {asset}")
            values = {
                pk: client.load(client.url_for(asset, spec), what=f"asset {asset} partition {pk!r}")
                for pk, spec in specs
            }
        finally:
            client.close()
        return next(iter(values.values())) if len(values) == 1 else values
