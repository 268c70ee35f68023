"""How models arrive: a drop folder (local or an S3 prefix) and ``flowstone models add``.

Each top-level entry of the drop location is one model: a folder (sentence-transformers) or a
model file, with its ``bake.yaml`` / ``NAME.bake.yaml`` beside it. The partition name is the
entry's name without suffix. A drop's *signature* (sizes and modification times, or S3 ETags)
changes when its content does, so the sensor requests a bake once per version without hashing
large files on every tick.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from flowstone.baking.sources import MODEL_SUFFIXES
from flowstone.errors import FlowStoneError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Drop:
    """A model found in the drop location."""

    name: str
    location: str  # a local path, or s3://bucket/key(/)
    signature: str


def check_name(name: str) -> str:
    """Partition keys become folder names and URL parts: keep them plain."""
    if not NAME_PATTERN.match(name) or ".." in name:
        raise FlowStoneError(
            f"model name {name!r} is not allowed: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def _name_of(entry: Path) -> str:
    return entry.name if entry.is_dir() else entry.name.split(".")[0]


def _is_model(entry: Path) -> bool:
    if entry.name.startswith("."):
        return False  # in-flight copies (see add_model) and hidden files
    if entry.is_dir():
        return (entry / "modules.json").is_file()
    return entry.suffix.lower() in MODEL_SUFFIXES


def _signature(entry: Path) -> str:
    files = sorted(p for p in entry.rglob("*") if p.is_file()) if entry.is_dir() else [entry]
    config = entry.with_name(f"{_name_of(entry)}.bake.yaml")
    if config.exists():
        files.append(config)
    return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


def scan_local(folder: Path) -> list[Drop]:
    if not folder.exists():
        return []
    drops = []
    for entry in sorted(folder.iterdir()):
        if _is_model(entry) and NAME_PATTERN.match(_name_of(entry)):
            drops.append(Drop(_name_of(entry), str(entry), _signature(entry)))
    return drops


def scan_s3(client: object, uri: str) -> list[Drop]:
    """Models under an S3 prefix: ``prefix/name.pt`` files and ``prefix/name/`` folders."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    paginator = client.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
    by_name: dict[str, list[tuple[str, str]]] = {}
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            rest = item["Key"][len(prefix) :]
            head, sep, _ = rest.partition("/")
            by_name.setdefault(head if sep else rest.split(".")[0], []).append((rest, item["ETag"]))
    drops = []
    for name, items in sorted(by_name.items()):
        keys = {key for key, _ in items}
        if not NAME_PATTERN.match(name):
            continue
        if f"{name}/modules.json" in keys:
            location = f"s3://{bucket}/{prefix}{name}/"
        else:
            files = sorted(
                k for k in keys if "/" not in k and Path(k).suffix.lower() in MODEL_SUFFIXES
            )
            if not files:
                continue
            location = f"s3://{bucket}/{prefix}{files[0]}"
        drops.append(Drop(name, location, ";".join(f"{k}:{e}" for k, e in sorted(items))))
    return drops


def fetch_s3(client: object, location: str, target: Path) -> Path:
    """Download an S3 drop into ``target`` (a folder); returns the local model path."""
    bucket, _, key = location.removeprefix("s3://").partition("/")
    target.mkdir(parents=True, exist_ok=True)
    if key.endswith("/"):
        local = target / Path(key.rstrip("/")).name
        paginator = client.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
        for page in paginator.paginate(Bucket=bucket, Prefix=key):
            for item in page.get("Contents", []):
                dest = local / item["Key"][len(key) :]
                dest.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, item["Key"], str(dest))  # type: ignore[attr-defined]
        return local
    local = target / Path(key).name
    client.download_file(bucket, key, str(local))  # type: ignore[attr-defined]
    config_key = key[: len(key) - len(Path(key).name)] + f"{Path(key).name.split('.')[0]}.bake.yaml"
    listed = client.list_objects_v2(Bucket=bucket, Prefix=config_key)  # type: ignore[attr-defined]
    if any(item["Key"] == config_key for item in listed.get("Contents", [])):
        client.download_file(bucket, config_key, str(local.with_name(Path(config_key).name)))  # type: ignore[attr-defined]
    return local


def add_model(
    path: Path, name: str, folder: Path, *, config: Path | None = None, replace: bool = False
) -> Path:
    """Copy a model (and its bake config) into the drop folder under ``name``.

    The copy lands under a hidden name and is renamed when complete, so the sensor never sees
    half a model.
    """
    check_name(name)
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise FlowStoneError(f"{path} does not exist")
    if path.is_file() and path.suffix.lower() not in MODEL_SUFFIXES:
        raise FlowStoneError(
            f"{path}: unknown model format '{path.suffix}'; expected one of {', '.join(MODEL_SUFFIXES)} or a sentence-transformers folder"
        )
    if path.is_dir() and not (path / "modules.json").is_file():
        raise FlowStoneError(
            f"{path} is a folder without modules.json (not a sentence-transformers model)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) if path.is_file() else ""
    target = folder / f"{name}{suffix}"
    existing = [d for d in scan_local(folder) if d.name == name]
    if existing and not replace:
        raise FlowStoneError(
            f"a model named '{name}' is already in {folder}; pass --replace to drop a new version"
        )
    staging = folder / f".{name}{suffix}.incoming"
    shutil.rmtree(staging, ignore_errors=True) if staging.is_dir() else staging.unlink(
        missing_ok=True
    )
    if path.is_dir():
        shutil.copytree(path, staging)
    else:
        shutil.copy2(path, staging)
    config_source = config or (
        path / "bake.yaml"
        if path.is_dir()
        else path.with_name(f"{path.name.split('.')[0]}.bake.yaml")
    )
    if config and path.is_dir():
        shutil.copy2(config, staging / "bake.yaml")
    elif config_source.exists() and path.is_file():
        shutil.copy2(config_source, folder / f"{name}.bake.yaml")
    _copy_validation(config_source if config_source.exists() else None, path, folder)
    for drop in existing:
        old = Path(drop.location)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    staging.rename(target)
    return target


def _copy_validation(config: Path | None, model: Path, folder: Path) -> None:
    """A file model's config may name validation data beside it: drop that file too, so the
    relative path still resolves in the drop folder."""
    if config is None or model.is_dir():
        return
    import yaml

    value = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("validation")
    if isinstance(value, str) and not Path(value).is_absolute():
        source = config.parent / value
        if source.is_file():
            target = folder / value
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
