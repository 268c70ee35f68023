"""Prompt-template LLM systems: a Jinja template plus a provider/model config is a system.

Systems are listed in ``systems.yaml`` (``FLOWSTONE_SYSTEMS_CONFIG`` or ``<repo>/systems.yaml``)
and produce the same predictions as the baselines. A system whose key is absent is still
built (so it can be listed, and its partition shown); its ``predict`` fails with an error that
says which variable to set, e.g. "ANTHROPIC_API_KEY not set for system qa-claude".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flowstone.errors import ConfigError, SystemUnderTestError
from flowstone.evaluation.suites import Case
from flowstone.llm.breaker import BreakerConfig
from flowstone.llm.config import ClientConfig, ProviderConfig
from flowstone.llm.errors import LLMError, MissingSecretError
from flowstone.llm.ratelimit import RateLimits
from flowstone.llm.retry import RetryPolicy
from flowstone.llm.templates import PromptTemplate
from flowstone.llm.types import Message, Params
from flowstone.paths import _from_env, project_root
from flowstone.systems.base import Prediction, Progress, System


def systems_config_path() -> Path:
    return _from_env("FLOWSTONE_SYSTEMS_CONFIG", project_root() / "systems.yaml")


@dataclass(frozen=True)
class LLMSystemSpec:
    """``template_path`` serves any suite; ``suite_templates`` name the template per suite
    (every suite is a different task: answer, summarise, paraphrase)."""

    name: str
    template_path: Path | None
    providers: tuple[ProviderConfig, ...]
    suite_templates: dict[str, Path] = field(default_factory=dict)
    params: Params = field(default_factory=Params)
    system_prompt: str | None = None
    description: str = ""


class PromptTemplateSystem(System):
    """Renders the template per case and asks the configured providers, in parallel."""

    kind = "llm"

    def __init__(self, spec: LLMSystemSpec, client_config: ClientConfig | None = None, client=None):
        self.spec = spec
        self.name = spec.name
        self.description = spec.description or "LLM system on " + ", ".join(
            f"{p.kind}/{p.model}" for p in spec.providers
        )
        self.template = PromptTemplate(spec.template_path) if spec.template_path else None
        self.suite_templates = {k: PromptTemplate(v) for k, v in spec.suite_templates.items()}
        self.client_config = client_config or ClientConfig()
        self._client = client

    @property
    def client(self):
        """Built on first use, so listing systems opens no cache file and needs no key."""
        if self._client is None:
            from flowstone.llm.client import LLMClient

            self._client = LLMClient(self.spec.providers, self.client_config)
        return self._client

    def params(self) -> dict:
        # Everything that changes outputs; base URLs and keys do not, so they stay out.
        return {
            "template_sha256": self.template.sha256 if self.template else None,
            "suite_templates": {k: t.sha256 for k, t in sorted(self.suite_templates.items())},
            "system_prompt": self.spec.system_prompt,
            "providers": [f"{p.kind}/{p.model}" for p in self.spec.providers],
            "strategy": self.client_config.strategy,
            "sampling": self.spec.params.to_dict(),
        }

    def run_metadata(self) -> dict:
        """Calls, cache hits, tokens and cost so far, and each provider's breaker state."""
        if self._client is None:
            return {}
        return {
            **self._client.totals.as_metadata(),
            "breakers": {name: b.state.value for name, b in self._client.breakers.items()},
        }

    def template_for(self, suite: str | None) -> PromptTemplate:
        template = self.suite_templates.get(suite) if suite else None
        template = template or self.template
        if template is None:
            raise SystemUnderTestError(
                f"system '{self.name}' has no prompt template for suite '{suite}': add "
                f"templates.{suite} (or a default template) to its entry in systems.yaml"
            )
        return template

    def render(self, case: Case, suite: str | None = None) -> list[Message]:
        user = self.template_for(suite).render(
            input=case.input, context=case.context, id=case.id, tags=list(case.tags)
        )
        messages = [Message("system", self.spec.system_prompt)] if self.spec.system_prompt else []
        return [*messages, Message("user", user)]

    def unavailable_reason(self) -> str | None:
        """Why no provider of this system can be called here (a missing key), else None."""
        try:
            self.check_keys()
        except MissingSecretError as exc:
            return str(exc)
        return None

    def check_keys(self) -> None:
        """Raise the first missing-key error when no provider of the system has its key."""
        errors = []
        for provider in self.client.providers:
            if provider.kind == "local":
                return
            try:
                provider.api_key()
                return
            except MissingSecretError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def predict(
        self,
        cases: Sequence[Case],
        progress: Progress | None = None,
        *,
        suite: str | None = None,
        use_cache: bool = True,
    ) -> list[Prediction]:
        self.check_keys()
        prompts = [self.render(case, suite) for case in cases]
        try:
            completions = self.client.complete_many(
                prompts,
                params=self.spec.params,
                use_cache=use_cache,
                progress=progress,
                labels=[f"case {c.id}" for c in cases],
            )
        except LLMError as exc:
            raise SystemUnderTestError(f"system '{self.name}': {exc}") from exc
        return [
            Prediction(
                case_id=case.id,
                output=c.text,
                latency_s=c.latency_s,
                input_tokens=c.input_tokens,
                output_tokens=c.output_tokens,
                cost_usd=c.cost_usd,
                cached=c.cache_hit,
            )
            for case, c in zip(cases, completions, strict=True)
        ]


# -- systems.yaml -------------------------------------------------------------------------------
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
}


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
        systems.append(
            PromptTemplateSystem(
                spec,
                _client_config(
                    source,
                    {**defaults, **({"cache": raw["cache"]} if "cache" in raw else {})},
                    raw.get("strategy"),
                ),
            )
        )
    return systems
