"""The deployment location: approved packages unpacked per model and version, one current.

``<root>/<model>/versions/<version>/`` holds each deployed package; ``<root>/<model>/state.json``
says which version is current and keeps the history, so ``rollback`` can restore the one
before. Every change is write-to-temp-then-rename: a crash leaves the previous deployment in
place, and a failed or rejected bake never reaches this module at all.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flowstone.atomic import write_text
from flowstone.baking.errors import BakeError
from flowstone.baking.package import MANIFEST


def _write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str))


class Deployments:
    """Deployed versions of every model under one root folder."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _state_path(self, model: str) -> Path:
        return self.root / model / "state.json"

    def state(self, model: str) -> dict[str, Any]:
        path = self._state_path(model)
        if not path.exists():
            return {"model": model, "current": None, "history": []}
        return json.loads(path.read_text(encoding="utf-8"))

    def current(self, model: str) -> str | None:
        return self.state(model)["current"]

    def version_dir(self, model: str, version: str) -> Path:
        return self.root / model / "versions" / version

    def deploy(self, model: str, package: bytes, *, approved_by: str | None = None,
               request_id: str | None = None) -> dict[str, Any]:  # fmt: skip
        """Unpack ``package`` as a version of ``model`` and make it current."""
        with tarfile.open(fileobj=io.BytesIO(package), mode="r") as archive:
            manifest = json.loads(archive.extractfile(MANIFEST).read())  # type: ignore[union-attr]
            if manifest["model"] != model:
                raise BakeError(
                    model, "deployed_model", f"package is for model '{manifest['model']}'"
                )
            version = manifest["version"]
            target = self.version_dir(model, version)
            if not target.exists():
                staging = target.with_name(f".{version}.tmp")
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir(parents=True)
                archive.extractall(staging, filter="data")  # refuses absolute and .. paths
                staging.rename(target)
        state = self.state(model)
        event = {"action": "deploy", "version": version, "previous": state["current"],
                 "at": datetime.now(UTC).isoformat(), "approved_by": approved_by,
                 "approval_request": request_id}  # fmt: skip
        state["current"] = version
        state["history"].append(event)
        _write_json(self._state_path(model), state)
        return {**event, "path": str(target), "manifest": manifest}

    def rollback(self, model: str) -> dict[str, Any]:
        """Make the version deployed before the current one current again."""
        state = self.state(model)
        current = state["current"]
        if current is None:
            raise BakeError(model, "rollback", "nothing is deployed")
        earlier = [
            e["version"]
            for e in state["history"]
            if e["action"] == "deploy" and e["version"] != current
        ]
        # The most recent deploy of another version that still exists on disk.
        target = next((v for v in reversed(earlier) if self.version_dir(model, v).exists()), None)
        if target is None:
            raise BakeError(
                model,
                "rollback",
                f"version {current} is the only one deployed; nothing to roll back to",
            )
        event = {
            "action": "rollback",
            "version": target,
            "previous": current,
            "at": datetime.now(UTC).isoformat(),
        }
        state["current"] = target
        state["history"].append(event)
        _write_json(self._state_path(model), state)
        return event

    def models(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.parent.name for p in self.root.glob("*/state.json"))
