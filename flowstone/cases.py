"""The case: one input to a system and what a good answer looks like.

It sits below both the systems, which answer cases, and the evaluation, which loads suites of
them and scores the answers, so neither package has to import the other to share it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    """One input to a system and what a good answer looks like."""

    id: str
    input: str
    expected: str
    context: str | None = None
    tags: tuple[str, ...] = ()
