"""A baked text classifier as a system under evaluation: its answer to a case is a class name.

Why a system and not a metric: a user who bakes a classifier wants to know what it gets right
on the task, next to the LLM systems that answer the same suite, with the accuracy and F1
suite metrics every system gets. The classifier's input is the embedding of the case's text
by the model its bake config names (``text_features``, the packaged MiniLM by default): the
"sentence embedding + small head" shape of SetFit-style classifiers. Its class names come from
the bake config too (``labels``), so the system's only setting is the model reference.

A classifier answers with one of its classes whatever the question, so on a suite without
class labels its answers mean nothing: :meth:`BakedClassifier.not_applicable` says so,
``flowstone demo`` leaves those partitions out, and the predictions step of one run anyway
(``evaluation.pipeline.predict``) fails with that reason instead of storing meaningless scores.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from flowstone.baking.registry import ModelRefError, ResolvedModel, resolve
from flowstone.cases import Case, Label
from flowstone.systems.base import Prediction, Progress, System


class BakedClassifier(System):
    """Answers each case with the class a baked classifier gives the embedding of its input.

    ``model``: ``baked:NAME`` or ``deployed:NAME[@VERSION]`` of a classifier whose bake config
    has ``labels`` and ``text_features``. Latency is the batch's time over its cases (the
    classifier runs the whole suite as one batch, the way it would be served).
    """

    kind = "classifier"

    def __init__(self, name: str, model: str, description: str | None = None) -> None:
        self.name = name
        self.model = model
        self.description = description or f"Class from the baked classifier {model}"

    def resolved(self) -> ResolvedModel:
        """What the reference points to now, with its class names and text features checked."""
        resolved = resolve(self.model, task="classifier")
        labels = resolved.config.get("labels")
        if not labels or not resolved.config.get("text_features"):
            raise ModelRefError(
                f"{self.model}: its bake config has no labels and text_features, so its "
                "outputs cannot be named; add them to the model's bake.yaml and bake again"
            )
        return resolved

    def labels(self) -> list[str]:
        return list(self.resolved().config["labels"])

    def params(self) -> dict:
        from flowstone.embedders import current

        resolved = self.resolved()
        # A new bake (or a new embedding model behind its features) changes the answers.
        features = current(resolved.config["text_features"]).fingerprint
        return {"version": 1, "model": resolved.fingerprint, "features": features}

    def not_applicable(self, suite: str, labels: Sequence[Label | None]) -> str | None:
        classes = set(self.labels())
        for label in labels:
            if not isinstance(label, str):
                return (
                    f"system '{self.name}' answers with a class of {self.model}; suite "
                    f"'{suite}' has cases without a class label (e.g. {label!r}), so its "
                    "answers there would mean nothing"
                )
            if label not in classes:
                return (
                    f"system '{self.name}' knows the classes {', '.join(sorted(classes))}; "
                    f"suite '{suite}' has the label {label!r}, which it can never answer"
                )
        return None

    def predict(
        self, cases: Sequence[Case], progress: Progress | None = None, *, suite: str | None = None
    ) -> list[Prediction]:
        import numpy as np

        from flowstone import embedders

        if not cases:
            return []
        resolved = self.resolved()
        labels = list(resolved.config["labels"])
        runner = embedders.loaded_runner(resolved)
        features = resolved.config["text_features"]
        embedders.warm(features)  # model loading is not a case's latency
        start = time.perf_counter()
        vectors = embedders.encode([case.input for case in cases], model=features)
        logits = np.asarray(runner.run(np.asarray(vectors, dtype=np.float32)))
        if logits.ndim != 2 or logits.shape[1] != len(labels):
            raise ModelRefError(
                f"{self.model}: the classifier gives {logits.shape[-1]} outputs per case and "
                f"its bake config names {len(labels)} labels"
            )
        each = (time.perf_counter() - start) / len(cases)
        predictions = [
            Prediction(case.id, labels[int(row.argmax())], each)
            for case, row in zip(cases, logits, strict=True)
        ]
        if progress:
            progress(len(cases))
        return predictions
