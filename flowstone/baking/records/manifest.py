"""``manifest.json`` of a package: where the artifact came from, what it is, how good and how
fast it is, and with which libraries, so a deployed model can be audited without the bake's
workspace. It is stored inside the package, so its shape is what deployments read."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from flowstone.baking.records.bake import PassStep, RecipeRecord
from flowstone.baking.records.display import mb
from flowstone.baking.records.profile import BatchRatios, BatchTiming, ProfileRecord
from flowstone.baking.records.quality import QualityRecord

# The parts of the manifest the package's metadata shows in the UI.
METADATA_PARTS = ("model", "version", "baked", "quality", "libraries")


@dataclass(frozen=True)
class SourceSummary:
    kind: str
    sha256: str
    size_bytes: int
    parameters: int


@dataclass(frozen=True)
class BakedSummary:
    format: str
    sha256: str
    size_bytes: int
    file: str  # the artifact's path inside the package


@dataclass(frozen=True)
class ProfileSummary:
    """The profile without per-process details: ratios and each variant's timings."""

    threads: int
    batch_sizes: list[int]
    ratios: dict[str, BatchRatios]
    throughput_ratio: float | None  # None: the profile was noisy (no headline)
    size_ratio: float
    peak_rss_ratio: float
    baked: dict[str, BatchTiming]
    original: dict[str, BatchTiming]
    # the interval and where it was measured (None in manifests written before rounds)
    ratio_ci_low: float | None = None
    ratio_ci_high: float | None = None
    rounds: int | None = None
    noisy: bool | None = None
    host: dict[str, Any] | None = None

    @classmethod
    def of(cls, profile: ProfileRecord) -> ProfileSummary:
        return cls(
            threads=profile.threads,
            batch_sizes=list(profile.batch_sizes),
            ratios=dict(profile.ratios),
            throughput_ratio=profile.throughput_ratio,
            size_ratio=profile.size_ratio,
            peak_rss_ratio=profile.peak_rss_ratio,
            baked=dict(profile.baked.per_batch),
            original=dict(profile.original.per_batch),
            ratio_ci_low=profile.ratio_ci_low,
            ratio_ci_high=profile.ratio_ci_high,
            rounds=len(profile.rounds),
            noisy=profile.noisy,
            host=profile.host.to_dict() if profile.host else None,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProfileSummary:
        return cls(
            threads=data["threads"],
            batch_sizes=list(data["batch_sizes"]),
            ratios={b: BatchRatios(**r) for b, r in data["ratios"].items()},
            throughput_ratio=data["throughput_ratio"],
            size_ratio=data["size_ratio"],
            peak_rss_ratio=data["peak_rss_ratio"],
            baked={b: BatchTiming(**t) for b, t in data["baked"].items()},
            original={b: BatchTiming(**t) for b, t in data["original"].items()},
            **{
                k: data.get(k) for k in ("ratio_ci_low", "ratio_ci_high", "rounds", "noisy", "host")
            },
        )


@dataclass(frozen=True)
class Manifest:
    model: str
    version: str
    task: str
    source: SourceSummary
    baked: BakedSummary
    passes: list[PassStep]
    config: dict[str, Any]
    quality: QualityRecord
    profile: ProfileSummary
    libraries: dict[str, str]
    created_at: str
    recipe: RecipeRecord | None = None  # how ``recipe: auto`` chose the passes on the host
    task_gate: dict[str, Any] | None = None  # non-inferiority on the task suites, if any

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "task": self.task,
            "source": asdict(self.source),
            "baked": asdict(self.baked),
            "passes": [step.to_dict() for step in self.passes],
            "config": self.config,
            "quality": self.quality.to_dict(),
            # figures a manifest written before rounds lacks stay out (it writes back unchanged)
            "profile": {
                k: v
                for k, v in asdict(self.profile).items()
                if v is not None or k == "throughput_ratio"
            },
            "libraries": self.libraries,
            "created_at": self.created_at,
        }
        if self.recipe is not None:  # a manifest without one keeps its stored shape
            data["recipe"] = self.recipe.to_dict()
        if self.task_gate is not None:
            data["task_gate"] = self.task_gate
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        return cls(
            model=data["model"],
            version=data["version"],
            task=data["task"],
            source=SourceSummary(**data["source"]),
            baked=BakedSummary(**data["baked"]),
            passes=[PassStep.from_dict(step) for step in data["passes"]],
            config=data["config"],
            quality=QualityRecord.from_dict(data["quality"]),
            profile=ProfileSummary.from_dict(data["profile"]),
            libraries=data["libraries"],
            created_at=data["created_at"],
            recipe=RecipeRecord.from_dict(data["recipe"]) if data.get("recipe") else None,
            task_gate=data.get("task_gate"),
        )

    def summary_figures(self) -> dict[str, Any]:
        """The few figures a "bake ready" notification leads with."""
        return {
            "version": self.version,
            self.quality.metric: round(self.quality.value, 4),
            "throughput x": round(ratio, 2)
            if (ratio := self.profile.throughput_ratio)
            else "noisy",
            "size x": round(self.profile.size_ratio, 3),
        }

    def metadata(self, package_bytes: int) -> dict[str, Any]:
        """What the UI shows of a package of ``package_bytes``: hashes and the manifest's core."""
        data = self.to_dict()
        return {
            "version": self.version,
            "package_mb": mb(package_bytes),
            "baked_sha256": self.baked.sha256,
            "source_sha256": self.source.sha256,
            "manifest": {key: data[key] for key in METADATA_PARTS},
        }
