"""The validated source model: what ``source_model`` stores and every later step starts from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowstone.baking.artifacts import Artifact
from flowstone.baking.config import BakeConfig, parse_config
from flowstone.baking.records.display import mb


@dataclass(frozen=True)
class SourceRecord:
    """A dropped model that loads, runs a forward pass and is within its size limit.

    ``config`` is the bake config as the source step validated it (kept as plain data so the
    stored record is the file's content); ``original`` is the immutable copy in the workspace
    that quality and profiling compare against, whatever happens to the drop folder meanwhile.
    """

    model: str
    version: str
    kind: str
    task: str
    sha256: str
    size_bytes: int
    parameters: int
    load_seconds: float
    forward_ms: float
    output_shape: list[int]
    input_shape: list[int] | None
    source_path: str
    workdir: Path
    config: dict[str, Any]
    original: Artifact

    def bake_config(self) -> BakeConfig:
        """The bake config the source step validated."""
        raw = {k: v for k, v in self.config.items() if k != "source"}
        return parse_config(raw, task=self.task, source=self.config.get("source", "defaults"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "kind": self.kind,
            "task": self.task,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "parameters": self.parameters,
            "load_seconds": self.load_seconds,
            "forward_ms": self.forward_ms,
            "output_shape": list(self.output_shape),
            "input_shape": list(self.input_shape) if self.input_shape is not None else None,
            "source_path": self.source_path,
            "workdir": str(self.workdir),
            "config": self.config,
            "original": self.original.as_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceRecord:
        shape = data["input_shape"]
        return cls(
            model=data["model"],
            version=data["version"],
            kind=data["kind"],
            task=data["task"],
            sha256=data["sha256"],
            size_bytes=data["size_bytes"],
            parameters=data["parameters"],
            load_seconds=data["load_seconds"],
            forward_ms=data["forward_ms"],
            output_shape=list(data["output_shape"]),
            input_shape=list(shape) if shape is not None else None,
            source_path=data["source_path"],
            workdir=Path(data["workdir"]),
            config=data["config"],
            original=Artifact.from_dict(data["original"]),
        )

    def metadata(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "kind": self.kind,
            "task": self.task,
            "parameters": self.parameters,
            "size_mb": mb(self.size_bytes),
            "sha256": self.sha256,
            "forward_ms": self.forward_ms,
            "load_seconds": self.load_seconds,
            # ``recipe: auto`` chooses the passes in baked_model, on this host
            "passes": ", ".join(p["name"] for p in self.config["passes"])
            if "passes" in self.config
            else f"recipe: {self.config.get('recipe')}",
            "bake_config": self.config["source"],
            "path": Path(self.source_path),
        }
