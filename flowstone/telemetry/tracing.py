"""OpenTelemetry spans around provider calls and worker pool calls, off unless configured.

Why opt-in: most runs have no trace collector, and a pool call costs tens of microseconds, so
an unconfigured process must pay nothing measurable. Until an exporter is configured every
``span()``/``start_span()`` returns OpenTelemetry's non-recording span (``INVALID_SPAN``, what
the no-op tracer hands out) after one global check; the SDK is never imported.

Spans turn on when, at the first span of the process:

- ``configure(exporter)`` was called (tests pass the SDK's ``InMemorySpanExporter``), or
  ``configure(tracer_provider=...)`` to reuse a provider the application already set up; or
- the standard variables ask for it: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``; ``none``
  keeps them off) or ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
  (OTLP over HTTP/protobuf unless ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc``). ``OTEL_SDK_DISABLED=true``
  wins over both. ``OTEL_SERVICE_NAME`` names the service (default ``flowstone``).

Attributes follow the GenAI semantic conventions where one exists (``gen_ai.request.model``,
``gen_ai.usage.input_tokens``...) and ``flowstone.*`` otherwise; every span carries
``flowstone.outcome`` and failed ones have an ERROR status with the exception recorded.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("flowstone.telemetry")

OUTCOME = "flowstone.outcome"

_lock = threading.Lock()
_decided = False
_tracer: Any = None  # an OpenTelemetry Tracer while spans are on
_own_provider: Any = None  # the TracerProvider we built (shut down by reset/configure)
_noop: Any = None


def _noop_span() -> Any:
    global _noop
    if _noop is None:
        from opentelemetry.trace import INVALID_SPAN

        _noop = INVALID_SPAN
    return _noop


def _active() -> Any:
    """The tracer when spans are on, else None (decides from the environment once)."""
    if _decided:
        return _tracer
    with _lock:
        if not _decided:
            _set(*_from_environment())
    return _tracer


def enabled() -> bool:
    """Whether this process records spans."""
    return _active() is not None


def start_span(name: str, attributes: Mapping[str, Any] | None = None) -> Any:
    """A started span that is *not* made current (for generators, whose frames outlive the
    caller's context); end it with :func:`finish`."""
    tracer = _tracer if _decided else _active()
    if tracer is None:
        return _noop_span()
    return tracer.start_span(name, attributes=attributes)


def span(name: str, attributes: Mapping[str, Any] | None = None) -> Any:
    """A context manager opening a current span (children nest under it); it records an
    exception that escapes and sets the ERROR status."""
    tracer = _tracer if _decided else _active()
    if tracer is None:
        return _noop_span()
    return tracer.start_as_current_span(name, attributes=attributes)


def finish(span_: Any, outcome: str, error: BaseException | None = None) -> None:
    """Set the outcome (and the error) on a span from :func:`start_span` and end it."""
    if not span_.is_recording():
        return
    mark(span_, outcome, error)
    span_.end()


def mark(span_: Any, outcome: str, error: BaseException | None = None) -> None:
    """Set ``flowstone.outcome`` and, for a failure, the ERROR status and the exception."""
    if not span_.is_recording():
        return
    span_.set_attribute(OUTCOME, outcome)
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        span_.record_exception(error)
        span_.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:500]))


def configure(
    exporter: Any = None,
    *,
    tracer_provider: Any = None,
    service_name: str | None = None,
    batch: bool = True,
) -> None:
    """Turn spans on for this process, replacing any earlier configuration.

    ``exporter``: an SDK ``SpanExporter``; FlowStone builds a ``TracerProvider`` around it with a
    batch processor (``batch=False``: export each span as it ends, for tests). Or
    ``tracer_provider``: use that provider (the application's global one, for instance). With
    neither, read the ``OTEL_*`` environment as at start-up.
    """
    with _lock:
        _shutdown_own()
        if tracer_provider is not None:
            _set(tracer_provider.get_tracer("flowstone"), None)
        elif exporter is not None:
            provider = _build_provider([exporter], service_name, batch)
            _set(provider.get_tracer("flowstone"), provider)
        else:
            _set(*_from_environment(service_name))


def reset() -> None:
    """Forget the configuration (the next span decides again); flushes our own provider."""
    global _decided, _tracer
    with _lock:
        _shutdown_own()
        _decided, _tracer = False, None


def force_flush(timeout_ms: int = 5000) -> bool:
    """Export spans still buffered by our batch processor (before a process exits)."""
    provider = _own_provider
    return True if provider is None else bool(provider.force_flush(timeout_ms))


def _set(tracer: Any, provider: Any) -> None:
    global _decided, _tracer, _own_provider
    _tracer, _own_provider, _decided = tracer, provider, True


def _shutdown_own() -> None:
    global _own_provider
    if _own_provider is not None:
        try:
            _own_provider.shutdown()
        except Exception:
            log.warning("shutting down the previous tracer provider failed", exc_info=True)
        _own_provider = None


def _build_provider(exporters: list[Any], service_name: str | None, batch: bool) -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    attributes = {}
    if service_name or not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = service_name or "flowstone"
    provider = TracerProvider(resource=Resource.create(attributes))
    for exporter in exporters:
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        provider.add_span_processor(processor)
    return provider


def _from_environment(service_name: str | None = None) -> tuple[Any, Any]:
    """(tracer, provider) from the OTEL_* variables, or (None, None) when they ask for none.

    A misconfiguration (an exporter package missing, an unknown exporter name) is logged as a
    warning and leaves spans off: tracing must never stop a run.
    """
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None, None
    names = env.get("OTEL_TRACES_EXPORTER")
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if names is None:
        if not endpoint:
            return None, None
        names = "otlp"
    exporters = []
    for name in (n.strip().lower() for n in names.split(",")):
        if not name or name == "none":
            continue
        try:
            exporter = _exporter(name)
        except Exception:
            log.warning("cannot build the '%s' trace exporter; spans stay off", name, exc_info=True)
            continue
        if exporter is not None:
            exporters.append(exporter)
    if not exporters:
        return None, None
    provider = _build_provider(exporters, service_name, batch=True)
    return provider.get_tracer("flowstone"), provider


def _exporter(name: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        log.warning(
            "OTEL_TRACES_EXPORTER names '%s', which FlowStone does not know (otlp, console)", name
        )
        return None
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "grpc":
        module, package = (
            "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
            "opentelemetry-exporter-otlp-proto-grpc",
        )
    else:
        module, package = (
            "opentelemetry.exporter.otlp.proto.http.trace_exporter",
            "opentelemetry-exporter-otlp-proto-http",
        )
    try:
        import importlib

        exporter_class = importlib.import_module(module).OTLPSpanExporter
    except ImportError:
        log.warning(
            "OTLP trace export over %s was asked for, but %s is not installed "
            "(pip install %s); FlowStone spans stay off",
            protocol,
            package,
            package,
        )
        return None
    return exporter_class()  # reads the endpoint, headers and timeout from OTEL_EXPORTER_OTLP_*
