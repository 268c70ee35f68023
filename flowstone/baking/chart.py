"""One picture of a bake: latency of the original and the baked model per batch size, with the
speed-up written on the bars, because a person compares two bars faster than two tables; for a
profile measured in rounds, beside it each round's throughput ratio with the confidence band,
so a steady result and a noisy one look different."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flowstone.baking.records.profile import ProfileRecord
from flowstone.baking.records.source import SourceRecord

CHART_FILE = "profile.png"


def chart_path(source: SourceRecord, workspace: Path) -> Path:
    """Where a version's chart lives: beside its checkpoints in the bake workspace."""
    return workspace / source.model / source.version / CHART_FILE


def _latency(ax: Any, profile: ProfileRecord, title: str) -> None:
    batches = [str(b) for b in profile.batch_sizes]
    original = [profile.original.per_batch[b].latency_p50_ms for b in batches]
    baked = [profile.baked.per_batch[b].latency_p50_ms for b in batches]
    x = range(len(batches))
    ax.bar([i - 0.2 for i in x], original, width=0.4, label="original", color="#9aa5b1")
    bars = ax.bar([i + 0.2 for i in x], baked, width=0.4, label="baked", color="#2f80ed")
    for bar, b in zip(bars, batches, strict=True):
        ax.annotate(f"{profile.ratios[b].speedup_p50:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)  # fmt: skip
    ax.set_xticks(list(x), [f"batch {b}" for b in batches])
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title(title, fontsize=10)
    ax.legend(frameon=False, fontsize=8)


def _rounds(ax: Any, profile: ProfileRecord) -> None:
    """Each round's ratio (a dot, hollow where the baked variant ran first), the interval as a
    band, the headline as a line, and parity (1x) dashed."""
    index = [r.index for r in profile.rounds]
    ratios = [r.ratio for r in profile.rounds]
    colour = "#d9822b" if profile.noisy else "#2f80ed"
    if profile.ratio_ci_low is not None and profile.ratio_ci_high is not None:
        ax.axhspan(profile.ratio_ci_low, profile.ratio_ci_high, color=colour, alpha=0.15,
                   label=profile.interval_text())  # fmt: skip
    if profile.throughput_ratio is not None:
        ax.axhline(profile.throughput_ratio, color=colour, linewidth=1,
                   label=f"{profile.throughput_ratio:.2f}x")  # fmt: skip
    ax.axhline(1.0, color="#9aa5b1", linewidth=0.8, linestyle="--")
    first = [r.first == "original" for r in profile.rounds]
    ax.scatter([i for i, f in zip(index, first, strict=True) if f],
               [v for v, f in zip(ratios, first, strict=True) if f], color=colour, s=18,
               zorder=3, label="original first")  # fmt: skip
    ax.scatter([i for i, f in zip(index, first, strict=True) if not f],
               [v for v, f in zip(ratios, first, strict=True) if not f], facecolors="none",
               edgecolors=colour, s=18, zorder=3, label="baked first")  # fmt: skip
    if ratios and max(ratios) / min(ratios) > 10:
        ax.set_yscale("log")  # a wild round must not flatten the others
    ax.set_xticks(index)
    ax.set_xlabel("round")
    ax.set_ylabel(f"throughput x, batch {profile.largest_batch}")
    ax.set_title("noisy: no headline" if profile.noisy else "rounds", fontsize=10)
    ax.legend(frameon=False, fontsize=7)


def profile_chart(profile: ProfileRecord, source: SourceRecord, workspace: Path) -> Path:
    """Draw the chart of ``profile`` for ``source``'s version; returns its path."""
    title = f"{source.model} {source.version}: original vs baked"
    path = chart_path(source, workspace)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if profile.rounds:
        fig, (latency, rounds) = plt.subplots(1, 2, figsize=(10, 3.4), dpi=110,
                                              gridspec_kw={"width_ratios": [3, 2]})  # fmt: skip
        _latency(latency, profile, title)
        _rounds(rounds, profile)
    else:  # a profile stored before rounds
        fig, latency = plt.subplots(figsize=(6, 3.2), dpi=110)
        _latency(latency, profile, title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
