"""The LLM resource: Dagster config in front of ``flowstone.llm.LLMClient``.

Keys: set ``api_key`` with ``dg.EnvVar("ANTHROPIC_API_KEY")`` (resolved by Dagster at launch,
never shown in the UI), or leave it unset and give ``api_key_ref`` (``env:NAME``,
``vault:mount/path#field``, ``aws:secret-id#field``) to resolve on first use, which lets a
code location load on a machine without keys.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field, PrivateAttr

from flowstone.llm.breaker import BreakerConfig
from flowstone.llm.client import LLMClient
from flowstone.llm.config import ClientConfig, ProviderConfig
from flowstone.llm.ratelimit import RateLimits
from flowstone.llm.retry import RetryPolicy


class LLMProviderConfig(dg.Config):
    """One provider endpoint in the route."""

    name: str = Field(description="Unique name: keys the breaker, rate limits, cache and costs.")
    kind: str = Field(
        description="anthropic | openai (also OpenAI-compatible servers) | gemini | local"
    )
    model: str = Field(description="Model id sent to the provider, e.g. claude-haiku-4-5.")
    base_url: str | None = Field(
        default=None, description="Override the API URL (vLLM, Ollama, a proxy)."
    )
    api_key: str | None = Field(default=None, description="The key, normally dg.EnvVar('...').")
    api_key_ref: str | None = Field(
        default=None,
        description="Resolved at first call when api_key is unset: env:NAME, vault:..., aws:...",
    )
    timeout_s: float = Field(default=60.0, description="Per-request timeout in seconds.")
    requests_per_minute: float | None = Field(
        default=None, description="Client-side request limit."
    )
    tokens_per_minute: float | None = Field(default=None, description="Client-side token limit.")
    capabilities: list[str] = Field(
        default_factory=list, description="Declared capabilities for routing."
    )
    capability_rank: int = Field(
        default=0, description="Higher is more capable (most_capable strategy)."
    )
    input_price_per_mtok: float | None = Field(
        default=None, description="USD per million input tokens."
    )
    output_price_per_mtok: float | None = Field(
        default=None, description="USD per million output tokens."
    )

    def to_core(self) -> ProviderConfig:
        return ProviderConfig(
            name=self.name,
            kind=self.kind,
            model=self.model,
            base_url=self.base_url,
            api_key=self.api_key,
            api_key_ref=self.api_key_ref,
            timeout_s=self.timeout_s,
            capabilities=tuple(self.capabilities),
            capability_rank=self.capability_rank,
            limits=RateLimits(self.requests_per_minute, self.tokens_per_minute),
            input_price_per_mtok=self.input_price_per_mtok,
            output_price_per_mtok=self.output_price_per_mtok,
        )


def _local_only() -> list[LLMProviderConfig]:
    return [LLMProviderConfig(name="local", kind="local", model="local-baseline")]


class LLMResource(dg.ConfigurableResource):
    """Routes completions over providers with retries, rate limits, breakers and a cache.

    The default is the local deterministic baseline, so a fresh clone runs with no keys.
    """

    providers: list[LLMProviderConfig] = Field(
        default_factory=_local_only,
        description="Providers in fallback order (or ordered by strategy).",
    )
    strategy: str = Field(
        default="fallback", description="fallback | cheapest | fastest | most_capable | round_robin"
    )
    max_attempts: int = Field(default=5, description="Attempts per provider before falling back.")
    initial_backoff_s: float = Field(
        default=0.5, description="First retry wait (exponential, jittered)."
    )
    max_backoff_s: float = Field(default=30.0, description="Longest wait between retries.")
    breaker_failure_threshold: int = Field(
        default=5, description="Failed calls in a row that open a breaker."
    )
    breaker_recovery_timeout_s: float = Field(
        default=30.0, description="Open time before a trial call."
    )
    cache_enabled: bool = Field(
        default=True, description="Serve repeated requests from the response cache."
    )
    cache_path: str | None = Field(
        default=None,
        description="Where responses are cached: a SQLite file (default "
        "<DAGSTER_HOME or .dagster_home>/llm_cache.sqlite), file:///shared/folder or "
        "s3://bucket/prefix (shared by every host; endpoint from AWS_ENDPOINT_URL).",
    )
    max_concurrency: int = Field(default=8, description="Parallel requests in a batch.")

    _client: LLMClient | None = PrivateAttr(default=None)

    def client_config(self) -> ClientConfig:
        return ClientConfig(
            strategy=self.strategy,
            retry=RetryPolicy(self.max_attempts, self.initial_backoff_s, self.max_backoff_s),
            breaker=BreakerConfig(self.breaker_failure_threshold, self.breaker_recovery_timeout_s),
            cache_enabled=self.cache_enabled,
            cache_path=self.cache_path,
            max_concurrency=self.max_concurrency,
        )

    def get_client(self) -> LLMClient:
        """The core client (built once per resource instance, i.e. once per step)."""
        if self._client is None:
            self._client = LLMClient([p.to_core() for p in self.providers], self.client_config())
        return self._client
