"""Provider adapters: each turns messages into one SDK call and SDK errors into ours."""

from __future__ import annotations

from flowstone.llm.config import ProviderConfig
from flowstone.llm.providers.base import Provider


def build_provider(config: ProviderConfig) -> Provider:
    """The adapter for ``config.kind``; SDKs are imported only when a call is made."""
    if config.kind == "anthropic":
        from flowstone.llm.providers.anthropic import AnthropicProvider

        return AnthropicProvider(config)
    if config.kind == "openai":
        from flowstone.llm.providers.openai import OpenAIProvider

        return OpenAIProvider(config)
    if config.kind == "gemini":
        from flowstone.llm.providers.gemini import GeminiProvider

        return GeminiProvider(config)
    from flowstone.llm.providers.local import LocalBaselineProvider

    return LocalBaselineProvider(config)
