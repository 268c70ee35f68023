"""Keep keys out of logs, error messages and asset metadata.

Two nets: every secret value FlowStone resolves is registered here and replaced wherever it
appears, and patterns catch key-shaped strings and auth headers that reached a message some
other way (an SDK's error text, a provider echoing a header back).
"""

from __future__ import annotations

import logging
import re
import threading

MASK = "[REDACTED]"
_MIN_SECRET_LEN = 6

_PATTERNS = (
    # Authorization: Bearer xxx / Basic xxx, in headers, reprs or JSON.
    re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(bearer|basic)?\s*[^\s'\",}]+"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}"),
    # API-key headers: x-api-key, x-goog-api-key, api-key, api_key.
    re.compile(r"(?i)((?:x-(?:goog-)?)?api[-_]?key['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"),
    # Key shapes: OpenAI/Anthropic "sk-...", Google "AIza...", AWS access key ids, Vault tokens.
    re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"),
    re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"),
    re.compile(r"\bA(?:KIA|SIA)[0-9A-Z]{16}\b"),
    re.compile(r"\bhvs\.[A-Za-z0-9_-]{10,}"),
)

_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret value so that ``redact`` masks it wherever it turns up."""
    if value and len(value) >= _MIN_SECRET_LEN:
        with _lock:
            _secrets.add(value)


def redact(text: object) -> str:
    """``text`` as a string with registered secrets and key-shaped substrings masked."""
    out = str(text)
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in out:
            out = out.replace(secret, MASK)
    for pattern in _PATTERNS:
        if pattern.groups:
            out = pattern.sub(lambda m: f"{m.group(1)}{MASK}", out)
        else:
            out = pattern.sub(MASK, out)
    return out


def redact_mapping(values: dict) -> dict:
    """A copy of ``values`` (e.g. asset metadata) with every string redacted, keys named like
    secrets masked outright."""
    out: dict[object, object] = {}
    for key, value in values.items():
        if re.search(r"(?i)(api[-_]?key|secret|token|password|authorization)", str(key)) and value:
            out[key] = MASK
        elif isinstance(value, dict):
            out[key] = redact_mapping(value)
        elif isinstance(value, str):
            out[key] = redact(value)
        else:
            out[key] = value
    return out


class RedactingFilter(logging.Filter):
    """A logging filter that rewrites each record's message with secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            # Render the traceback now, redacted, so handlers do not print the raw one.
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(formatted)
            record.exc_info = None
            record.msg = f"{record.msg}\n{record.exc_text}"
            record.exc_text = None
        return True


# The loggers through which a key could leak: ours and those of the SDKs and HTTP clients.
# A logger's filter only sees records created on that logger (not its children's), so the
# filter goes on each named logger and on every existing child of these prefixes.
GUARDED_PREFIXES = (
    "flowstone",
    "anthropic",
    "openai",
    "google_genai",
    "httpx",
    "httpx2",
    "httpcore",
    "hvac",
    "botocore",
)
GUARDED_LOGGERS = (*GUARDED_PREFIXES, "anthropic._base_client", "openai._base_client")
_FILTER = RedactingFilter()


def get_logger(name: str) -> logging.Logger:
    """A logger whose records are redacted before any handler sees them."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


def install_log_redaction() -> None:
    """Attach the redacting filter to the guarded loggers and their existing children."""
    names = set(GUARDED_LOGGERS)
    names.update(
        name
        for name in list(logging.root.manager.loggerDict)
        if name.split(".")[0] in GUARDED_PREFIXES
    )
    for name in names:
        get_logger(name)
