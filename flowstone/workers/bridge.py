"""Bridges: the code a worker runs, as a class whose marked methods are its commands.

A bridge keeps heavy state (a loaded model, an encoder) on ``self`` so that it survives across
calls; that is the whole point of a warm pool. Commands are addressed as ``bridge:command``
(``metrics:compute``); ``ping``, ``info``, ``stats`` and ``cleanup`` are built in. A command that
is a generator streams its chunks. A command marked ``idempotent=True`` may be retried by the
pool on a fresh worker when its worker dies mid-call; others never are.

Bridge modules are imported by the parent to validate them before any worker starts, so they
must import heavy libraries (torch, sentence-transformers) inside methods, never at top level.
"""

from __future__ import annotations

import importlib
import inspect
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from flowstone.workers.errors import BridgeError

F = TypeVar("F", bound=Callable[..., Any])

BUILTIN_COMMANDS = ("ping", "info", "stats", "cleanup")
RESERVED_NAMES = frozenset({"pool"})  # "pool:*" commands belong to the pool server


def command(fn: F | None = None, *, idempotent: bool = False, name: str | None = None) -> Any:
    """Mark a bridge method as a command (``@command`` or ``@command(idempotent=True)``)."""

    def mark(func: F) -> F:
        func.__flowstone_command__ = {"idempotent": idempotent, "name": name or func.__name__}  # type: ignore[attr-defined]
        return func

    return mark(fn) if fn is not None else mark


@dataclass(frozen=True)
class CommandSpec:
    name: str
    attribute: str
    idempotent: bool
    streaming: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "idempotent": self.idempotent, "streaming": self.streaming}


@dataclass
class RequestContext:
    """What a handler may want to know about the call it serves (``self.context``)."""

    request_id: Any
    command: str
    timeout_ms: int | None
    started: float

    def remaining_seconds(self) -> float | None:
        """Seconds left before the pool kills this worker; lets long handlers stop in time."""
        if self.timeout_ms is None:
            return None
        return self.timeout_ms / 1000.0 - (time.monotonic() - self.started)


class Bridge:
    """Base class for bridges; subclass it, set ``name`` and mark commands with ``@command``."""

    name: ClassVar[str] = "bridge"
    # The distribution this bridge wraps ("sentence-transformers", "torch"); the pool server
    # reports its installed version, so a status shows what a warm worker actually runs.
    framework: ClassVar[str | None] = None

    def __init__(self, **options: Any):
        self.options = options
        self.context: RequestContext | None = None
        self._started = time.time()
        self._served = 0

    def setup(self) -> None:
        """Runs once in the worker before it reports ready (preload models here when asked to)."""

    # Built-in commands -------------------------------------------------------------------

    @command(idempotent=True)
    def ping(self) -> dict[str, Any]:
        return {"pong": True, "pid": os.getpid()}

    @command(idempotent=True)
    def info(self) -> dict[str, Any]:
        return {
            "bridge": self.name,
            "pid": os.getpid(),
            "options": self.options,
            "commands": [spec.to_dict() for spec in self.commands().values()],
        }

    @command(idempotent=True)
    def stats(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self._started, 3),
            "requests": self._served,
            "max_rss_kb": usage.ru_maxrss,
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        }

    @command(idempotent=True)
    def cleanup(self) -> dict[str, Any]:
        """Drop caches; bridges override this to release models they can reload."""
        import gc

        return {"collected": gc.collect()}

    # Introspection --------------------------------------------------------------------------

    @classmethod
    def commands(cls) -> dict[str, CommandSpec]:
        specs: dict[str, CommandSpec] = {}
        for attribute, member in inspect.getmembers(cls, callable):
            marker = getattr(member, "__flowstone_command__", None)
            if marker is None:
                continue
            name = marker["name"]
            if ":" in name:
                raise BridgeError(
                    f"bridge {cls.__qualname__}: command name '{name}' must not contain ':'"
                )
            if name in specs:
                raise BridgeError(f"bridge {cls.__qualname__}: two methods define command '{name}'")
            specs[name] = CommandSpec(
                name=name,
                attribute=attribute,
                idempotent=bool(marker["idempotent"]),
                streaming=inspect.isgeneratorfunction(member),
            )
        return specs


BUILTIN_BRIDGES: dict[str, str] = {
    "echo": "flowstone.workers.bridges.echo:EchoBridge",
    "metrics": "flowstone.workers.bridges.metrics:MetricsBridge",
    "inference": "flowstone.workers.bridges.inference:InferenceBridge",
}
_registry: dict[str, str] = dict(BUILTIN_BRIDGES)


def register_bridge(name: str, target: str | type[Bridge]) -> None:
    """Make a bridge available by short name (``target`` is ``"module:Class"`` or the class)."""
    if name in RESERVED_NAMES or ":" in name:
        raise BridgeError(f"'{name}' cannot name a bridge (reserved or contains ':')")
    if isinstance(target, type):
        target = f"{target.__module__}:{target.__qualname__}"
    _registry[name] = target


def registered_bridges() -> dict[str, str]:
    return dict(_registry)


ENTRY_POINT_GROUP = "flowstone.bridges"


def entry_point_bridges() -> dict[str, str]:
    """Bridges installed packages declare, as name -> ``"module:Class"``, none of them imported.

    A package adds one with ``[project.entry-points."flowstone.bridges"] name = "mod:Class"``,
    the way pytest finds plugins. Importing is left to the caller (``validate_bridge``), so
    that one broken package costs its own bridge only. The first distribution to claim a name
    wins; a built-in name cannot be taken over this way (use ``target`` in pools.yaml).
    """
    from importlib.metadata import entry_points

    found: dict[str, str] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name not in BUILTIN_BRIDGES:
            found.setdefault(entry.name, entry.value)
    return found


@dataclass(frozen=True)
class BridgeInfo:
    """A validated bridge: its short name, import target and commands."""

    name: str
    target: str
    commands: dict[str, CommandSpec]

    def spec_for(self, command_name: str) -> CommandSpec | None:
        """The spec of a command addressed as ``bridge:cmd``, ``cmd`` or a built-in."""
        prefix, sep, bare = command_name.rpartition(":")
        if sep and prefix != self.name:
            return None
        return self.commands.get(bare if sep else command_name)


def load_bridge_class(target: str) -> type[Bridge]:
    module_name, sep, class_name = target.partition(":")
    if not sep or not module_name or not class_name:
        raise BridgeError(
            f"bridge '{target}' is neither a registered name ({', '.join(sorted(_registry))}) "
            "nor a 'module:Class' path"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BridgeError(
            f"bridge '{target}': cannot import module '{module_name}': {exc}"
        ) from exc
    obj: Any = module
    for part in class_name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise BridgeError(f"bridge '{target}': module '{module_name}' has no '{class_name}'")
    if not (isinstance(obj, type) and issubclass(obj, Bridge)):
        raise BridgeError(f"bridge '{target}' is not a subclass of flowstone.workers.bridge.Bridge")
    return obj


def validate_bridge(spec: str) -> BridgeInfo:
    """Resolve a bridge name or ``module:Class`` and check its commands, in the parent process."""
    target = _registry.get(spec, spec)
    cls = load_bridge_class(target)
    name = spec if spec in _registry else cls.name
    if name in RESERVED_NAMES:
        raise BridgeError(f"bridge {target}: the name '{name}' is reserved for the pool server")
    commands = cls.commands()
    missing = [c for c in BUILTIN_COMMANDS if c not in commands]
    if missing:
        raise BridgeError(f"bridge {target} hides built-in commands: {', '.join(missing)}")
    return BridgeInfo(name=name, target=target, commands=commands)
