"""The interface every system under evaluation implements, and the registry of systems."""

from __future__ import annotations

import abc
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

from flowstone.cases import Case, Label

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Prediction:
    """What a system said for one case, with what it cost."""

    case_id: str
    output: str
    latency_s: float
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cached: bool = False
    repeat: int = 0  # which of the system's repeats this answer is (0 when it has one)

    def to_dict(self) -> dict:
        return asdict(self)


def answer_each(
    cases: Sequence[Case], answer: Callable[[Case], str], progress: Progress | None = None
) -> list[Prediction]:
    """Predictions of a system that answers one case at a time, each timed on its own.

    Shared by the local baselines so that their latencies mean the same thing: the time one
    case's answer took, with any model loading done before the first case.
    """
    out = []
    for done, case in enumerate(cases, start=1):
        start = time.perf_counter()
        text = answer(case)
        out.append(Prediction(case.id, text, time.perf_counter() - start))
        if progress:
            progress(done)
    return out


class NotApplicableError(ValueError):
    """A system asked to answer a suite whose cases it cannot answer meaningfully."""


def is_classification(labels: Sequence[Label | None]) -> bool:
    """A suite whose every case carries a class (a string label)."""
    return bool(labels) and all(isinstance(label, str) for label in labels)


class System(abc.ABC):
    """A system under evaluation.

    ``fingerprint`` is a stable hash of everything that changes the system's outputs (code
    version, parameters, prompt text, model); it becomes the Dagster data version of the
    system, so the UI marks exactly that system's predictions stale when it changes.
    """

    name: str
    kind: str = "baseline"
    description: str = ""
    # How many times ``predict`` answers each case: an LLM system samples, so one answer per
    # case says little about what it does; a deterministic baseline has nothing to repeat.
    repeats: int = 1

    @abc.abstractmethod
    def params(self) -> dict:
        """The parameters that define this system's behaviour (part of the fingerprint)."""

    def fingerprint(self) -> str:
        blob = json.dumps(
            {"class": type(self).__qualname__, "name": self.name, "params": self.params()},
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # A system that can only answer with text taken or rewritten from the case (the local
    # baselines): on a suite scored against class labels every answer is wrong by design.
    text_only: bool = False

    def not_applicable(self, suite: str, labels: Sequence[Label | None]) -> str | None:
        """Why this system's answers on ``suite`` (its cases' ``labels``) would mean nothing,
        or None. An LLM answers any suite; a text-only baseline no classification suite; a
        classifier only a suite labelled with its classes."""
        if self.text_only and is_classification(labels):
            return (
                f"system '{self.name}' answers with text from the case; suite '{suite}' is "
                "scored against class labels, which it can never produce"
            )
        return None

    def run_metadata(self) -> dict:
        """Figures about the last ``predict`` worth showing on the asset (calls, breakers)."""
        return {}

    @abc.abstractmethod
    def predict(
        self, cases: Sequence[Case], progress: Progress | None = None, *, suite: str | None = None
    ) -> list[Prediction]:
        """One prediction per case and repeat, in case order within each repeat (``repeat`` 0
        first). ``suite`` names the suite the cases come from, for systems whose behaviour
        depends on the task (an LLM system's prompt)."""


class SystemRegistry:
    """Systems by name; names become Dagster partition keys, so they are validated here."""

    def __init__(self, systems: Iterable[System] = ()):
        self._systems: dict[str, System] = {}
        self.skipped: dict[str, str] = {}  # configured but not runnable here: name -> why
        for system in systems:
            self.register(system)

    def register(self, system: System) -> None:
        if (
            not system.name
            or any(ch in system.name for ch in "|,/\\ \t\n")
            or len(system.name) > 63
        ):
            raise ValueError(
                f"system name {system.name!r} cannot be a partition key: use letters, digits, '-' or '_'"
            )
        if system.name in self._systems:
            raise ValueError(f"system '{system.name}' is registered twice")
        self._systems[system.name] = system

    def get(self, name: str) -> System:
        try:
            return self._systems[name]
        except KeyError:
            raise KeyError(f"unknown system '{name}'; known: {', '.join(self.names)}") from None

    @property
    def names(self) -> list[str]:
        return list(self._systems)

    def __iter__(self):
        return iter(self._systems.values())
