"""One picture of a bake: latency of the original and the baked model per batch size, with the
speed-up written on the bars, because a person compares two bars faster than two tables."""

from __future__ import annotations

from pathlib import Path

from flowstone.baking.records.profile import ProfileRecord
from flowstone.baking.records.source import SourceRecord

CHART_FILE = "profile.png"


def chart_path(source: SourceRecord, workspace: Path) -> Path:
    """Where a version's chart lives: beside its checkpoints in the bake workspace."""
    return workspace / source.model / source.version / CHART_FILE


def profile_chart(profile: ProfileRecord, source: SourceRecord, workspace: Path) -> Path:
    """Draw the chart of ``profile`` for ``source``'s version; returns its path."""
    title = f"{source.model} {source.version}: original vs baked"
    path = chart_path(source, workspace)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = [str(b) for b in profile.batch_sizes]
    original = [profile.original.per_batch[b].latency_p50_ms for b in batches]
    baked = [profile.baked.per_batch[b].latency_p50_ms for b in batches]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
