"""Plain values that read well in the UI, without Dagster: a marker for Markdown text, tables
and sizes. ``assets/metadata.py`` renders a :class:`Markdown` value as a Markdown block."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class Markdown(str):
    """Text to show as Markdown (a table, a list), not as a plain string."""


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> Markdown:
    """A pipe table; cells are written as given (format numbers before)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return Markdown("\n".join(lines))


def mb(n_bytes: float) -> float:
    """Bytes as MiB, two decimals, the unit every size in the bake metadata uses."""
    return round(n_bytes / 2**20, 2)
