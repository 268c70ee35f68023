"""The ``inference`` bridge: load a model once per worker, then run batches on it.

A model is a TorchScript file (``torch.jit.load``) or a state dict (``.pt``/``.pth`` via
``torch.load(weights_only=True)``, or ``.safetensors``) plus an importable architecture
``"package.module:Class"``. Loaded models are cached by path and modification time, so a baking
step that profiles the same artifact across many calls loads it once. Inputs and outputs travel
as nested lists.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flowstone.workers.bridge import Bridge, command

_DTYPES = ("float32", "float64", "float16", "int64", "int32", "bool")


def _to_lists(output: Any) -> Any:
    if hasattr(output, "detach"):
        return output.detach().cpu().tolist()
    if isinstance(output, tuple | list):
        return [_to_lists(item) for item in output]
    if isinstance(output, dict):
        return {key: _to_lists(value) for key, value in output.items()}
    return output


def _import_architecture(spec: str) -> Any:
    module_name, sep, attr = spec.partition(":")
    if not sep:
        raise ValueError(f"architecture '{spec}' must look like 'package.module:Class'")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class InferenceBridge(Bridge):
    """Options: ``model_path`` (+ ``kind``, ``architecture``, ``architecture_kwargs``) to preload,
    ``torch_threads``."""

    name = "inference"
    framework = "torch"

    def __init__(self, **options: Any):
        super().__init__(**options)
        self._models: dict[str, dict[str, Any]] = {}

    def setup(self) -> None:
        threads = self.options.get("torch_threads")
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        if self.options.get("model_path"):
            self.load(
                self.options["model_path"],
                kind=self.options.get("kind", "auto"),
                architecture=self.options.get("architecture"),
                architecture_kwargs=self.options.get("architecture_kwargs"),
            )

    @command(idempotent=True)
    def load(
        self,
        path: str,
        kind: str = "auto",
        architecture: str | None = None,
        architecture_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Load (or find cached) a model; returns its key, kind and load time."""
        file = Path(path).expanduser().resolve()
        if not file.is_file():
            raise FileNotFoundError(f"model file {file} does not exist")
        key = str(file)
        mtime = os.stat(file).st_mtime_ns
        cached = self._models.get(key)
        if cached is not None and cached["mtime"] == mtime:
            return {"model": key, "kind": cached["kind"], "cached": True, "load_seconds": 0.0}
        import torch

        started = time.perf_counter()
        if kind == "auto":
            kind = "state_dict" if architecture else "torchscript"
        if kind == "torchscript":
            model = torch.jit.load(str(file), map_location="cpu")
        elif kind == "state_dict":
            if not architecture:
                raise ValueError(f"{file}: a state dict needs architecture='package.module:Class'")
            model = _import_architecture(architecture)(**(architecture_kwargs or {}))
            if file.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(file), device="cpu")
            else:
                state = torch.load(str(file), map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        else:
            raise ValueError(
                f"model kind must be 'auto', 'torchscript' or 'state_dict', got '{kind}'"
            )
        model.eval()
        self._models[key] = {"model": model, "kind": kind, "mtime": mtime}
        return {
            "model": key,
            "kind": kind,
            "cached": False,
            "load_seconds": round(time.perf_counter() - started, 4),
        }

    def _model(self, model: str | None) -> Any:
        if model is None:
            if len(self._models) != 1:
                raise ValueError(
                    f"{len(self._models)} models are loaded in this worker; name one with model=<path>"
                )
            return next(iter(self._models.values()))["model"]
        key = str(Path(model).expanduser().resolve())
        if key not in self._models:
            self.load(key)
        return self._models[key]["model"]

    def _run(self, model: Any, inputs: Any, dtype: str) -> Any:
        import torch

        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got '{dtype}'")
        with torch.inference_mode():
            tensor = torch.tensor(inputs, dtype=getattr(torch, dtype))
            return _to_lists(model(tensor))

    @command(idempotent=True)
    def predict(self, inputs: list[Any], model: str | None = None, dtype: str = "float32") -> Any:
        """Run one batch (a nested list whose first axis is the batch) and return the outputs."""
        return self._run(self._model(model), inputs, dtype)

    @command(idempotent=True)
    def predict_batches(
        self,
        inputs: list[Any],
        batch_size: int = 32,
        model: str | None = None,
        dtype: str = "float32",
    ) -> Iterator[Any]:
        """Split ``inputs`` into batches and stream each batch's outputs as it completes."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        loaded = self._model(model)
        for start in range(0, len(inputs), batch_size):
            yield self._run(loaded, inputs[start : start + batch_size], dtype)

    @command(idempotent=True)
    def models(self) -> list[dict[str, Any]]:
        return [{"model": key, "kind": entry["kind"]} for key, entry in self._models.items()]

    @command(idempotent=True)
    def unload(self, model: str) -> bool:
        return self._models.pop(str(Path(model).expanduser().resolve()), None) is not None

    @command(idempotent=True)
    def cleanup(self) -> dict[str, Any]:
        import gc

        dropped = len(self._models)
        self._models.clear()
        return {"models_dropped": dropped, "collected": gc.collect()}
