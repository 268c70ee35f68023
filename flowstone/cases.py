"""The case: one input to a system and what a good answer looks like.

It sits below both the systems, which answer cases, and the evaluation, which loads suites of
them and scores the answers, so neither package has to import the other to share it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# A gold label: a number is a gold score (correlations), a string a class (accuracy, F1).
Label = float | str


@dataclass(frozen=True)
class Case:
    """One input to a system and what a good answer looks like.

    ``expected`` is the answer a person reads (the first reference when a suite gives several);
    ``references`` holds every acceptable answer, which is what the metrics score against, and
    defaults to ``(expected,)``. ``metadata`` is carried along untouched (never hashed: it is a
    free-form object) so the scores, the warehouse and the viewer can show it.
    """

    id: str
    input: str
    expected: str
    context: str | None = None
    tags: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    label: Label | None = None
    metadata: Mapping[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if not self.references:
            object.__setattr__(self, "references", (self.expected,))
