"""Inline SVG line charts drawn in Python: a trend needs no JavaScript library and no CDN.

Why SVG text and not a picture: it scales with the page, a browser's find-in-page reads its
labels, each point carries a tooltip (``<title>``), and nothing is fetched at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

# Eight colours that stay apart for the common kinds of colour blindness (Okabe-Ito + grey).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#999999")


@dataclass(frozen=True)
class Series:
    """One line: a name for the legend and its points in time order."""

    name: str
    points: Sequence[tuple[datetime, float]]


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    width: int = 520,
    height: int = 220,
    y_label: str = "mean",
) -> str:
    """An SVG line chart of ``series`` over time, y within [0, 1] unless a value is outside.

    Points of one materialization line up vertically; a single materialization is drawn as
    dots in the middle, so a chart with one run still shows every system's value.
    """
    left, right, top, bottom = 44, 12, 24, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for s in series for _, v in s.points]
    times = sorted({t for s in series for t, _ in s.points})
    low = min([0.0, *values])
    high = max([1.0, *values])
    span = (high - low) or 1.0

    def y(value: float) -> float:
        return top + plot_h - (value - low) / span * plot_h

    if len(times) > 1:
        first, last = times[0], times[-1]
        total = (last - first).total_seconds() or 1.0

        def x(at: datetime) -> float:
            return left + (at - first).total_seconds() / total * plot_w
    else:

        def x(at: datetime) -> float:
            return left + plot_w / 2

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="15" class="chart-title">{escape(title)}</text>',
    ]
    for tick in _ticks(low, high):
        ty = y(tick)
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{ty:.1f}" y2="{ty:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end" class="tick">{tick:.2f}</text>'
        )
    parts.append(
        f'<text x="10" y="{top + plot_h / 2:.1f}" class="tick" '
        f'transform="rotate(-90 10 {top + plot_h / 2:.1f})" text-anchor="middle">{escape(y_label)}</text>'
    )
    if times:
        labels = (
            [(times[0], "start")] if len(times) == 1 else [(times[0], "start"), (times[-1], "end")]
        )
        for at, anchor in labels:
            position = "middle" if len(times) == 1 else anchor
            parts.append(
                f'<text x="{x(at):.1f}" y="{height - 10}" text-anchor="{position}" class="tick">'
                f"{at:%Y-%m-%d %H:%M}</text>"
            )
        parts.append(
            f'<text x="{left + plot_w}" y="{height - 22}" text-anchor="end" class="tick muted">'
            f"{len(times)} materialization{'s' if len(times) != 1 else ''}</text>"
        )
    for index, line in enumerate(series):
        stroke = colour(index)
        coords = [(x(at), y(v), at, v) for at, v in line.points]
        if len(coords) > 1:
            path = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy, _, _ in coords)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{stroke}" stroke-width="2"/>'
            )
        for cx, cy, at, v in coords:
            parts.append(
                f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3.5" fill="{stroke}">'
                f"<title>{escape(line.name)} · {at:%Y-%m-%d %H:%M:%S} · {v:.3f}</title></circle>"
            )
    parts.append("</svg>")
    return "".join(parts)


def _ticks(low: float, high: float) -> list[float]:
    step = (high - low) / 4
    return [low + step * i for i in range(5)]
