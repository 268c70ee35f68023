"""``pools.yaml``: which bridges one pool server runs, each with its own workers and limits.

One file says it all so that an operator sees, in one place, every framework a host keeps warm
and what each may cost. Each bridge gets a separate :class:`~flowstone.workers.pool.WorkerPool`
(:meth:`BridgePoolSpec.pool_config`), so one bridge's memory runaway or timeouts never take
workers from another. The file is checked whole before any worker starts: every mistake is a
:class:`~flowstone.errors.ConfigError` naming the file and the key (``bridges.metrics.workers``),
never a surprise at the first call.

Its path: ``$FLOWSTONE_POOLS_CONFIG``, else ``<project root>/pools.yaml``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from flowstone.errors import ConfigError
from flowstone.paths import project_root
from flowstone.workers.bridge import (
    RESERVED_NAMES,
    entry_point_bridges,
    registered_bridges,
)
from flowstone.workers.pool import PoolConfig
from flowstone.workers.protocol import DEFAULT_MAX_FRAME_BYTES

ENV_VAR = "FLOWSTONE_POOLS_CONFIG"
FILE_NAME = "pools.yaml"
_BRIDGE_KEYS = (
    "workers",
    "overflow",
    "overflow_idle_s",
    "memory_limit_mb",
    "max_rss_mb",
    "timeout_s",
    "max_requests",
    "max_age_s",
    "preload",
    "options",
    "requires",
    "target",
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def pools_config_path() -> Path:
    """``$FLOWSTONE_POOLS_CONFIG`` when set, else ``pools.yaml`` at the project root."""
    value = os.environ.get(ENV_VAR)
    return Path(value).expanduser().resolve() if value else project_root() / FILE_NAME


@dataclass(frozen=True)
class BridgePoolSpec:
    """One ``bridges.<name>`` entry: the bridge, its limits and what it needs to run.

    ``None`` for a limit means "no limit" (or the pool's default for ``timeout_s``).
    """

    name: str
    workers: int = 1
    overflow: int = 0
    overflow_idle_s: float = 30.0
    memory_limit_mb: int | None = None
    max_rss_mb: float | None = None
    timeout_s: float | None = 300.0
    max_requests: int | None = None
    max_age_s: float | None = None
    preload: bool | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    target: str | None = None

    def missing_requirements(self, environ: Mapping[str, str] | None = None) -> list[str]:
        """The ``requires`` variables unset (or empty) in ``environ`` (default: os.environ)."""
        env = os.environ if environ is None else environ
        return [name for name in self.requires if not env.get(name)]

    def bridge_options(self) -> dict[str, Any]:
        """``options`` with ``preload`` folded in, as the bridge's constructor receives them."""
        options = dict(self.options)
        if self.preload is not None:
            options["preload"] = self.preload
        return options

    def limits(self) -> dict[str, Any]:
        """The limits as written (for stats and status)."""
        return {
            "workers": self.workers,
            "overflow": self.overflow,
            "overflow_idle_s": self.overflow_idle_s if self.overflow else None,
            "memory_limit_mb": self.memory_limit_mb,
            "max_rss_mb": self.max_rss_mb,
            "timeout_s": self.timeout_s,
            "max_requests": self.max_requests,
            "max_age_s": self.max_age_s,
        }

    def pool_config(self, **overrides: Any) -> PoolConfig:
        """This bridge's WorkerPool settings; ``overrides`` sets the server-wide ones
        (registry_dir, pythonpath, health_interval_s, queue_size, start_timeout_s...)."""
        settings: dict[str, Any] = {
            "bridge": self.name,
            "size": self.workers,
            "overflow": self.overflow,
            "overflow_idle_s": self.overflow_idle_s,
            "bridge_options": self.bridge_options(),
            "default_timeout_s": self.timeout_s,
            "memory_limit_mb": self.memory_limit_mb,
            "max_rss_mb": self.max_rss_mb,
            "max_requests": self.max_requests,
            "max_age_s": self.max_age_s,
        }
        settings.update(overrides)
        return PoolConfig(**settings)


@dataclass(frozen=True)
class PoolsConfig:
    """The whole file: bridges in the order written."""

    source: str
    bridges: Mapping[str, BridgePoolSpec]
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES

    @property
    def size(self) -> int:
        """Workers across every bridge (what a server reports as its size)."""
        return sum(spec.workers for spec in self.bridges.values())

    def only(self, names: Sequence[str], *, workers: int | None = None,
             options: Mapping[str, Any] | None = None) -> PoolsConfig:  # fmt: skip
        """These bridges of the file only; with one name, ``workers`` and ``options`` (merged
        over the file's) override its entry, as the on-demand pool asks for its bridge."""
        missing = [name for name in names if name not in self.bridges]
        if missing:
            raise ConfigError(self.source, f"bridges.{missing[0]}",
                              f"not in the file (its bridges: {', '.join(self.bridges)})")  # fmt: skip
        if len(names) != 1 and (workers is not None or options):
            raise ConfigError(self.source, "bridges", "workers and options override one bridge")
        chosen = {name: self.bridges[name] for name in names}
        if len(names) == 1:
            spec = chosen[names[0]]
            if workers is not None:
                spec = replace(spec, workers=workers)
            if options:
                extra = dict(options)
                preload = extra.pop("preload", spec.preload)  # the file's key, not an option
                spec = replace(spec, preload=preload, options={**spec.options, **extra})
            chosen[names[0]] = spec
        return replace(self, bridges=chosen)


# Value checks ---------------------------------------------------------------------------------


def _int(source: str, key: str, value: object, minimum: int, optional: bool) -> int | None:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        none = " or null (no limit)" if optional else ""
        raise ConfigError(source, key, f"must be an integer >= {minimum}{none}, got {value!r}")
    return value


def _positive(source: str, key: str, value: object, optional: bool = True) -> float | None:
    if value is None and optional:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        none = " or null (no limit)" if optional else ""
        raise ConfigError(source, key, f"must be a positive number{none}, got {value!r}")
    return float(value)


def _requires(source: str, key: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError(
            source, key, f"must be a list of environment variable names, got {value!r}"
        )
    for index, name in enumerate(value):
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise ConfigError(
                source, f"{key}[{index}]", f"must be an environment variable name, got {name!r}"
            )
    return tuple(value)


def _parse_bridge(source: str, name: object, raw: object, known: set[str]) -> BridgePoolSpec:
    key = f"bridges.{name}"
    if not isinstance(name, str) or not name or ":" in name or name in RESERVED_NAMES:
        raise ConfigError(
            source, key, "a bridge name must be a non-empty string without ':' and not 'pool'"
        )
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, key, f"must be a mapping of settings, got {raw!r}")
    for unknown in raw:
        if unknown not in _BRIDGE_KEYS:
            raise ConfigError(
                source, f"{key}.{unknown}", f"unknown key; known keys: {', '.join(_BRIDGE_KEYS)}"
            )
    target = raw.get("target")
    if target is not None and (not isinstance(target, str) or not _TARGET.match(target)):
        raise ConfigError(
            source, f"{key}.target", f"must be 'package.module:Class', got {target!r}"
        )
    if target is None and name not in known:
        raise ConfigError(
            source,
            key,
            f"unknown bridge '{name}': not built in, not an installed 'flowstone.bridges' entry "
            f"point, and no 'target' (known: {', '.join(sorted(known))})",
        )
    overflow = _int(source, f"{key}.overflow", raw.get("overflow", 0), 0, optional=False) or 0
    overflow_idle_s = _positive(
        source, f"{key}.overflow_idle_s", raw.get("overflow_idle_s", 30.0), optional=False
    )
    preload = raw.get("preload")
    if preload is not None and not isinstance(preload, bool):
        raise ConfigError(source, f"{key}.preload", f"must be true or false, got {preload!r}")
    options = raw.get("options") or {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise ConfigError(source, f"{key}.options", f"must be a mapping, got {options!r}")
    timeout = raw.get("timeout_s", 300.0)
    return BridgePoolSpec(
        name=name,
        workers=_int(source, f"{key}.workers", raw.get("workers", 1), 1, optional=False) or 1,
        overflow=overflow,
        overflow_idle_s=overflow_idle_s or 30.0,
        memory_limit_mb=_int(
            source, f"{key}.memory_limit_mb", raw.get("memory_limit_mb"), 1, optional=True
        ),
        max_rss_mb=_positive(source, f"{key}.max_rss_mb", raw.get("max_rss_mb")),
        timeout_s=_positive(source, f"{key}.timeout_s", timeout),
        max_requests=_int(source, f"{key}.max_requests", raw.get("max_requests"), 1, optional=True),
        max_age_s=_positive(source, f"{key}.max_age_s", raw.get("max_age_s")),
        preload=preload,
        options=dict(options),
        requires=_requires(source, f"{key}.requires", raw.get("requires")),
        target=target,
    )


def parse_pools_config(
    data: object, source: str = FILE_NAME, known_bridges: Iterable[str] | None = None
) -> PoolsConfig:
    """Check a loaded document; ``known_bridges`` defaults to the built-in and registered
    bridges plus the installed entry points (their names only: nothing is imported)."""
    known = set(
        known_bridges
        if known_bridges is not None
        else [*registered_bridges(), *entry_point_bridges()]
    )
    if not isinstance(data, dict):
        raise ConfigError(
            source, "bridges", f"the file must be a mapping with 'bridges', got {data!r}"
        )
    for unknown in data:
        if unknown != "bridges":
            raise ConfigError(source, str(unknown), "unknown key; the file has one key, 'bridges'")
    bridges = data.get("bridges")
    if not isinstance(bridges, dict) or not bridges:
        raise ConfigError(
            source, "bridges", f"must map at least one bridge name to its settings, got {bridges!r}"
        )
    specs = {str(name): _parse_bridge(source, name, raw, known) for name, raw in bridges.items()}
    return PoolsConfig(source=source, bridges=specs)


def load_pools_config(
    path: Path | str | None = None, known_bridges: Iterable[str] | None = None
) -> PoolsConfig:
    """Read and check ``pools.yaml`` (default: :func:`pools_config_path`)."""
    file = Path(path) if path is not None else pools_config_path()
    source = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            source, "bridges", f"cannot read the file ({exc.strerror or exc}); set {ENV_VAR}"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, "bridges", f"not valid YAML: {exc}") from None
    return parse_pools_config(data, source, known_bridges)
