"""``systems.yaml``: the prompt-template LLM systems a deployment evaluates, and their providers.

The file is ``FLOWSTONE_SYSTEMS_CONFIG`` or ``<repo>/systems.yaml``; a missing file means no LLM
systems. Every key is checked, and a mistake is a ``ConfigError`` naming the file and the
place in it, so a typo never becomes a silently ignored setting.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowstone.errors import ConfigError
from flowstone.llm.batch_api import BATCH_KINDS
from flowstone.llm.breaker import BreakerConfig
from flowstone.llm.config import ClientConfig, ProviderConfig
from flowstone.llm.ratelimit import RateLimits
from flowstone.llm.retry import RetryPolicy
from flowstone.llm.types import Params
from flowstone.paths import _from_env, project_root
from flowstone.systems.prompt_template import LLMSystemSpec, PromptTemplateSystem


def systems_config_path() -> Path:
    """The systems file this process reads (``FLOWSTONE_SYSTEMS_CONFIG`` or the repo's)."""
    return _from_env("FLOWSTONE_SYSTEMS_CONFIG", project_root() / "systems.yaml")


_PROVIDER_KEYS = {
    "name",
    "kind",
    "model",
    "base_url",
    "api_key",
    "timeout_s",
    "capabilities",
    "capability_rank",
    "requests_per_minute",
    "tokens_per_minute",
    "input_price_per_mtok",
    "output_price_per_mtok",
    "options",
}
_SYSTEM_KEYS = {
    "name",
    "template",
    "templates",
    "providers",
    "params",
    "system_prompt",
    "description",
    "strategy",
    "cache",
    "repeats",
    "mode",
}
#: How a system's requests reach its provider: one call per case, or the provider's batch API.
MODES = ("online", "batch")


def _provider(source: Path, where: str, raw: dict, system: str) -> ProviderConfig:
    if not isinstance(raw, dict):
        raise ConfigError(source, where, "a provider must be a mapping with kind and model")
    unknown = set(raw) - _PROVIDER_KEYS
    if unknown:
        raise ConfigError(
            source,
            f"{where}.{sorted(unknown)[0]}",
            f"unknown key; allowed: {sorted(_PROVIDER_KEYS)}",
        )
    try:
        return ProviderConfig(
            name=raw.get("name") or raw.get("kind", ""),
            kind=raw.get("kind", ""),
            model=raw.get("model", ""),
            base_url=raw.get("base_url"),
            api_key_ref=raw.get("api_key"),
            timeout_s=float(raw.get("timeout_s", 60.0)),
            capabilities=tuple(raw.get("capabilities", ())),
            capability_rank=int(raw.get("capability_rank", 0)),
            limits=RateLimits(raw.get("requests_per_minute"), raw.get("tokens_per_minute")),
            input_price_per_mtok=raw.get("input_price_per_mtok"),
            output_price_per_mtok=raw.get("output_price_per_mtok"),
            owner=f"system {system}",
            options=dict(raw.get("options") or {}),
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(source, where, str(exc)) from None


def _client_config(source: Path, raw: dict, strategy: str | None) -> ClientConfig:
    try:
        return ClientConfig(
            strategy=strategy or raw.get("strategy", "fallback"),
            retry=RetryPolicy(**raw.get("retry", {})),
            breaker=BreakerConfig(**raw.get("breaker", {})),
            cache_enabled=bool(raw.get("cache", True)),
            cache_path=raw.get("cache_path"),
            max_concurrency=int(raw.get("concurrency", 8)),
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(source, "defaults", str(exc)) from None


def _template_file(source: Path, where: str, relative: object) -> Path:
    if not isinstance(relative, str) or not relative:
        raise ConfigError(source, where, "must be a path to a template file")
    path = (source.parent / relative).resolve()
    if not path.is_file():
        raise ConfigError(source, where, f"template file {path} not found")
    return path


def _templates(source: Path, where: str, raw: dict) -> tuple[Path | None, dict[str, Path]]:
    """The default template and the per-suite ones; at least one must be given."""
    default = (
        _template_file(source, f"{where}.template", raw["template"]) if "template" in raw else None
    )
    per_suite = raw.get("templates") or {}
    if not isinstance(per_suite, dict):
        raise ConfigError(source, f"{where}.templates", "must map suite names to template files")
    suite_templates = {
        suite: _template_file(source, f"{where}.templates.{suite}", path)
        for suite, path in per_suite.items()
    }
    if default is None and not suite_templates:
        raise ConfigError(source, f"{where}.template", "give a template, or templates per suite")
    return default, suite_templates


def load_llm_systems(path: str | Path | None = None) -> list[PromptTemplateSystem]:
    """Build every system listed in the YAML file; a missing file means no LLM systems."""
    import yaml

    source = Path(path) if path else systems_config_path()
    if not source.exists():
        return []
    document = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    if not isinstance(document, dict):
        raise ConfigError(source, "<root>", "must be a mapping with 'systems'")
    defaults = document.get("defaults") or {}
    systems = []
    for index, raw in enumerate(document.get("systems") or []):
        where = f"systems[{index}]"
        if not isinstance(raw, dict) or "name" not in raw:
            raise ConfigError(source, where, "a system needs at least name, template and providers")
        unknown = set(raw) - _SYSTEM_KEYS
        if unknown:
            raise ConfigError(
                source,
                f"{where}.{sorted(unknown)[0]}",
                f"unknown key; allowed: {sorted(_SYSTEM_KEYS)}",
            )
        name = raw["name"]
        template, suite_templates = _templates(source, where, raw)
        providers = raw.get("providers") or []
        if not providers:
            raise ConfigError(source, f"{where}.providers", "list at least one provider")
        try:
            params = Params.from_mapping(raw.get("params"))
        except (ValueError, TypeError) as exc:
            raise ConfigError(source, f"{where}.params", str(exc)) from None
        spec = LLMSystemSpec(
            name=name,
            template_path=template,
            suite_templates=suite_templates,
            providers=tuple(
                _provider(source, f"{where}.providers[{i}]", p, name)
                for i, p in enumerate(providers)
            ),
            params=params,
            system_prompt=raw.get("system_prompt"),
            description=raw.get("description", ""),
        )
        repeats = raw.get("repeats", 1)
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ConfigError(
                source,
                f"{where}.repeats",
                f"must be a whole number of answers per case, at least 1; got {repeats!r}",
            )
        mode = _mode(source, where, raw, spec, defaults)
        systems.append(
            PromptTemplateSystem(
                spec,
                _client_config(
                    source,
                    {**defaults, **({"cache": raw["cache"]} if "cache" in raw else {})},
                    raw.get("strategy"),
                ),
                repeats=repeats,
                mode=mode,
            )
        )
    return systems


def _mode(source: Path, where: str, raw: dict, spec: LLMSystemSpec, defaults: dict) -> str:
    """``online`` (the default) or ``batch``. A batch goes to the system's first provider, so
    that one must have a batch API; the answers reach the run through the response cache, so
    batch mode needs the cache on."""
    mode = raw.get("mode", "online")
    if mode not in MODES:
        raise ConfigError(
            source,
            f"{where}.mode",
            f"system '{spec.name}': unknown mode {mode!r}; use one of {', '.join(MODES)}",
        )
    if mode == "online":
        return mode
    first = spec.providers[0]
    if first.kind not in BATCH_KINDS:
        raise ConfigError(
            source,
            f"{where}.mode",
            f"system '{spec.name}': mode batch sends its batch to its first provider, "
            f"{first.kind}/{first.model}, which has no batch API; batch mode is available on "
            f"{' and '.join(BATCH_KINDS)} (or set mode: online)",
        )
    if not raw.get("cache", defaults.get("cache", True)):
        raise ConfigError(
            source,
            f"{where}.cache",
            f"system '{spec.name}': mode batch delivers its answers through the response "
            "cache; turn the cache on for it (or set mode: online)",
        )
    return mode


_MODEL_SYSTEM_KEYS = {"name", "model", "description"}


def _model_system_entries(
    path: str | Path | None, section: str, default: str | None, check: Callable[[Any], object]
) -> list[tuple[str, str, str | None]]:
    """(name, model reference, description) of each entry of a ``retrieval:`` or
    ``classifiers:`` section, each reference checked here by ``check`` (it resolves it and
    raises ModelRefError), so an unknown or never-baked model is a load error naming the key."""
    import yaml

    from flowstone.baking.registry import ModelRefError

    source = Path(path) if path else systems_config_path()
    if not source.exists():
        return []
    document = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    entries = document.get(section) or [] if isinstance(document, dict) else []
    if not isinstance(entries, list):
        raise ConfigError(source, section, "must be a list of {name, model, description}")
    found = []
    for index, raw in enumerate(entries):
        where = f"{section}[{index}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise ConfigError(source, where, "needs a name and a model reference")
        unknown = set(raw) - _MODEL_SYSTEM_KEYS
        if unknown:
            raise ConfigError(source, f"{where}.{sorted(unknown)[0]}",
                              f"unknown key; allowed: {sorted(_MODEL_SYSTEM_KEYS)}")  # fmt: skip
        model = raw.get("model", default)
        try:
            check(model)
        except ModelRefError as exc:
            raise ConfigError(source, f"{where}.model", str(exc)) from None
        description = raw.get("description")
        if description is not None and not isinstance(description, str):
            raise ConfigError(source, f"{where}.description", "must be a string")
        found.append((str(raw["name"]), str(model), description))
    return found


def load_retrieval_systems(path: str | Path | None = None) -> list:
    """The ``retrieval:`` section: dense nearest-sentence systems on another embedding model,
    e.g. ``{name: minilm-baked-nearest, model: "baked:minilm"}``."""
    from flowstone.baking.registry import resolve
    from flowstone.systems.retrieval import DenseNearestSentence

    entries = _model_system_entries(path, "retrieval", "default",
                                    lambda model: resolve(model, task="embedding"))  # fmt: skip
    return [
        DenseNearestSentence(
            name, model, description or f"Context sentence nearest the question by {model}"
        )
        for name, model, description in entries
    ]


def load_classifier_systems(path: str | Path | None = None) -> list:
    """The ``classifiers:`` section: baked text classifiers answering classification suites,
    e.g. ``{name: intent-baked, model: "baked:intent_classifier"}``. The bake's config must
    name its ``labels`` and ``text_features``."""
    from flowstone.systems.classifier import BakedClassifier

    # the check resolves the reference as a classifier and reads its labels and features
    entries = _model_system_entries(path, "classifiers", None,
                                    lambda model: BakedClassifier("-", model).resolved())  # fmt: skip
    return [BakedClassifier(name, model, description) for name, model, description in entries]
