"""Artifacts a bake passes from step to step, and the runners that execute them.

An artifact is a file (or folder) plus its format. Every format runs behind one call:
``run(batch) -> numpy array``: logits for a classifier (batch: float32 array), embeddings for an
embedding model (batch: list of sentences). Quality and profiling then compare any two
variants the same way, whatever runtime each uses.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from flowstone.baking.onnx.runtime import OnnxEmbedder

FORMATS = ("sentence_transformers", "state_dict", "torch_module", "torchscript", "onnx")


@dataclass(frozen=True)
class Artifact:
    """A model variant on disk. ``tokenizer_dir`` travels with embedding variants whose file
    holds only the network (ONNX), so their runner tokenises like the original."""

    format: str
    path: Path
    task: str
    tokenizer_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "path": str(self.path),
            "task": self.task,
            "tokenizer_dir": str(self.tokenizer_dir) if self.tokenizer_dir else None,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Artifact:
        return cls(
            format=data["format"],
            path=Path(data["path"]),
            task=data["task"],
            tokenizer_dir=Path(data["tokenizer_dir"]) if data.get("tokenizer_dir") else None,
            extra=dict(data.get("extra") or {}),
        )

    def files(self) -> list[Path]:
        if self.path.is_dir():
            return sorted(p for p in self.path.rglob("*") if p.is_file())
        extra = [p for p in self.path.parent.glob(self.path.name + ".*") if p.is_file()]
        return [self.path, *sorted(extra)]  # ONNX external data files sit beside the model

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files())

    def sha256(self) -> str:
        """One hash over every file of the artifact, in ``files()`` order."""
        import hashlib

        digest = hashlib.sha256()
        for file in self.files():
            with file.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        return digest.hexdigest()


def set_threads(threads: int | None) -> int:
    """Use ``threads`` intra-op threads for torch (None: torch's default); returns the count."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def load_torch_module(artifact: Artifact, *, architecture_loader: Any = None) -> Any:
    """A torch module from a ``torch_module`` (our own checkpoint) or ``torchscript`` file."""
    import torch

    from flowstone.baking import torch_warnings

    if artifact.format == "torchscript":
        with torch_warnings.loading():
            return torch.jit.load(str(artifact.path), map_location="cpu").eval()
    if artifact.format == "torch_module":
        # Our own pass checkpoints in the bake workspace: full modules (quantised modules have
        # no state-dict-only form that loads without their quantised class tree).
        with torch_warnings.loading():
            return torch.load(str(artifact.path), map_location="cpu", weights_only=False).eval()
    if artifact.format == "sentence_transformers":
        from flowstone.encoder import load_encoder

        return load_encoder(str(artifact.path))
    if artifact.format == "state_dict" and architecture_loader is not None:
        return architecture_loader()
    raise ValueError(f"{artifact.format} artifacts are not torch modules")


class ClassifierRunner:
    """Logits for a float32 batch, from a torch module, TorchScript or ONNX Runtime."""

    def __init__(self, artifact: Artifact, *, threads: int | None = None, module: Any = None):
        self.artifact = artifact
        self.threads = threads
        self._session = None
        self._module = module
        if artifact.format == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = int(threads)
                options.inter_op_num_threads = 1
            self._session = ort.InferenceSession(
                str(artifact.path), options, providers=["CPUExecutionProvider"]
            )
            self._input = self._session.get_inputs()[0].name
        elif module is None:
            set_threads(threads)
            self._module = load_torch_module(artifact)

    def run(self, batch: Any) -> Any:
        import numpy as np

        array = np.ascontiguousarray(batch, dtype=np.float32)
        if self._session is not None:
            return self._session.run(None, {self._input: array})[0]
        import torch

        with torch.inference_mode():
            out = self._module(torch.from_numpy(array))
        return out.detach().numpy()


class EmbeddingRunner:
    """Embeddings for a list of sentences, from a SentenceTransformer (pickled or folder) or
    an ONNX network run by ``flowstone.baking.onnx.runtime.OnnxEmbedder``."""

    def __init__(self, artifact: Artifact, *, threads: int | None = None, batch_size: int = 32):
        self.artifact = artifact
        self.batch_size = batch_size
        self._onnx: OnnxEmbedder | None = None
        self._model: Any = None
        if artifact.format == "onnx":
            from flowstone.baking.onnx.runtime import OnnxEmbedder

            if artifact.tokenizer_dir is None:
                raise ValueError(
                    f"{artifact.path}: an ONNX embedding model needs its tokenizer_dir"
                )
            self._onnx = OnnxEmbedder(artifact.tokenizer_dir, artifact.path, threads=threads)
        else:
            set_threads(threads)
            self._model = load_torch_module(artifact)

    def run(self, sentences: list[str], batch_size: int | None = None) -> Any:
        size = batch_size or self.batch_size
        if self._onnx is not None:
            return self._onnx.encode(list(sentences), batch_size=size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self._model.encode(
                list(sentences), batch_size=size, convert_to_numpy=True, show_progress_bar=False
            )


def open_runner(artifact: Artifact, *, threads: int | None = None, module: Any = None) -> Any:
    """The runner for ``artifact``'s task (``module``: an already loaded original)."""
    if artifact.task == "embedding":
        if module is not None and artifact.format in ("sentence_transformers", "torch_module"):
            runner = EmbeddingRunner.__new__(EmbeddingRunner)
            runner.artifact, runner.batch_size, runner._onnx, runner._model = (
                artifact,
                32,
                None,
                module,
            )
            return runner
        return EmbeddingRunner(artifact, threads=threads)
    return ClassifierRunner(artifact, threads=threads, module=module)
