"""Where the viewer reads from: the same places the assets write, and the readers over them.

Why one record: the app, the tests and ``flowstone serve`` must agree with the code location
on the object store, the warehouse file, the report folder, the bake workspace and the
deployment root; each comes from the same ``flowstone.paths`` / storage function the assets
use, unless a caller (a test) names another.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from flowstone import paths
from flowstone.errors import SuiteError
from flowstone.evaluation.suites import discover_suites
from flowstone.storage.location import ObjectStoreLocation, object_store_location
from flowstone.web.stored import StoredValues, open_store
from flowstone.web.warehouse import Warehouse


@dataclass(frozen=True)
class ViewerSources:
    """The locations the viewer reads; ``from_env`` gives the code location's defaults."""

    object_store: ObjectStoreLocation
    warehouse: Path
    reports_dir: Path
    suites_dir: Path
    bake_workspace: Path
    deployments_dir: Path

    @classmethod
    def from_env(cls) -> ViewerSources:
        return cls(
            object_store=object_store_location(),
            warehouse=paths.warehouse_path(),
            reports_dir=paths.reports_dir(),
            suites_dir=paths.suites_dir(),
            bake_workspace=paths.bake_workspace(),
            deployments_dir=paths.deployments_dir(),
        )

    def defined_suites(self) -> list[str]:
        """Suite files on disk (for a 404 that says a suite exists but has no results yet)."""
        try:
            return sorted(discover_suites(self.suites_dir))
        except SuiteError:  # no folder, no files: nothing defined is not an error here
            return []

    def describe(self) -> dict[str, str]:
        return {"object_store": self.object_store.url, "warehouse": str(self.warehouse)}


class Readers:
    """The object store opened once per app (an S3 client costs ~100 ms to build), and a
    warehouse reader whose every query opens and closes its own connection."""

    def __init__(self, sources: ViewerSources):
        self.sources = sources
        self._lock = threading.Lock()
        self._stored: StoredValues | None = None

    def stored(self) -> StoredValues:
        with self._lock:
            if self._stored is None:
                store, prefix = open_store(self.sources.object_store)
                self._stored = StoredValues(store, prefix, self.sources.object_store.url)
            return self._stored

    def warehouse(self) -> Warehouse:
        return Warehouse(self.sources.warehouse)
