"""The deployable package: the baked artifact, what it needs to run, and ``manifest.json``.

One tar archive (bytes), so the object-store I/O manager stores it with its checksum and the
deployment step unpacks exactly what was measured. The manifest says where the artifact came
from (source hash, passes, config), what it is (baked hash), how good and how fast it is, and
with which library versions, so a deployed model can be audited without the bake's workspace.
"""

from __future__ import annotations

import io
import json
import platform
import tarfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from flowstone.baking.records.bake import BakeRecord
from flowstone.baking.records.manifest import BakedSummary, Manifest, ProfileSummary, SourceSummary
from flowstone.baking.records.profile import ProfileRecord
from flowstone.baking.records.quality import QualityRecord
from flowstone.baking.records.source import SourceRecord

MANIFEST = "manifest.json"
LIBRARIES = (
    "flowstone",
    "torch",
    "onnx",
    "onnxruntime",
    "sentence-transformers",
    "transformers",
    "numpy",
)
# What an ONNX embedding runner needs from the original folder besides the network.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
    "config.json", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
    "1_Pooling/config.json",
)  # fmt: skip


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _add_file(archive: tarfile.TarFile, path: Path, arcname: str) -> None:
    info = archive.gettarinfo(str(path), arcname)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    with path.open("rb") as handle:
        archive.addfile(info, handle)


def build_manifest(record: SourceRecord, baked: BakeRecord, quality: QualityRecord,
                   profile: ProfileRecord, task_gate: dict | None = None) -> Manifest:  # fmt: skip
    """The manifest of ``baked``, made from ``record`` and measured as ``quality``,
    ``task_gate`` (the task suites' verdicts, if any) and ``profile`` say, with the library
    versions of this process."""
    artifact = baked.artifact
    return Manifest(
        model=record.model,
        version=record.version,
        task=record.task,
        source=SourceSummary(record.kind, record.sha256, record.size_bytes, record.parameters),
        baked=BakedSummary(
            artifact.format, baked.sha256, baked.size_bytes, f"model/{artifact.path.name}"
        ),
        passes=list(baked.passes),
        config=record.config,
        quality=quality,
        profile=ProfileSummary.of(profile),
        libraries=library_versions(),
        created_at=datetime.now(UTC).isoformat(),
        task_gate=task_gate,
        recipe=baked.recipe,
    )


def build_package(manifest: Manifest, baked: BakeRecord) -> bytes:
    """The tar archive: ``manifest.json``, ``model/<artifact files>``, ``tokenizer/`` if any."""
    artifact = baked.artifact
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        data = json.dumps(manifest.to_dict(), indent=2, sort_keys=True, default=str).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
        root = artifact.path if artifact.path.is_dir() else artifact.path.parent
        for file in artifact.files():
            _add_file(archive, file, f"model/{file.relative_to(root)}")
        if artifact.tokenizer_dir and artifact.format == "onnx":
            for name in TOKENIZER_FILES:
                file = artifact.tokenizer_dir / name
                if file.is_file():
                    _add_file(archive, file, f"tokenizer/{name}")
    return buffer.getvalue()


def read_manifest(package: bytes) -> Manifest:
    """The manifest inside a package built by :func:`build_package`."""
    with tarfile.open(fileobj=io.BytesIO(package), mode="r") as archive:
        member = archive.extractfile(MANIFEST)
        if member is None:
            raise ValueError("package has no manifest.json")
        return Manifest.from_dict(json.loads(member.read()))
