"""The text of a model reference (``default``, ``baked:NAME``, ``deployed:NAME[@VERSION]``),
parsed without looking anything up: the bake config checks a classifier's ``text_features``
with it, and must not import what resolution needs (deployments, packages).
:mod:`flowstone.baking.registry` resolves references."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT = "default"
KINDS = ("baked", "deployed")


class ModelRefError(ValueError):
    """A reference that is malformed, names an unknown model, or has nothing to point to."""


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference; ``text`` is what the user wrote."""

    kind: str  # "default" | "baked" | "deployed"
    name: str | None = None
    version: str | None = None

    @property
    def text(self) -> str:
        if self.kind == DEFAULT:
            return DEFAULT
        return f"{self.kind}:{self.name}" + (f"@{self.version}" if self.version else "")


def parse_ref(text: Any) -> ModelRef:
    """``default``, ``baked:NAME`` or ``deployed:NAME[@VERSION]``."""
    if not isinstance(text, str) or not text.strip():
        raise ModelRefError(
            f"a model reference is a string (default, baked:NAME or deployed:NAME[@VERSION]), "
            f"got {text!r}"
        )
    text = text.strip()
    if text == DEFAULT:
        return ModelRef(DEFAULT)
    kind, sep, rest = text.partition(":")
    if not sep or kind not in KINDS or not rest:
        raise ModelRefError(
            f"{text!r} is not a model reference: use default, baked:NAME or deployed:NAME[@VERSION]"
        )
    name, at, version = rest.partition("@")
    if not name or (at and not version):
        raise ModelRefError(f"{text!r}: expected a model name (and a version after '@')")
    if kind == "baked" and at:
        raise ModelRefError(
            f"{text!r}: baked:NAME always means the latest bake that passed its gates; "
            "a fixed version is deployed:NAME@VERSION"
        )
    return ModelRef(kind, name, version or None)
