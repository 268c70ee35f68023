"""The embedded default I/O manager: pickles under outputs/storage, one file a partition.

Dagster's own filesystem I/O manager refuses an output that covers several partitions, which
is what a single-run backfill produces; this one accepts a dict keyed by partition and writes
each partition where a one-partition run would have written it, so either kind of run reads
the other's outputs.
"""

from typing import Any

import dagster as dg
from dagster._core.storage.fs_io_manager import PickledObjectFilesystemIOManager


class BatchPickleIOManager(PickledObjectFilesystemIOManager):
    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if not (context.has_asset_partitions and len(context.asset_partition_keys) > 1):
            super().handle_output(context, obj)
            return
        expected = set(context.asset_partition_keys)
        if not isinstance(obj, dict) or set(obj) != expected:
            got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise dg.DagsterInvariantViolationError(
                f"asset {context.asset_key.to_user_string()} ran for {len(expected)} partitions and "
                f"must return a dict keyed by partition; got {got}"
            )
        paths = self._get_paths_for_partitions(context)  # noqa: SLF001 - pinned Dagster minor
        for key, path in paths.items():
            self.make_directory(path.parent)
            self.dump_to_path(context=context, obj=obj[key], path=path)
        context.add_output_metadata({"partitions": len(paths)})


class LocalPickleIOManager(dg.ConfigurableIOManagerFactory):
    """Pickled outputs in a local folder (the default when no object store is configured)."""

    base_dir: str

    def create_io_manager(self, context) -> BatchPickleIOManager:
        return BatchPickleIOManager(base_dir=self.base_dir)
