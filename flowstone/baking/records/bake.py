"""The baked model: the passes that ran (each a checkpoint) and the artifact they produced, and,
for ``recipe: auto``, how the recipe was chosen on this host (:class:`RecipeRecord`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
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
class CandidateResult:
    """One candidate recipe as the search saw it on this host.

    ``status``: "passed" / "failed" (the search gate), "error" (a step failed; ``note`` says
    which) or "skipped" (not built: the host lacks VNNI, or the time budget ran out).
    ``figures``: the fidelity figures on the validation pairs; ``metric_value`` the gated one.
    Throughput is texts/s at batch 32 end to end over ``rounds`` interleaved rounds (None when
    not timed: only candidates that pass are; the search ranks by the best round,
    ``throughput_max``); ``spread`` is (max - min) / median.
    ``screen_ratio``: one paired reading against the first candidate to pass (> 1: faster),
    which picks the candidates that get timed.
    ``seconds``: building it and measuring its quality (the timing rounds are shared).
    """

    name: str
    steps: list[dict[str, Any]]
    status: str
    metric_value: float | None = None
    figures: dict[str, float] = field(default_factory=dict)
    throughput_median: float | None = None
    throughput_min: float | None = None
    throughput_max: float | None = None
    spread: float | None = None
    rounds: int = 0
    seconds: float = 0.0
    size_bytes: int | None = None
    screen_ratio: float | None = None
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CandidateResult:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class RecipeRecord:
    """How ``recipe: auto`` chose the passes on this host: the chosen recipe (``name``, and
    ``steps`` as pass specs ``{"name": pass, **options}``), every candidate's figures, the
    gate the search applied, the host's CPU flags, the budget and ``used_s`` of it (the search
    after the shared export; ``timing`` has the export's ``base_s`` and the ``total_s``), and
    whether the choice came from the search cache (``from_cache``; the figures are then the
    ones the cached search measured). ``fallback``: the fp32 fallback won, nothing else
    passed."""

    name: str
    steps: list[dict[str, Any]]
    candidates: list[CandidateResult]
    gate: dict[str, Any]
    host_flags: list[str]
    flags_key: str
    threads: int
    budget_s: float
    used_s: float
    timing: dict[str, Any]
    cache_key: str
    candidate_set: str
    searched_at: str
    fallback: bool = False
    from_cache: bool = False

    def cached_copy(self) -> RecipeRecord:
        return replace(self, from_cache=True)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["candidates"] = [c.to_dict() for c in self.candidates]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecipeRecord:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["candidates"] = [CandidateResult.from_dict(c) for c in data["candidates"]]
        return cls(**known)

    def summary(self) -> str:
        """One line for the UI: the recipe and where the choice came from."""
        chosen = next((c for c in self.candidates if c.name == self.name), None)
        speed = (f", {chosen.throughput_median:.0f} texts/s median in the search" if chosen
                 and chosen.throughput_median else "")  # fmt: skip
        source = "from the search cache" if self.from_cache else f"searched in {self.used_s:.0f} s"
        fallback = ", fallback: no other candidate passed" if self.fallback else ""
        return f"{self.name} ({source}{speed}{fallback})"


@dataclass(frozen=True)
class BakeRecord:
    """What ``baked_model`` stores: the final artifact, its hash and size, every pass, and for
    ``recipe: auto`` the search that chose the passes (absent otherwise and in older records)."""

    model: str
    version: str
    task: str
    artifact: Artifact
    sha256: str
    size_bytes: int
    passes: list[PassStep]
    recipe: RecipeRecord | None = None

    @property
    def resumed_passes(self) -> int:
        return sum(1 for step in self.passes if step.resumed)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "task": self.task,
            "artifact": self.artifact.as_dict(),
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "passes": [step.to_dict() for step in self.passes],
            "resumed_passes": self.resumed_passes,
        }
        if self.recipe is not None:  # a record without one keeps its stored shape
            data["recipe"] = self.recipe.to_dict()
        return data

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
            recipe=RecipeRecord.from_dict(data["recipe"]) if data.get("recipe") else None,
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
        data: dict[str, Any] = {
            "version": source.version,
            "format": self.artifact.format,
            "size_mb": mb(self.size_bytes),
            "size_ratio": round(self.size_bytes / source.size_bytes, 3),
            "sha256": self.sha256,
            "resumed_passes": self.resumed_passes,
            "passes": self.passes_table(),
        }
        if self.recipe is not None:
            data["recipe"] = self.recipe.summary()
        return data
