"""Errors of the baking line: each names the model and the stage, so the message in the
Dagster UI says which partition and which asset failed and what to do."""

from __future__ import annotations

from flowstone.errors import FlowStoneError


class BakeError(FlowStoneError):
    """A model that cannot be baked as asked: names the model, the stage and the cause."""

    def __init__(self, model: str, stage: str, message: str):
        super().__init__(f"model '{model}' [{stage}]: {message}")
        self.model = model
        self.stage = stage


class OnnxBakeError(RuntimeError):
    """An ONNX bake step failed; the message names the step, the file and what to do."""
