"""Plain configuration of providers and of the client (the Dagster resource builds these)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from flowstone.llm.breaker import BreakerConfig
from flowstone.llm.ratelimit import RateLimits
from flowstone.llm.retry import RetryPolicy

PROVIDER_KINDS = ("anthropic", "openai", "gemini", "local")
DEFAULT_KEY_REFS = {
    "anthropic": "env:ANTHROPIC_API_KEY",
    "openai": "env:OPENAI_API_KEY",
    "gemini": "env:GEMINI_API_KEY",
}
#: Where each kind's SDK sends a request when no base_url is set: the same server either way.
DEFAULT_BASE_URLS = {
    "anthropic": "https://api.anthropic.com",
    "openai": "https://api.openai.com/v1",
    "gemini": "https://generativelanguage.googleapis.com",
    "local": "local",
}
ROUTING_STRATEGIES = ("fallback", "cheapest", "fastest", "most_capable", "round_robin")


@dataclass(frozen=True)
class ProviderConfig:
    """One provider endpoint: which API, which model, where, with which key and limits.

    ``name`` identifies the provider for the breaker, the cache and the cost tables; two
    entries of the same ``kind`` (e.g. OpenAI and a local vLLM server) need distinct names.
    ``api_key`` is a resolved value (from a Dagster ``EnvVar``); ``api_key_ref`` a reference
    resolved at the first call (``env:NAME``, ``vault:mount/path#field``, ``aws:id#field``), so
    a provider without its key can be configured and fails only when used. ``owner`` is who
    needs the key, for error messages ("system qa-claude").
    """

    name: str
    kind: str
    model: str
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    api_key_ref: str | None = None
    timeout_s: float = 60.0
    capabilities: tuple[str, ...] = ()
    capability_rank: int = 0
    limits: RateLimits = field(default_factory=RateLimits)
    input_price_per_mtok: float | None = None
    output_price_per_mtok: float | None = None
    owner: str | None = None
    options: dict = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in PROVIDER_KINDS:
            raise ValueError(
                f"provider '{self.name}': kind must be one of {PROVIDER_KINDS}, got '{self.kind}'"
            )
        if not self.name or not self.model:
            raise ValueError(f"provider {self.name!r}: name and model are required")
        if self.timeout_s <= 0:
            raise ValueError(f"provider '{self.name}': timeout_s must be > 0")

    @property
    def key_ref(self) -> str | None:
        return self.api_key_ref or DEFAULT_KEY_REFS.get(self.kind)

    @property
    def purpose(self) -> str:
        return self.owner or f"provider '{self.name}'"

    @property
    def credential_hash(self) -> str:
        """Which credential the calls carry, as a hash: of its reference (``env:NAME``), or
        of the value when one was given directly. Never the key itself."""
        credential = f"value:{self.api_key}" if self.api_key else f"ref:{self.key_ref or ''}"
        return hashlib.sha256(credential.encode()).hexdigest()[:12]

    @property
    def endpoint(self) -> str:
        """The identity of the endpoint: kind, base URL, model and credential hash.

        The response cache, the circuit breaker and the rate limiter are keyed by it, not by
        ``name``: two systems naming the same model on two vLLM hosts never share an answer or a
        breaker, and two systems (or a system and a judge) on one endpoint share its limit and
        its health whatever they call it.
        """
        url = (self.base_url or DEFAULT_BASE_URLS.get(self.kind, "")).rstrip("/")
        return f"{self.kind}:{self.model}@{url}#{self.credential_hash}"


@dataclass(frozen=True)
class ClientConfig:
    """Everything around the providers: routing, resilience and caching."""

    strategy: str = "fallback"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    cache_enabled: bool = True
    cache_path: str | None = (
        None  # SQLite path, file:///dir or s3://bucket/prefix; default <instance>/llm_cache.sqlite
    )
    max_concurrency: int = 8

    def __post_init__(self) -> None:
        if self.strategy not in ROUTING_STRATEGIES:
            raise ValueError(
                f"routing strategy must be one of {ROUTING_STRATEGIES}, got '{self.strategy}'"
            )
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
