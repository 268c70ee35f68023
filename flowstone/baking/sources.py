"""Find out what a dropped model is, check it before anything is baked, and load it.

A model is one of three things: a sentence-transformers folder (``modules.json`` inside), a
TorchScript file, or a state dict (``.pt``/``.pth``/``.safetensors``) whose architecture the
bake config names as ``package.module:Class``. Validation happens here, on the
``source_model`` asset, so a corrupt file, a missing architecture or an oversized model fails
the first asset of its partition and nothing downstream is touched.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowstone.baking.config import BakeConfig, load_config
from flowstone.baking.errors import BakeError

STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
TORCHSCRIPT_SUFFIXES = (".ts", ".torchscript", ".jit")
MODEL_SUFFIXES = STATE_DICT_SUFFIXES + TORCHSCRIPT_SUFFIXES
SAMPLE_SENTENCES = ["FlowStone bakes models.", "A short sentence to check the forward pass."]


@dataclass(frozen=True)
class SourceModel:
    """A model on disk, before loading: what it is, how big, and its content hash."""

    name: str
    path: Path
    kind: str  # sentence_transformers | torchscript | state_dict
    size_bytes: int
    sha256: str

    def version(self, config: dict[str, Any]) -> str:
        """A bake's version: the source's content and its bake config, so a re-drop of the
        same bytes and settings is the same version and a change to either is a new one."""
        blob = self.sha256 + json.dumps(config, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def model_files(path: Path) -> list[Path]:
    """The files that make up the model, in a stable order (the bake config excluded)."""
    if path.is_dir():
        return sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and p.name != "bake.yaml" and ".git" not in p.parts
        )
    return [path]


def sha256_of(path: Path) -> str:
    """Content hash of a file, or of a folder's files and their relative names."""
    digest = hashlib.sha256()
    for file in model_files(path):
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def detect_kind(path: Path, name: str) -> str:
    """Which of the three model kinds ``path`` holds; a clear error when none."""
    if path.is_dir():
        if (path / "modules.json").is_file():
            return "sentence_transformers"
        raise BakeError(
            name, "source_model", f"{path} is a folder without modules.json; a folder model "
            "must be a sentence-transformers model (saved with SentenceTransformer.save)"
        )  # fmt: skip
    if not path.is_file():
        raise BakeError(name, "source_model", f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix in TORCHSCRIPT_SUFFIXES:
        return "torchscript"
    if suffix == ".safetensors":
        return "state_dict"
    if suffix in (".pt", ".pth", ".bin"):
        # torch.jit.save and torch.save both write zip archives; TorchScript's has code/.
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile as exc:
            raise BakeError(
                name,
                "source_model",
                f"{path} is corrupt or truncated: not a PyTorch archive ({exc})",
            ) from exc
        if any("/code/" in n for n in names) or any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
        return "state_dict"
    raise BakeError(
        name, "source_model", f"{path}: unknown model format '{suffix}'; expected a folder, "
        f"or a file ending in {', '.join(MODEL_SUFFIXES)}"
    )  # fmt: skip


def inspect_model(path: Path, name: str, *, max_size_mb: float | None = None) -> SourceModel:
    """Kind, size and hash, without loading; refuses a model over the size limit."""
    kind = detect_kind(path, name)
    size = sum(f.stat().st_size for f in model_files(path))
    if max_size_mb is not None and size > max_size_mb * 1024 * 1024:
        raise BakeError(
            name, "source_model", f"{path} is {size / 2**20:.1f} MB, over the size limit of "
            f"{max_size_mb:g} MB (max_size_mb in {path.name}'s bake config)"
        )  # fmt: skip
    return SourceModel(name=name, path=path, kind=kind, size_bytes=size, sha256=sha256_of(path))


def default_task(kind: str) -> str:
    return "embedding" if kind == "sentence_transformers" else "classifier"


def config_for(path: Path, name: str) -> BakeConfig:
    """The bake config of a dropped model, with defaults for its kind."""
    return load_config(path, task=default_task(detect_kind(path, name)))


def import_architecture(spec: str | None, name: str) -> Any:
    """The class named ``package.module:Class`` in the bake config."""
    if not spec:
        raise BakeError(
            name, "source_model", "a state dict needs its architecture: set "
            "'architecture: package.module:Class' in the model's bake config"
        )  # fmt: skip
    module_name, sep, attr = spec.partition(":")
    if not sep or not attr:
        raise BakeError(
            name, "source_model", f"architecture '{spec}' must look like 'package.module:Class'"
        )
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise BakeError(
            name, "source_model", f"cannot import architecture '{spec}': {exc}. Install the "
            "package that defines it, or fix 'architecture' in the bake config"
        ) from exc  # fmt: skip
    return obj


def load_state_dict(path: Path, name: str) -> dict[str, Any]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        import torch

        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a broken archive
        raise BakeError(name, "source_model", f"{path} is corrupt or truncated: {exc}") from exc
    if not isinstance(state, dict):
        raise BakeError(
            name, "source_model", f"{path} holds a {type(state).__name__}, not a state dict"
        )
    return state


def load_model(source: SourceModel, config: BakeConfig) -> Any:
    """The model as a torch module (or SentenceTransformer), in eval mode."""
    if source.kind == "sentence_transformers":
        from flowstone.encoder import load_encoder

        try:
            return load_encoder(str(source.path))
        except Exception as exc:
            raise BakeError(source.name, "source_model", f"{source.path} does not load as a "
                            f"sentence-transformers model: {exc}") from exc  # fmt: skip
    import torch

    if source.kind == "torchscript":
        from flowstone.baking import torch_warnings

        try:
            with torch_warnings.loading():
                return torch.jit.load(str(source.path), map_location="cpu").eval()
        except Exception as exc:
            raise BakeError(
                source.name, "source_model", f"{source.path} is corrupt or truncated: {exc}"
            ) from exc
    cls = import_architecture(config.architecture, source.name)
    state = load_state_dict(source.path, source.name)
    try:
        module = cls(**config.architecture_kwargs)
        module.load_state_dict(state, strict=True)
    except Exception as exc:
        raise BakeError(
            source.name, "source_model", f"the state dict in {source.path} does not fit "
            f"{config.architecture}({config.architecture_kwargs}): {exc}"
        ) from exc  # fmt: skip
    return module.eval()


def input_shape(model: Any, config: BakeConfig, name: str) -> tuple[int, ...]:
    """The per-example input shape of a classifier: the config's, else the module's own."""
    shape = config.input_shape or getattr(model, "input_shape", None)
    if not shape:
        raise BakeError(
            name, "source_model", "set 'input_shape' (per example, e.g. [64]) in the bake config"
        )
    return tuple(int(d) for d in shape)


def sample_input(model: Any, config: BakeConfig, name: str, batch: int = 2) -> Any:
    """A deterministic batch to run the forward pass on."""
    if config.task == "embedding":
        return (SAMPLE_SENTENCES * batch)[:batch]
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.randn((batch, *input_shape(model, config, name)), generator=generator)


def parameter_count(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))
