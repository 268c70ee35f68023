"""OpenTelemetry spans: off by default, captured with the SDK's InMemorySpanExporter when
configured, and exported over OTLP/HTTP when only the standard environment asks for it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flowstone.llm.errors import ProviderCallError
from flowstone.telemetry import tracing
from flowstone.workers.errors import WorkerTimeoutError
from flowstone.workers.pool import WorkerPool

OTEL_VARS = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SDK_DISABLED",
)


@pytest.fixture
def echo_pool(tmp_path):
    pool = WorkerPool(
        bridge="echo", size=1, registry_dir=tmp_path / "workers", health_interval_s=None
    ).start()
    yield pool
    pool.close()


def by_name(exporter, name: str) -> list:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def test_spans_are_off_without_configuration(monkeypatch, echo_pool):
    for var in OTEL_VARS:
        monkeypatch.delenv(var, raising=False)
    tracing.reset()
    assert not tracing.enabled()
    span = tracing.start_span("x", {"a": 1})
    assert not span.is_recording() and span is tracing.span("y")  # the shared no-op span
    assert echo_pool.execute("echo:echo", {"value": 3}) == 3
    assert not tracing.enabled()  # a pool call did not turn anything on
    # Unconfigured, every span is that one shared object: nothing is allocated or recorded.
    # (What it costs per call is a performance claim: bench/bench_telemetry.py measures it.)
    noop = tracing.span("z")
    for _ in range(1_000):
        made = tracing.start_span("flowstone.pool.call", {"bridge": "echo"})
        assert made is noop and not made.is_recording()
        tracing.finish(made, "ok")
    assert not tracing.enabled()


def test_pool_call_spans(spans, echo_pool):
    (pid,) = echo_pool.worker_pids()
    assert echo_pool.execute("echo:echo", {"value": 1}) == 1
    assert list(echo_pool.execute_stream("echo:count", {"n": 3})) == [0, 1, 2]
    with pytest.raises(WorkerTimeoutError):
        echo_pool.execute("echo:sleep", {"seconds": 10}, timeout=0.3)
    calls = by_name(spans, "flowstone.pool.call")
    assert len(calls) == 3
    ok, stream, timed_out = calls
    assert ok.attributes["flowstone.pool.bridge"] == "echo"
    assert ok.attributes["flowstone.pool.command"] == "echo"
    assert ok.attributes["flowstone.outcome"] == "ok"
    assert ok.attributes["flowstone.pool.worker_pid"] == pid
    assert stream.attributes["flowstone.pool.command"] == "count"
    assert timed_out.attributes["flowstone.outcome"] == "timeout"
    assert timed_out.status.status_code.name == "ERROR"
    assert timed_out.events[0].name == "exception"
    assert timed_out.end_time - timed_out.start_time >= 0.3e9


def test_llm_spans_nest_and_carry_usage(spans, make_client, stub):
    client = make_client("anthropic-traced")
    first = client.complete("trace me")
    client.complete("trace me")  # a cache hit: no provider call
    completes = by_name(spans, "flowstone.llm.complete")
    calls = by_name(spans, "flowstone.llm.provider_call")
    assert len(completes) == 2 and len(calls) == 1
    call = calls[0]
    assert call.parent.span_id == completes[0].context.span_id
    assert call.attributes["flowstone.llm.provider"] == "anthropic-traced"
    assert call.attributes["gen_ai.provider.name"] == "anthropic"
    assert call.attributes["gen_ai.request.model"] == "claude-haiku-4-5"
    assert call.attributes["gen_ai.usage.input_tokens"] == first.input_tokens
    assert call.attributes["gen_ai.usage.output_tokens"] == first.output_tokens
    assert call.attributes["flowstone.llm.cache_hit"] is False
    assert call.attributes["flowstone.outcome"] == "ok"
    assert completes[1].attributes["flowstone.llm.cache_hit"] is True
    assert completes[1].attributes["flowstone.outcome"] == "cache_hit"
    stub.inject("401")
    with pytest.raises(ProviderCallError):
        client.complete("a bad key", use_cache=False)
    failed = by_name(spans, "flowstone.llm.provider_call")[-1]
    assert failed.attributes["flowstone.outcome"] == "failed"
    assert failed.status.status_code.name == "ERROR"
    assert [e.name for e in failed.events] == ["exception"]
    assert by_name(spans, "flowstone.llm.complete")[-1].status.status_code.name == "ERROR"
    list(client.stream("stream and trace"))
    streamed = by_name(spans, "flowstone.llm.stream")
    assert len(streamed) == 1 and streamed[0].attributes["flowstone.outcome"] == "ok"
    assert streamed[0].attributes["gen_ai.usage.output_tokens"] > 0


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace receiver: stores the decoded ExportTraceServiceRequest bodies."""

    received: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        type(self).received.append((self.path, request))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()


CHILD = textwrap.dedent(
    """
    import sys
    from flowstone.workers.pool import WorkerPool

    with WorkerPool(bridge="echo", size=1, registry_dir=sys.argv[1], health_interval_s=None) as pool:
        assert pool.execute("echo:echo", {"value": 7}) == 7
    """
)


def test_otlp_export_configured_by_environment_only(tmp_path):
    _Collector.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if k not in OTEL_VARS}
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        subprocess.run(
            [sys.executable, "-c", CHILD, str(tmp_path / "w1")],
            env={**env, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": "fs-test"},
            check=True,
            timeout=60,
        )
        subprocess.run(  # "none" keeps spans off even with an endpoint set
            [sys.executable, "-c", CHILD, str(tmp_path / "w2")],
            env={**env, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_TRACES_EXPORTER": "none"},
            check=True,
            timeout=60,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert len(_Collector.received) == 1, "spans are exported once, by the first child only"
    path, request = _Collector.received[0]
    assert path == "/v1/traces"
    resource = request.resource_spans[0].resource
    service = {a.key: a.value.string_value for a in resource.attributes}["service.name"]
    assert service == "fs-test"
    exported = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert [s.name for s in exported] == ["flowstone.pool.call"]
    attributes = {a.key: a.value for a in exported[0].attributes}
    assert attributes["flowstone.pool.command"].string_value == "echo"
    assert attributes["flowstone.outcome"].string_value == "ok"
    assert attributes["flowstone.pool.worker_pid"].int_value > 0
