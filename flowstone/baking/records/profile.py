"""Latency, throughput, size and memory of the original and the baked variant: what
``bake_profile`` stores, and the table and ratios a person compares them by."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flowstone.baking.records.display import Markdown, markdown_table, mb

LATENCY_HEADER = ("batch", "p50 original (ms)", "p50 baked (ms)", "p95 original", "p95 baked",
                  "throughput x")  # fmt: skip


@dataclass(frozen=True)
class BatchTiming:
    """One variant at one batch size, after warm-up."""

    latency_p50_ms: float
    latency_p95_ms: float
    throughput_per_s: float
    iterations: int


@dataclass(frozen=True)
class VariantProfile:
    """One variant measured in a fresh process; ``per_batch`` is keyed by the batch size as
    text (the stored JSON's keys)."""

    per_batch: dict[str, BatchTiming]
    peak_rss_bytes: int
    model_rss_bytes: int
    load_seconds: float
    torch_threads: int
    threads: int
    size_bytes: int
    format: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def per_batch_dict(self) -> dict[str, dict[str, Any]]:
        return {batch: asdict(timing) for batch, timing in self.per_batch.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VariantProfile:
        per_batch = {b: BatchTiming(**t) for b, t in data["per_batch"].items()}
        return cls(**{**data, "per_batch": per_batch})


@dataclass(frozen=True)
class BatchRatios:
    """Baked against original at one batch size (> 1: the baked variant is faster)."""

    speedup_p50: float
    speedup_p95: float
    throughput_ratio: float


@dataclass(frozen=True)
class ProfileRecord:
    """Both variants, same threads and inputs, and their ratios; ``load_average`` says how
    quiet the machine was, because latency ratios are only as good as that."""

    threads: int
    load_average: float
    batch_sizes: list[int]
    original: VariantProfile
    baked: VariantProfile
    ratios: dict[str, BatchRatios]
    throughput_ratio: float
    size_ratio: float
    peak_rss_ratio: float
    model_rss_ratio: float | None

    @property
    def largest_batch(self) -> str:
        return str(max(self.batch_sizes))

    def ratios_dict(self) -> dict[str, dict[str, float]]:
        return {batch: asdict(ratio) for batch, ratio in self.ratios.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "load_average": self.load_average,
            "batch_sizes": list(self.batch_sizes),
            "original": self.original.to_dict(),
            "baked": self.baked.to_dict(),
            "ratios": self.ratios_dict(),
            "throughput_ratio": self.throughput_ratio,
            "size_ratio": self.size_ratio,
            "peak_rss_ratio": self.peak_rss_ratio,
            "model_rss_ratio": self.model_rss_ratio,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProfileRecord:
        return cls(
            threads=data["threads"],
            load_average=data["load_average"],
            batch_sizes=list(data["batch_sizes"]),
            original=VariantProfile.from_dict(data["original"]),
            baked=VariantProfile.from_dict(data["baked"]),
            ratios={b: BatchRatios(**r) for b, r in data["ratios"].items()},
            throughput_ratio=data["throughput_ratio"],
            size_ratio=data["size_ratio"],
            peak_rss_ratio=data["peak_rss_ratio"],
            model_rss_ratio=data["model_rss_ratio"],
        )

    def latency_table(self) -> Markdown:
        rows = []
        for b in map(str, self.batch_sizes):
            o, k = self.original.per_batch[b], self.baked.per_batch[b]
            rows.append((b, f"{o.latency_p50_ms:.2f}", f"{k.latency_p50_ms:.2f}",
                         f"{o.latency_p95_ms:.2f}", f"{k.latency_p95_ms:.2f}",
                         f"{self.ratios[b].throughput_ratio:.2f}"))  # fmt: skip
        return markdown_table(LATENCY_HEADER, rows)

    def metadata(self, chart: Path) -> dict[str, Any]:
        """The figures at the largest batch size, the latency table and the chart at ``chart``."""
        largest = self.largest_batch
        return {
            "threads": self.threads,
            "load_average": self.load_average,
            f"throughput_ratio_batch_{largest}": round(self.throughput_ratio, 3),
            f"baked_throughput_per_s_batch_{largest}": round(
                self.baked.per_batch[largest].throughput_per_s, 1
            ),
            "size_ratio": round(self.size_ratio, 3),
            "peak_rss_ratio": round(self.peak_rss_ratio, 3),
            "baked_peak_rss_mb": mb(self.baked.peak_rss_bytes),
            "latency": self.latency_table(),
            "chart": chart,
        }
