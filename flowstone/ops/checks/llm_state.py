"""Doctor check: where the LLM rate limits and circuit breakers live, and whether it answers.

Why: with ``FLOWSTONE_LLM_STATE`` naming a Redis, every step process shares one budget per
provider endpoint. A Redis that does not answer fails nothing (each process falls back to its
own limits, with one warning), which is exactly why it goes unnoticed: many processes then
each spend the whole budget and the provider answers 429s. The doctor says which backend is in
use and pings it. Never prints a password.
"""

from __future__ import annotations

from flowstone.ops.checks.result import FAIL, OK, WARN, CheckResult, first_line

NAME = "llm state"


def check_llm_state() -> CheckResult:
    """In-process (unset), Redis answering (ok), Redis silent (warn), malformed (fail)."""
    from flowstone.errors import ConfigError
    from flowstone.llm.state import ENV, RedisState, current_config

    try:
        config = current_config()
    except ConfigError as exc:
        return CheckResult(
            NAME,
            FAIL,
            first_line(exc),
            f"set {ENV} to redis://host:port/db, or unset it for per-process limits",
        )
    if not config.shared:
        return CheckResult(
            NAME,
            OK,
            f"in-process ({ENV} unset): each process has its own rate limits and breakers",
        )
    store = RedisState(config)
    try:
        seconds = store.ping()
        version = store.server_version()
    except Exception as exc:
        return CheckResult(
            NAME,
            WARN,
            f"redis at {config.display} does not answer: {first_line(exc)}; each process falls "
            "back to its own rate limits and breakers",
            f"start Redis at {config.display}, or unset {ENV}",
        )
    finally:
        store.close()
    return CheckResult(
        NAME,
        OK,
        f"redis at {config.display} answers (PING {seconds * 1000:.1f} ms, Redis {version}, "
        f"key prefix {config.prefix}): limits and breakers shared by every process",
    )
