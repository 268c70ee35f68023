"""A small evaluation on the product's code location, run in process on a throwaway instance.

The warehouse/dbt tests (tests/dbt) and the viewer tests (tests/web) both need real
materializations of a few suite x system partitions: suites written as JSONL, the product's
``build_definitions`` on that catalog with a local objects folder, and the in-process runner.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from support.evaluation import TunableSystem


class Lab:
    """Everything a test needs: definitions, instance, and helpers to run them.

    ``suites`` maps a suite name to its cases (JSONL records), ``settings`` is the
    evaluation.yaml content, ``baselines`` the systems evaluated next to ``tunable``."""

    def __init__(
        self,
        tmp: Path,
        instance: Any,
        project_dir: Path,
        suites: Mapping[str, Sequence[Mapping[str, Any]]],
        settings: Mapping[str, Any],
        baselines: Sequence[Any] | None = None,
    ):
        from flowstone.evaluation.catalog import load_catalog
        from flowstone.systems.base import SystemRegistry
        from flowstone.systems.baselines import EchoSystem

        self.suites_dir = tmp / "suites"
        self.suites_dir.mkdir()
        for name, cases in suites.items():
            (self.suites_dir / f"{name}.jsonl").write_text("\n".join(json.dumps(c) for c in cases))
        settings_path = tmp / "evaluation.yaml"
        settings_path.write_text(json.dumps(settings))
        self.tmp = tmp
        self.tunable = TunableSystem()
        systems = [*(baselines if baselines is not None else [EchoSystem()]), self.tunable]
        self.catalog = load_catalog(self.suites_dir, settings_path, SystemRegistry(systems))
        self.instance = instance
        self.objects = tmp / "objects"
        self.warehouse = tmp / "warehouse.duckdb"
        self.project_dir = project_dir
        self.build()

    def build(self) -> None:
        """The product's code location on this lab's suites, objects folder and pool."""
        from assets.dbt import load_dbt_project
        from flowstone.definitions import build_definitions
        from io_managers.object_store import ObjectStoreIOManager
        from resources.worker_pool import PythonWorkerPoolResource

        self.project = load_dbt_project()
        self.defs = build_definitions(
            catalog=self.catalog,
            resources={
                "io_manager": ObjectStoreIOManager(base_path=str(self.objects)),
                "worker_pool": PythonWorkerPoolResource(),
            },
        )
        self.keys = self.defs.resolve_job_def("evaluation_job").partitions_def.get_partition_keys()

    def evaluate(self) -> None:
        from assets.runner import execute_partitions

        job = self.defs.resolve_job_def("evaluation_job")
        results = execute_partitions(job, self.instance, self.keys, single_run=True)
        assert all(result.success for result in results.values())

    def compare(self, suites: Sequence[str] | None = None) -> dict[str, Any]:
        """Materialize ``evaluation/comparison`` for each suite (all by default), in process;
        returns each suite's run result."""
        job = self.defs.resolve_job_def("comparison_job")
        names = list(suites) if suites is not None else job.partitions_def.get_partition_keys()
        return {
            name: job.execute_in_process(
                partition_key=name, instance=self.instance, raise_on_error=False
            )
            for name in names
        }
