"""One interface over LLM providers, with the resilience a pipeline needs around it.

``LLMClient`` (in :mod:`flowstone.llm.client`) is the entry point: it routes a request over
configured providers (Anthropic, OpenAI and OpenAI-compatible servers, Gemini, a local
deterministic baseline), retries transient failures, respects client-side rate limits, skips
providers whose circuit breaker is open, serves repeats from a durable cache and accounts for
tokens and cost. Nothing here imports Dagster or a provider SDK at import time.
"""
