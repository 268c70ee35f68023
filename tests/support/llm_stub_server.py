"""A local HTTP server that speaks the providers' wire formats, for tests and benchmarks.

It lives in tests/support, outside the packages the wheel ships: only the tests and
bench/bench_llm.py start it (the scale-out tests start it in the test process; Celery workers
reach it over HTTP and never import it).

It answers Anthropic Messages (``POST /v1/messages``), OpenAI Chat Completions
(``POST /v1/chat/completions``) and Gemini ``generateContent`` / ``streamGenerateContent``,
each with SSE streaming, so the official SDKs talk to it over real HTTP. Faults are queued
and consumed one per request: ``429`` (with Retry-After), ``500``, ``529``, ``401``, ``400``,
``slow`` (a long delay), ``drop`` (close the connection without a reply) and ``malformed``
(a 200 whose JSON does not parse). An optional server-side requests-per-minute limit answers
429 like a real provider would.
"""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Fault:
    kind: str  # "429" | "500" | "529" | "401" | "400" | "slow" | "drop" | "malformed"
    retry_after_s: float | None = None
    delay_s: float = 0.0


def default_reply(prompt: str) -> str:
    words = prompt.split()
    return "stub answer: " + " ".join(words[-8:])


@dataclass
class StubState:
    latency_s: float = 0.0
    requests_per_minute: float | None = None
    rate_burst: float = 2.0
    reply: Callable[[str], str] = default_reply
    expected_key: str | None = None
    faults: collections.deque = field(default_factory=collections.deque)
    scripted: collections.deque = field(default_factory=collections.deque)
    counts: collections.Counter = field(default_factory=collections.Counter)
    requests: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _level: float = -1.0
    _stamp: float = 0.0

    def take_rate_token(self) -> float | None:
        """None when allowed; otherwise the seconds until a request would be allowed."""
        if not self.requests_per_minute:
            return None
        rate = self.requests_per_minute / 60.0
        now = time.monotonic()
        if self._level < 0:
            self._level, self._stamp = self.rate_burst, now
        self._level = min(self.rate_burst, self._level + (now - self._stamp) * rate)
        self._stamp = now
        if self._level >= 1.0:
            self._level -= 1.0
            return None
        return (1.0 - self._level) / rate


def _words(text: str) -> int:
    return max(1, len(text.split()))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _StubHTTPServer

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    # -- helpers --------------------------------------------------------------------------
    def _send_json(self, status: int, body: object, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_sse(self, events: list[tuple[str | None, object]]) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        for event, data in events:
            payload = data if isinstance(data, str) else json.dumps(data)
            chunk = (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"
            self.wfile.write(chunk.encode())
            self.wfile.flush()
        self.close_connection = True

    def _error(self, api: str, status: int, message: str, headers: dict | None = None) -> None:
        kinds = {
            400: "invalid_request_error",
            401: "authentication_error",
            429: "rate_limit_error",
            500: "api_error",
            529: "overloaded_error",
        }
        if api == "anthropic":
            body = {
                "type": "error",
                "error": {"type": kinds.get(status, "api_error"), "message": message},
            }
        elif api == "gemini":
            body = {
                "error": {
                    "code": status,
                    "message": message,
                    "status": "RESOURCE_EXHAUSTED" if status == 429 else "INTERNAL",
                }
            }
        else:
            body = {
                "error": {"message": message, "type": kinds.get(status, "api_error"), "code": None}
            }
        self._send_json(status, body, headers)

    def _presented_key(self) -> str | None:
        auth = self.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:]
        return self.headers.get("x-api-key") or self.headers.get("x-goog-api-key")

    # -- dispatch -------------------------------------------------------------------------
    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path.rstrip("/") == "/v1/models":
            model = {
                "id": "stub-model",
                "object": "model",
                "type": "model",
                "created": 0,
                "owned_by": "stub",
                "display_name": "Stub",
                "created_at": "2025-01-01T00:00:00Z",
            }
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [model],
                    "has_more": False,
                    "first_id": "stub-model",
                    "last_id": "stub-model",
                },
            )
        elif "/models/" in path:
            name = "models/" + path.split("/models/", 1)[1]
            self._send_json(200, {"name": name, "id": name, "displayName": "Stub", "type": "model"})
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        state = self.server.state
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        path = self.path.split("?")[0]
        if path == "/v1/messages":
            api = "anthropic"
        elif path == "/v1/chat/completions":
            api = "openai"
        elif "/models/" in path and (
            ":generateContent" in path or ":streamGenerateContent" in path
        ):
            api = "gemini"
        else:
            self._send_json(404, {"error": {"message": f"no route {path}"}})
            return
        with state.lock:
            state.counts["requests"] += 1
            state.requests.append(
                {"api": api, "path": path, "headers": dict(self.headers), "body": body}
            )
            fault = state.faults.popleft() if state.faults else None
            wait = state.take_rate_token()
        if state.expected_key is not None and self._presented_key() != state.expected_key:
            self._count(401)
            self._error(api, 401, "invalid x-api-key")
            return
        if wait is not None:
            self._count(429)
            self._error(api, 429, "rate limited by the stub", {"retry-after": f"{wait:.3f}"})
            return
        if fault is not None and self._inject(api, fault):
            return
        if state.latency_s:
            time.sleep(state.latency_s)
        with state.lock:
            scripted = state.scripted.popleft() if state.scripted else None
        # Counted before the answer leaves: a client that has its answer must find it counted
        # (counting after the write raced the test's assertion on a busy machine).
        self._count(200)
        getattr(self, f"_reply_{api}")(body, scripted)

    def _count(self, status: int | str) -> None:
        with self.server.state.lock:
            self.server.state.counts[status] += 1

    def _inject(self, api: str, fault: Fault) -> bool:
        """Apply a fault; True when the request has been answered (or dropped)."""
        self._count(fault.kind)
        if fault.kind == "slow":
            time.sleep(fault.delay_s)
            return False
        if fault.kind == "drop":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return True
        if fault.kind == "malformed":
            data = b'{"id": "broken", "content": [ {"type": "te'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return True
        status = int(fault.kind)
        headers = (
            {"retry-after": f"{fault.retry_after_s:g}"} if fault.retry_after_s is not None else None
        )
        self._error(api, status, f"injected {status}", headers)
        return True

    # -- replies in each wire format ---------------------------------------------------------
    def _reply_text(self, prompt: str, scripted: str | None) -> str:
        return scripted if scripted is not None else self.server.state.reply(prompt)

    def _reply_anthropic(self, body: dict, scripted: str | None) -> None:
        prompt = "\n".join(
            m["content"]
            if isinstance(m["content"], str)
            else " ".join(b.get("text", "") for b in m["content"])
            for m in body.get("messages", [])
        )
        text = self._reply_text(prompt, scripted)
        model = body.get("model", "stub")
        n_in, n_out = _words(str(body.get("system", "")) + " " + prompt), _words(text)
        msg_id = f"msg_{uuid.uuid4().hex[:12]}"
        if not body.get("stream"):
            self._send_json(
                200,
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": n_in, "output_tokens": n_out},
                },
            )
            return
        pieces = _split(text)
        events: list[tuple[str | None, object]] = [
            (
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": msg_id,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {"input_tokens": n_in, "output_tokens": 1},
                    },
                },
            ),
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            ("ping", {"type": "ping"}),
        ]
        events += [
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": p},
                },
            )
            for p in pieces
        ]
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": n_out},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        self._send_sse(events)

    def _reply_openai(self, body: dict, scripted: str | None) -> None:
        messages = body.get("messages", [])
        prompt = "\n".join(str(m.get("content", "")) for m in messages)
        last_user = next(
            (str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"),
            prompt,
        )
        text = self._reply_text(last_user, scripted)
        model = body.get("model", "stub")
        n_in, n_out = _words(prompt), _words(text)
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "created": int(time.time()),
            "model": model,
        }
        usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
        if not body.get("stream"):
            self._send_json(
                200,
                {
                    **base,
                    "object": "chat.completion",
                    "usage": usage,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                            "logprobs": None,
                        }
                    ],
                },
            )
            return
        chunk = {**base, "object": "chat.completion.chunk"}
        events: list[tuple[str | None, object]] = [
            (
                None,
                {
                    **chunk,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": p},
                            "finish_reason": None,
                        }
                    ],
                },
            )
            for p in _split(text)
        ]
        events.append(
            (None, {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        )
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append((None, {**chunk, "choices": [], "usage": usage}))
        events.append((None, "[DONE]"))
        self._send_sse(events)

    def _reply_gemini(self, body: dict, scripted: str | None) -> None:
        contents = body.get("contents", [])
        prompt = "\n".join(p.get("text", "") for c in contents for p in c.get("parts", []))
        last = (
            " ".join(p.get("text", "") for p in contents[-1].get("parts", []))
            if contents
            else prompt
        )
        text = self._reply_text(last, scripted)
        model = self.path.split("/models/")[1].split(":")[0]
        n_in, n_out = _words(prompt), _words(text)

        def reply(piece: str, last: bool) -> dict:
            candidate = {"content": {"role": "model", "parts": [{"text": piece}]}, "index": 0}
            if last:
                candidate["finishReason"] = "STOP"
            return {
                "candidates": [candidate],
                "modelVersion": model,
                "usageMetadata": {
                    "promptTokenCount": n_in,
                    "candidatesTokenCount": n_out,
                    "totalTokenCount": n_in + n_out,
                },
            }

        if ":streamGenerateContent" in self.path:
            pieces = _split(text)
            self._send_sse([(None, reply(p, i == len(pieces) - 1)) for i, p in enumerate(pieces)])
        else:
            self._send_json(200, reply(text, True))


def _split(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)] or [""]


class _StubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, state: StubState):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


class StubLLMServer:
    """Start with ``with StubLLMServer() as stub:``; ``stub.url`` is the base URL for the SDKs
    (Anthropic and OpenAI take ``stub.url`` and ``stub.url + "/v1"`` respectively)."""

    def __init__(self, **state_options):
        self.state = StubState(**state_options)
        self._server: _StubHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> StubLLMServer:
        self._server = _StubHTTPServer(self.state)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="stub-llm", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> StubLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "the stub is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def openai_url(self) -> str:
        return f"{self.url}/v1"

    def inject(self, *faults: str | Fault) -> None:
        """Queue faults, e.g. ``inject("429:0.2", "500", "drop")``; "slow:2" sleeps 2 s."""
        with self.state.lock:
            for fault in faults:
                if isinstance(fault, str):
                    kind, _, arg = fault.partition(":")
                    if kind == "slow":
                        fault = Fault("slow", delay_s=float(arg or 1.0))
                    else:
                        fault = Fault(kind, retry_after_s=float(arg) if arg else None)
                self.state.faults.append(fault)

    def script(self, *replies: str) -> None:
        """Queue exact reply texts for the next requests (then the default reply resumes)."""
        with self.state.lock:
            self.state.scripted.extend(replies)

    def reset(self) -> None:
        with self.state.lock:
            self.state.faults.clear()
            self.state.scripted.clear()
            self.state.counts.clear()
            self.state.requests.clear()
            self.state._level = -1.0

    @property
    def calls(self) -> int:
        with self.state.lock:
            return self.state.counts["requests"]
