"""Prompt-template LLM systems: a Jinja template plus a provider/model config is a system.

Systems are listed in ``systems.yaml`` (read by :mod:`flowstone.systems.config`) and produce
the same predictions as the baselines. A template sees the case's ``input``, ``context``,
``id`` and ``tags`` (never ``expected``: a system must not see the answer). A system whose key
is absent is still built (so it can be listed, and its partition shown); its ``predict`` fails
with an error that says which variable to set, e.g. "ANTHROPIC_API_KEY not set for system
qa-claude".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flowstone.cases import Case
from flowstone.errors import SystemUnderTestError
from flowstone.llm.config import ClientConfig, ProviderConfig
from flowstone.llm.errors import LLMError, MissingSecretError
from flowstone.llm.templates import PromptTemplate
from flowstone.llm.types import Message, Params
from flowstone.systems.base import Prediction, Progress, System


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

    def __init__(
        self,
        spec: LLMSystemSpec,
        client_config: ClientConfig | None = None,
        client=None,
        repeats: int = 1,
        mode: str = "online",
    ):
        if repeats < 1:
            raise ValueError(f"system '{spec.name}': repeats must be at least 1, got {repeats}")
        if mode not in ("online", "batch"):
            raise ValueError(f"system '{spec.name}': mode must be online or batch, got {mode!r}")
        # "batch": the predictions step submits the suite to the first provider's batch API
        # and a sensor launches the run once it ended (flowstone.systems.batch_mode). Not part
        # of params(): the same prompts to the same model are the same system either way.
        self.mode = mode
        self.spec = spec
        self.repeats = repeats
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
            # absent for one answer per case, so older fingerprints stay as they were
            **({"repeats": self.repeats} if self.repeats > 1 else {}),
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
        # every repeat of every case goes out in one batch; the repeat index keeps each
        # repeat's cache entry apart, so a rerun is free and a repeat is never repeat 0 again
        runs = [
            (r, case, prompt)
            for r in range(self.repeats)
            for case, prompt in zip(cases, prompts, strict=True)
        ]
        try:
            completions = self.client.complete_many(
                [prompt for _, _, prompt in runs],
                params=self.spec.params,
                use_cache=use_cache,
                progress=progress,
                labels=[
                    f"case {case.id}" + (f" (repeat {r + 1})" if self.repeats > 1 else "")
                    for r, case, _ in runs
                ],
                repeats=[r for r, _, _ in runs],
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
                repeat=r,
            )
            for (r, case, _), c in zip(runs, completions, strict=True)
        ]
