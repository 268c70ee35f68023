"""The baked model: the passes that ran (each a checkpoint) and the artifact they produced."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from flowstone.baking.artifacts import Artifact
from flowstone.baking.records.display import Markdown, markdown_table, mb
from flowstone.baking.records.source import SourceRecord

PASSES_HEADER = ("#", "pass", "options", "format", "size (MB)", "seconds", "resumed")


@dataclass(frozen=True)
class PassStep:
    """One pass as it ran, or as it was resumed from its checkpoint (``resumed``); the same
    record is kept in the checkpoint's ``record.json``."""

    name: str
    options: dict[str, Any]
    format: str
    seconds: float
    size_bytes: int
    extra: dict[str, Any]
    resumed: bool
    sha256: str

    def resumed_copy(self) -> PassStep:
        return replace(self, resumed=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pass": self.name,
            "options": self.options,
            "format": self.format,
            "seconds": self.seconds,
            "size_bytes": self.size_bytes,
            "extra": self.extra,
            "resumed": self.resumed,
            "sha256": self.sha256,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PassStep:
        return cls(
            name=data["pass"],
            options=data["options"],
            format=data["format"],
            seconds=data["seconds"],
            size_bytes=data["size_bytes"],
            extra=data["extra"],
            resumed=data["resumed"],
            sha256=data["sha256"],
        )


@dataclass(frozen=True)
class BakeRecord:
    """What ``baked_model`` stores: the final artifact, its hash and size, and every pass."""

    model: str
    version: str
    task: str
    artifact: Artifact
    sha256: str
    size_bytes: int
    passes: list[PassStep]

    @property
    def resumed_passes(self) -> int:
        return sum(1 for step in self.passes if step.resumed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "task": self.task,
            "artifact": self.artifact.as_dict(),
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "passes": [step.to_dict() for step in self.passes],
            "resumed_passes": self.resumed_passes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BakeRecord:
        return cls(
            model=data["model"],
            version=data["version"],
            task=data["task"],
            artifact=Artifact.from_dict(data["artifact"]),
            sha256=data["sha256"],
            size_bytes=data["size_bytes"],
            passes=[PassStep.from_dict(step) for step in data["passes"]],
        )

    def passes_table(self) -> Markdown:
        return markdown_table(
            PASSES_HEADER,
            (
                (i, s.name, s.options or "", s.format, mb(s.size_bytes), s.seconds,
                 "yes" if s.resumed else "")
                for i, s in enumerate(self.passes, start=1)
            ),
        )  # fmt: skip

    def metadata(self, source: SourceRecord) -> dict[str, Any]:
        """What the UI shows of the bake, with sizes relative to ``source``."""
        return {
            "version": source.version,
            "format": self.artifact.format,
            "size_mb": mb(self.size_bytes),
            "size_ratio": round(self.size_bytes / source.size_bytes, 3),
            "sha256": self.sha256,
            "resumed_passes": self.resumed_passes,
            "passes": self.passes_table(),
        }
