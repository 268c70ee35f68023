"""Asset values as the object-store I/O manager wrote them, read back without Dagster.

Why here and not through Dagster: the viewer is a web app for people and must not load the
code location; the I/O manager's key layout (``flowstone.storage.keys.object_key_for``) and
codec are plain Python, so the viewer reads exactly the objects the assets wrote, never a
copy. Only each partition's latest value exists: a re-materialization replaces the object.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from flowstone.storage.errors import ObjectNotFoundError
from flowstone.storage.keys import object_key_for
from flowstone.storage.location import DEFAULT_PREFIX, ObjectStoreLocation
from flowstone.storage.object_store import ObjectStore
from flowstone.storage.objects import load_object
from flowstone.storage.versions import StoredVersion, list_versions, load_version
from flowstone.web.records import (
    CaseInput,
    MetricPairs,
    PartitionReport,
    SystemAnswer,
    comparison_from_stored,
)

EVALUATION = "evaluation"
BAKING = "baking"
_MULTI = re.compile(r"^suite=(?P<suite>[^/]+)/system=(?P<system>[^/]+)\.fso$")
_SINGLE = re.compile(r"^partition=(?P<key>[^/]+)\.fso$")


@dataclass(frozen=True, order=True)
class PartitionKey:
    """One suite x system partition of the evaluation assets."""

    suite: str
    system: str


def open_store(location: ObjectStoreLocation) -> tuple[ObjectStore, str]:
    """The store the code location's I/O manager writes (``io_managers/object_store.py``,
    ``object_store_io_manager_from_env``) and the key prefix in front of every asset path.

    S3 endpoint and credentials come from boto3's usual ``AWS_*`` variables, as for the I/O
    manager; boto3 is imported only for an S3 location."""
    if location.is_s3:
        import boto3

        from flowstone.storage.s3_store import S3ObjectStore

        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        client = boto3.client("s3", endpoint_url=endpoint)
        return S3ObjectStore(client, location.bucket or ""), location.prefix or DEFAULT_PREFIX
    from flowstone.storage.local_store import LocalObjectStore

    return LocalObjectStore(location.local_folder, fsync=False), DEFAULT_PREFIX


class StoredValues:
    """Reads the evaluation and baking assets' latest values from one object store."""

    def __init__(self, store: ObjectStore, prefix: str = DEFAULT_PREFIX, where: str = ""):
        self.store = store
        self.prefix = prefix
        self.where = where or prefix

    # -- keys ---------------------------------------------------------------------------

    def _folder(self, *asset_path: str) -> str:
        return "/".join([p for p in self.prefix.strip("/").split("/") if p] + list(asset_path))

    def _load(self, asset_path: tuple[str, ...], partition: Any) -> Any | None:
        key = object_key_for(self.prefix, asset_path, partition)
        try:
            return load_object(self.store, key)
        except ObjectNotFoundError:
            return None

    def _listed(self, *asset_path: str) -> Iterator[str]:
        folder = self._folder(*asset_path) + "/"
        for key in self.store.list(folder):
            yield key[len(folder) :]

    # -- evaluation ---------------------------------------------------------------------

    def partitions(self) -> list[PartitionKey]:
        """Every suite x system partition whose report was stored, sorted."""
        found = set()
        for rest in self._listed(EVALUATION, "report"):
            match = _MULTI.match(rest)
            if match:
                found.add(PartitionKey(unquote(match["suite"]), unquote(match["system"])))
        return sorted(found)

    def report(self, key: PartitionKey) -> PartitionReport | None:
        value = self._load((EVALUATION, "report"), _dims(key))
        return PartitionReport.from_stored(value) if value is not None else None

    def cases(self, key: PartitionKey) -> list[CaseInput] | None:
        """The suite's cases as that partition's ``evaluation/suite`` stored them."""
        frame = self._load((EVALUATION, "suite"), _dims(key))
        if frame is None:
            return None
        cases = []
        for row in frame.to_dict(orient="records"):
            tags = row.get("tags")
            context = row.get("context")
            references = row.get("references")
            cases.append(
                CaseInput(
                    case_id=str(row["id"]),
                    input=str(row["input"]),
                    expected=str(row["expected"]),
                    context=context if isinstance(context, str) else None,
                    tags=tuple(str(t) for t in tags) if tags is not None else (),
                    references=tuple(str(r) for r in references)
                    if references is not None
                    else (str(row["expected"]),),
                )
            )
        return cases

    def answers(self, key: PartitionKey, metrics: list[str]) -> dict[str, SystemAnswer] | None:
        """Case id -> the system's output and its scores, from ``evaluation/scores``."""
        frame = self._load((EVALUATION, "scores"), _dims(key))
        return None if frame is None else _answers(frame, key.system, metrics)

    def score_versions(self, key: PartitionKey) -> list[StoredVersion]:
        """The kept materializations of the partition's ``evaluation/scores``, oldest first
        (the asset keeps its newest few; see ``flowstone.storage.versions``)."""
        return list_versions(
            self.store, object_key_for(self.prefix, (EVALUATION, "scores"), _dims(key))
        )

    def answers_in(
        self, key: PartitionKey, version: StoredVersion, metrics: list[str]
    ) -> dict[str, SystemAnswer]:
        """Like :meth:`answers`, from one kept version of the partition's scores."""
        return _answers(load_version(self.store, version), key.system, metrics)

    def comparison(self, suite: str) -> dict[str, MetricPairs] | None:
        """The suite's stored ``evaluation/comparison`` (metric -> pairs), or None before it
        was materialized."""
        value = self._load((EVALUATION, "comparison"), suite)
        return comparison_from_stored(value) if isinstance(value, dict) else None

    # -- baking -------------------------------------------------------------------------

    def models(self) -> list[str]:
        """Every model whose ``baking/source_model`` was stored, sorted."""
        names = set()
        for rest in self._listed(BAKING, "source_model"):
            match = _SINGLE.match(rest)
            if match:
                names.add(unquote(match["key"]))
        return sorted(names)

    def bake_value(self, asset: str, model: str) -> dict[str, Any] | None:
        """The stored dict of ``baking/<asset>`` for ``model`` (source_model, baked_model,
        bake_quality, bake_profile), or None when it was never materialized."""
        value = self._load((BAKING, asset), model)
        return value if isinstance(value, dict) else None


def _dims(key: PartitionKey) -> dict[str, str]:
    return {"suite": key.suite, "system": key.system}


def _answers(frame: Any, system: str, metrics: list[str]) -> dict[str, SystemAnswer]:
    present = [m for m in metrics if m in frame.columns]
    out = {}
    for row in frame.to_dict(orient="records"):
        scores: dict[str, float | None] = {}
        for metric in present:
            value = row[metric]
            scores[metric] = None if value is None or value != value else float(value)
        output = row.get("output")
        repeats = row.get("outputs")  # only a system with repeats stores each answer
        out[str(row["case_id"])] = SystemAnswer(
            system=system,
            output="" if output is None else str(output),
            scores=scores,
            outputs=tuple(str(o) for o in repeats) if repeats is not None else (),
        )
    return out
