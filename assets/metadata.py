"""Plain values from the core into Dagster metadata that reads well in the UI.

The core (``flowstone/``) returns plain values so it stays free of Dagster: numbers, text,
dicts, a ``Markdown`` table, a ``pathlib.Path`` or a pandas frame. This is the one place that
decides how each appears in the UI, for every domain's assets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import dagster as dg

from flowstone.baking.records.display import Markdown


def to_metadata(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` with Markdown, frames and paths as their metadata values; JSON for mappings."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, Markdown):
            out[key] = dg.MetadataValue.md(str(value))
        elif hasattr(value, "to_markdown"):  # a DataFrame (pandas stays out of code-location load)
            out[key] = dg.MetadataValue.md(value.to_markdown(index=False, floatfmt=".3f"))
        elif isinstance(value, os.PathLike) or key.endswith("_path") or key == "file":
            out[key] = dg.MetadataValue.path(os.fspath(value))
        elif isinstance(value, Mapping):
            out[key] = dg.MetadataValue.json(dict(value))
        else:
            out[key] = value
    return out
