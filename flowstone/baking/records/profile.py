"""Latency, throughput, size and memory of the original and the baked variant: what
``bake_profile`` stores, and the table, ratios and speed verdict a person reads them by.

A profile is measured in rounds (``flowstone.baking.profile``): each round runs both variants,
each in a fresh process, and gives one throughput ratio (baked / original) at the largest batch
size. The headline ``throughput_ratio`` is the geometric mean of the round ratios, with a
confidence interval (``ratio_ci_low``/``ratio_ci_high``); a profile whose interval stayed wider
than asked after the last round is ``noisy`` and has no headline (None), only its interval.

Records stored before rounds existed (one pass per variant) still load: their new fields are
None/empty and they are written back in their old shape.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flowstone.baking.host import HostInfo
from flowstone.baking.records.display import Markdown, markdown_table, mb

LATENCY_HEADER = ("batch", "p50 original (ms)", "p50 baked (ms)", "p95 original", "p95 baked",
                  "throughput x")  # fmt: skip
ROUNDS_HEADER = ("round", "first", "original /s", "baked /s", "ratio", "load")


@dataclass(frozen=True)
class BatchTiming:
    """One variant at one batch size, after warm-up."""

    latency_p50_ms: float
    latency_p95_ms: float
    throughput_per_s: float
    iterations: int


def _timings(data: dict[str, Any]) -> dict[str, BatchTiming]:
    return {batch: BatchTiming(**timing) for batch, timing in data.items()}


def _timings_dict(timings: dict[str, BatchTiming]) -> dict[str, dict[str, Any]]:
    return {batch: asdict(timing) for batch, timing in timings.items()}


@dataclass(frozen=True)
class VariantProfile:
    """One variant; ``per_batch`` is keyed by the batch size as text (the stored JSON's keys).
    In a profile of rounds: latencies are percentiles and throughput the rate over every timed
    iteration of every round, ``iterations`` their count; peak and model RSS the largest of
    the rounds' processes, ``load_seconds`` the median."""

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
        return _timings_dict(self.per_batch)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VariantProfile:
        return cls(**{**data, "per_batch": _timings(data["per_batch"])})


@dataclass(frozen=True)
class BatchRatios:
    """Baked against original at one batch size (> 1: the baked variant is faster)."""

    speedup_p50: float
    speedup_p95: float
    throughput_ratio: float


@dataclass(frozen=True)
class ProfileRound:
    """One round: both variants, each in a fresh process, ``first`` ran first. ``ratio`` is
    baked / original throughput at the largest batch size; ``original``/``baked`` hold every
    batch size's figures; ``load_average`` is the 1-minute load when the round ended."""

    index: int
    first: str
    ratio: float
    original_throughput_per_s: float
    baked_throughput_per_s: float
    original: dict[str, BatchTiming]
    baked: dict[str, BatchTiming]
    load_average: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "original": _timings_dict(self.original),
                "baked": _timings_dict(self.baked)}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProfileRound:
        return cls(**{**data, "original": _timings(data["original"]),
                      "baked": _timings(data["baked"])})  # fmt: skip


def _x(value: float) -> str:
    return f"{value:.2f}x" if value < 1e4 else f"{value:.3g}x"  # a 2-round interval can be vast


@dataclass(frozen=True)
class ProfileRecord:
    """Both variants, same threads and inputs, and their ratios; ``load_average`` (1-minute,
    at the end) and ``host`` say how quiet the machine was and what it was, because speed
    ratios are only as good as that. ``throughput_ratio`` is None for a ``noisy`` profile."""

    threads: int
    load_average: float
    batch_sizes: list[int]
    original: VariantProfile
    baked: VariantProfile
    ratios: dict[str, BatchRatios]
    throughput_ratio: float | None
    size_ratio: float
    peak_rss_ratio: float
    model_rss_ratio: float | None
    host: HostInfo | None = None
    rounds: list[ProfileRound] = field(default_factory=list)
    ratio_ci_low: float | None = None
    ratio_ci_high: float | None = None
    confidence: float | None = None
    noisy: bool = False

    @property
    def largest_batch(self) -> str:
        return str(max(self.batch_sizes))

    @property
    def has_interval(self) -> bool:
        return self.ratio_ci_low is not None and self.ratio_ci_high is not None

    def ratios_dict(self) -> dict[str, dict[str, float]]:
        return {batch: asdict(ratio) for batch, ratio in self.ratios.items()}

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
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
        if self.rounds or self.host is not None:  # a record of rounds (older ones: as stored)
            data.update({
                "host": self.host.to_dict() if self.host else None,
                "rounds": [r.to_dict() for r in self.rounds],
                "ratio_ci_low": self.ratio_ci_low,
                "ratio_ci_high": self.ratio_ci_high,
                "confidence": self.confidence,
                "noisy": self.noisy,
            })  # fmt: skip
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProfileRecord:
        host = data.get("host")
        return cls(
            threads=data["threads"],
            load_average=data["load_average"],
            batch_sizes=list(data["batch_sizes"]),
            original=VariantProfile.from_dict(data["original"]),
            baked=VariantProfile.from_dict(data["baked"]),
            ratios={b: BatchRatios(**r) for b, r in data["ratios"].items()},
            throughput_ratio=data.get("throughput_ratio"),
            size_ratio=data["size_ratio"],
            peak_rss_ratio=data["peak_rss_ratio"],
            model_rss_ratio=data.get("model_rss_ratio"),
            host=HostInfo.from_dict(host) if host else None,
            rounds=[ProfileRound.from_dict(r) for r in data.get("rounds") or []],
            ratio_ci_low=data.get("ratio_ci_low"),
            ratio_ci_high=data.get("ratio_ci_high"),
            confidence=data.get("confidence"),
            noisy=bool(data.get("noisy", False)),
        )

    def interval_text(self) -> str:
        """``95% CI 1.35-1.50`` (no "x": the caller says what the figures are)."""
        if not self.has_interval:
            return "no interval"
        level = f"{self.confidence:.0%} " if self.confidence else ""
        assert self.ratio_ci_low is not None and self.ratio_ci_high is not None
        low, high = (_x(v)[:-1] for v in (self.ratio_ci_low, self.ratio_ci_high))
        return f"{level}CI {low}-{high}"

    @property
    def peak_load(self) -> float | None:
        """The highest 1-minute load average seen: at the start, after each round, at the end."""
        loads = [r.load_average for r in self.rounds]
        if self.host is not None:
            loads += [self.host.load_average_start, self.host.load_average_end]
        seen = [load for load in loads if load is not None]
        return max(seen) if seen else None

    def busy_note(self) -> str:
        """``busy: load up to 4.6 on 2 CPUs`` when the load exceeded the CPUs, else "". Rounds
        take the noise out, not the bias: a machine this busy slows the variants unequally
        (OpenMP threads wait for preempted peers), so a ratio measured so reads with it."""
        peak, host = self.peak_load, self.host
        if peak is None or host is None or peak <= host.cpu_count:
            return ""
        return f"busy: load up to {peak:.1f} on {host.cpu_count} CPUs"

    def summary(self) -> str:
        """The throughput figure in one line: ``throughput ratio 1.42x (95% CI 1.35-1.50,
        6 rounds)``, ``noisy: 95% CI 0.90-1.80 after 10 rounds, no headline``, or for a record
        measured in one pass ``throughput ratio 1.70x (one pass, no interval)``; the
        :meth:`busy_note` is added when the machine was busy."""
        n, busy = len(self.rounds), self.busy_note()
        if self.noisy:
            tail = f" ({busy})" if busy else ""
            return f"noisy: {self.interval_text()} after {n} rounds, no headline{tail}"
        if self.throughput_ratio is None:
            return "no throughput ratio"
        if not self.has_interval:
            return f"throughput ratio {_x(self.throughput_ratio)} (one pass, no interval)"
        tail = f"; {busy}" if busy else ""
        return (f"throughput ratio {_x(self.throughput_ratio)} ({self.interval_text()}, "
                f"{n} rounds{tail})")  # fmt: skip

    def speed_verdict(self, floor: float) -> tuple[bool, str]:
        """Whether the baked variant is not shown slower than ``floor`` x the original's
        throughput, and why. Fails only when the interval's upper bound is below ``floor``
        (the data then say it is slower, at the record's confidence); a noisy profile is
        judged on the interval it has. A record without an interval (measured in one pass,
        before rounds) is judged on its single ratio."""
        if not self.has_interval:
            if self.throughput_ratio is None:
                return False, f"no throughput ratio to hold against the floor {_x(floor)}"
            passed = self.throughput_ratio >= floor
            word = ">=" if passed else "<"
            return passed, f"{self.summary()}: {word} the floor {_x(floor)}"
        assert self.ratio_ci_low is not None and self.ratio_ci_high is not None
        high = self.ratio_ci_high
        if high < floor:
            return False, (f"{self.summary()}: slower than the floor {_x(floor)} "
                           f"(upper bound {_x(high)} < {_x(floor)})")  # fmt: skip
        if self.noisy:
            return True, (f"{self.summary()}: upper bound {_x(high)} >= the floor {_x(floor)}, "
                          "not shown slower")  # fmt: skip
        if self.ratio_ci_low < floor:
            return True, (f"{self.summary()}: the floor {_x(floor)} is inside the interval, "
                          "not shown slower")  # fmt: skip
        return True, f"{self.summary()}: above the floor {_x(floor)}"

    def speed_check_metadata(self, floor: float) -> dict[str, Any]:
        """Figures for a speed check's result (no None values: Dagster metadata has none)."""
        out: dict[str, Any] = {"floor": floor, "rounds": len(self.rounds), "noisy": self.noisy}
        for key in ("throughput_ratio", "ratio_ci_low", "ratio_ci_high", "confidence"):
            value = getattr(self, key)
            if value is not None:
                out[key] = round(value, 3)
        if self.host is not None:
            out["host"] = self.host.describe()
        return out

    def latency_table(self) -> Markdown:
        rows = []
        for b in map(str, self.batch_sizes):
            o, k = self.original.per_batch[b], self.baked.per_batch[b]
            rows.append((b, f"{o.latency_p50_ms:.2f}", f"{k.latency_p50_ms:.2f}",
                         f"{o.latency_p95_ms:.2f}", f"{k.latency_p95_ms:.2f}",
                         f"{self.ratios[b].throughput_ratio:.2f}"))  # fmt: skip
        return markdown_table(LATENCY_HEADER, rows)

    def rounds_table(self) -> Markdown:
        """One row a round: which ran first, both throughputs at the largest batch, ratio."""
        rows = [(r.index, r.first, f"{r.original_throughput_per_s:.1f}",
                 f"{r.baked_throughput_per_s:.1f}", f"{r.ratio:.3f}",
                 "-" if r.load_average is None else f"{r.load_average:.2f}")
                for r in self.rounds]  # fmt: skip
        return markdown_table(ROUNDS_HEADER, rows)

    def metadata(self, chart: Path) -> dict[str, Any]:
        """The figures at the largest batch size, the latency table and the chart at ``chart``;
        a profile of rounds leads with its summary line and adds the interval, the host and
        the rounds (a record stored before rounds shows what it showed then)."""
        largest = self.largest_batch
        rounds = bool(self.rounds)
        out: dict[str, Any] = {}
        if rounds:
            out["throughput"] = self.summary()
        out["threads"] = self.threads
        out["load_average"] = self.load_average
        if self.throughput_ratio is not None:
            out[f"throughput_ratio_batch_{largest}"] = round(self.throughput_ratio, 3)
        if rounds:
            if self.has_interval:
                assert self.ratio_ci_low is not None and self.ratio_ci_high is not None
                out["ratio_ci_low"] = round(self.ratio_ci_low, 3)
                out["ratio_ci_high"] = round(self.ratio_ci_high, 3)
            out["rounds"] = len(self.rounds)
            out["noisy"] = self.noisy
        out[f"baked_throughput_per_s_batch_{largest}"] = round(
            self.baked.per_batch[largest].throughput_per_s, 1
        )
        out["size_ratio"] = round(self.size_ratio, 3)
        out["peak_rss_ratio"] = round(self.peak_rss_ratio, 3)
        out["baked_peak_rss_mb"] = mb(self.baked.peak_rss_bytes)
        if self.host is not None:
            out["host"] = self.host.describe()
        if rounds:
            out["rounds_table"] = self.rounds_table()
        out["latency"] = self.latency_table()
        out["chart"] = chart
        return out
