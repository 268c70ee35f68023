"""A loopback HTTP server speaking the providers' batch protocols, for tests.

Anthropic Message Batches: ``POST /v1/messages/batches`` (create), ``GET .../{id}``
(retrieve), ``GET .../{id}/results`` (the JSONL stream the batch's ``results_url`` names) and
``POST .../{id}/cancel``. OpenAI: ``POST /v1/files`` (a multipart upload, purpose ``batch``),
``GET /v1/files/{id}/content``, ``POST /v1/batches``, ``GET /v1/batches/{id}`` and
``POST /v1/batches/{id}/cancel``. The official SDKs talk to it over real HTTP. It also answers the online ``/v1/messages`` and
``/v1/chat/completions`` (non-streaming), where a request that failed in a batch is retried;
``counts`` tells each route's requests apart.

A batch stays in progress until the test calls :meth:`BatchStubServer.finish`; then each
request is answered (``reply(prompt)``), fails (``fail_when(prompt)``), or the whole batch
expires unprocessed (the next ``expire_next`` batches to finish), the way each provider
reports those outcomes.
"""

from __future__ import annotations

import collections
import email.policy
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from support.llm_stub_server import default_reply


def _words(text: str) -> int:
    return max(1, len(text.split()))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class StubBatch:
    id: str
    api: str  # "anthropic" | "openai"
    items: list[tuple[str, dict]]  # (custom_id, request body)
    created_at: float = field(default_factory=time.time)
    status: str = "in_progress"  # in_progress | ended | expired | cancelled
    results: dict[str, dict] = field(default_factory=dict)  # custom_id -> outcome
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None


@dataclass
class BatchStubState:
    reply: Callable[[str], str] = default_reply
    fail_when: Callable[[str], bool] = lambda prompt: False
    expire_next: int = 0
    batches: dict[str, StubBatch] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    counts: collections.Counter = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _prompt(body: dict) -> str:
    """The last user turn of a request (Anthropic and OpenAI bodies alike)."""
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    content = users[-1]["content"] if users else ""
    return content if isinstance(content, str) else " ".join(b.get("text", "") for b in content)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _BatchHTTPServer

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, data: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: int, body: object) -> None:
        self._send(status, json.dumps(body).encode())

    def _not_found(self) -> None:
        self._json(
            404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}}
        )

    def _count(self, route: str) -> None:
        with self.server.state.lock:
            self.server.state.counts[route] += 1

    def _batch(self, batch_id: str) -> StubBatch | None:
        return self.server.state.batches.get(batch_id)

    # -- routes ---------------------------------------------------------------------------
    def do_GET(self) -> None:
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[:3] == ["v1", "messages", "batches"] and len(parts) == 4:
            self._count("anthropic.retrieve")
            batch = self._batch(parts[3])
            return self._json(200, self._anthropic(batch)) if batch else self._not_found()
        if parts[:3] == ["v1", "messages", "batches"] and parts[4:] == ["results"]:
            self._count("anthropic.results")
            batch = self._batch(parts[3])
            if batch is None or batch.status == "in_progress":
                return self._not_found()
            lines = [
                json.dumps({"custom_id": cid, "result": batch.results[cid]})
                for cid, _ in batch.items
            ]
            return self._send(200, ("\n".join(lines) + "\n").encode(), "application/binary")
        if parts[:2] == ["v1", "batches"] and len(parts) == 3:
            self._count("openai.retrieve")
            batch = self._batch(parts[2])
            return self._json(200, self._openai(batch)) if batch else self._not_found()
        if parts[:2] == ["v1", "files"] and parts[3:] == ["content"]:
            self._count("openai.file_content")
            data = self.server.state.files.get(parts[2])
            if data is None:
                return self._not_found()
            return self._send(200, data, "application/octet-stream")
        self._not_found()

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        parts = self.path.split("?")[0].strip("/").split("/")
        state = self.server.state
        if parts in (["v1", "messages"], ["v1", "chat", "completions"]):
            # the online path, where a request that failed in a batch is retried
            api = "anthropic" if parts[1] == "messages" else "openai"
            self._count(f"{api}.online")
            outcome = self.server.owner._outcome(api, json.loads(raw), online=True)
            return self._json(200, outcome["message"])
        if parts == ["v1", "messages", "batches"]:
            self._count("anthropic.create")
            body = json.loads(raw)
            batch = StubBatch(
                f"msgbatch_{uuid.uuid4().hex[:16]}",
                "anthropic",
                [(r["custom_id"], r["params"]) for r in body["requests"]],
            )
            with state.lock:
                state.batches[batch.id] = batch
            return self._json(200, self._anthropic(batch))
        if parts[:3] == ["v1", "messages", "batches"] and parts[4:] == ["cancel"]:
            self._count("anthropic.cancel")
            batch = self._batch(parts[3])
            if batch is None:
                return self._not_found()
            self.server.owner.cancel(batch)
            return self._json(200, self._anthropic(batch))
        if parts == ["v1", "files"]:
            self._count("openai.file_upload")
            fields = self._multipart(raw)
            file_id = f"file-{uuid.uuid4().hex[:16]}"
            with state.lock:
                state.files[file_id] = fields["file"]
            return self._json(200, self._file(file_id, fields["file"], fields["purpose"].decode()))
        if parts == ["v1", "batches"]:
            self._count("openai.create")
            body = json.loads(raw)
            data = state.files.get(body["input_file_id"])
            if data is None:
                return self._not_found()
            lines = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
            batch = StubBatch(
                f"batch_{uuid.uuid4().hex[:16]}",
                "openai",
                [(line["custom_id"], line["body"]) for line in lines],
                input_file_id=body["input_file_id"],
            )
            with state.lock:
                state.batches[batch.id] = batch
            return self._json(200, self._openai(batch))
        if parts[:2] == ["v1", "batches"] and parts[3:] == ["cancel"]:
            self._count("openai.cancel")
            batch = self._batch(parts[2])
            if batch is None:
                return self._not_found()
            self.server.owner.cancel(batch)
            return self._json(200, self._openai(batch))
        self._not_found()

    def _multipart(self, raw: bytes) -> dict[str, bytes]:
        header = f"content-type: {self.headers['content-type']}\r\n\r\n".encode()
        message = BytesParser(policy=email.policy.default).parsebytes(header + raw)
        fields = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[str(name)] = part.get_payload(decode=True)
        return fields

    # -- objects in each wire format ------------------------------------------------------
    def _anthropic(self, batch: StubBatch) -> dict:
        counts = collections.Counter(r["type"] for r in batch.results.values())
        ended = batch.status != "in_progress"
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": {
                "processing": 0 if ended else len(batch.items),
                "succeeded": counts["succeeded"],
                "errored": counts["errored"],
                "canceled": counts["canceled"],
                "expired": counts["expired"],
            },
            "created_at": _iso(batch.created_at),
            "expires_at": _iso(batch.created_at + 86400),
            "ended_at": _iso(time.time()) if ended else None,
            "archived_at": None,
            "cancel_initiated_at": _iso(time.time()) if batch.status == "cancelled" else None,
            "results_url": f"{self.server.owner.url}/v1/messages/batches/{batch.id}/results"
            if ended
            else None,
        }

    def _openai(self, batch: StubBatch) -> dict:
        done = [r for r in batch.results.values() if r["type"] in ("succeeded", "errored")]
        failed = [r for r in done if r["type"] == "errored"]
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": {"ended": "completed"}.get(batch.status, batch.status),
            "created_at": int(batch.created_at),
            "expires_at": int(batch.created_at + 86400),
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "request_counts": {
                "total": len(batch.items),
                "completed": len(done) - len(failed),
                "failed": len(failed),
            },
        }

    @staticmethod
    def _file(file_id: str, data: bytes, purpose: str) -> dict:
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": "requests.jsonl",
            "purpose": purpose,
            "status": "processed",
        }


class _BatchHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, owner: BatchStubServer):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.owner = owner
        self.state = owner.state


class BatchStubServer:
    """``with BatchStubServer() as stub:``; ``stub.url`` for Anthropic, ``stub.openai_url``
    for OpenAI. ``stub.finish()`` ends every batch in progress."""

    def __init__(self) -> None:
        self.state = BatchStubState()
        self._server: _BatchHTTPServer | None = None

    def __enter__(self) -> BatchStubServer:
        self._server = _BatchHTTPServer(self)
        threading.Thread(target=self._server.serve_forever, name="stub-batch", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None, "the stub is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def openai_url(self) -> str:
        return f"{self.url}/v1"

    def reset(self) -> None:
        with self.state.lock:
            self.state.batches.clear()
            self.state.files.clear()
            self.state.counts.clear()
            self.state.expire_next = 0
            self.state.reply = default_reply
            self.state.fail_when = lambda prompt: False

    @property
    def batches(self) -> list[StubBatch]:
        with self.state.lock:
            return list(self.state.batches.values())

    def finish(self) -> list[StubBatch]:
        """End every batch in progress: answered, failed or expired as configured."""
        ended = []
        with self.state.lock:
            for batch in self.state.batches.values():
                if batch.status != "in_progress":
                    continue
                expire = self.state.expire_next > 0
                if expire:
                    self.state.expire_next -= 1
                for custom_id, body in batch.items:
                    batch.results[custom_id] = (
                        {"type": "expired"} if expire else self._outcome(batch.api, body)
                    )
                batch.status = "expired" if expire else "ended"
                if batch.api == "openai":
                    self._write_openai_files(batch)
                ended.append(batch)
        return ended

    def cancel(self, batch: StubBatch) -> None:
        with self.state.lock:
            if batch.status != "in_progress":
                return
            for custom_id, _ in batch.items:
                batch.results[custom_id] = {"type": "canceled"}
            batch.status = "cancelled"
            if batch.api == "openai":
                self._write_openai_files(batch)

    def _outcome(self, api: str, body: dict, online: bool = False) -> dict:
        prompt = _prompt(body)
        if not online and self.state.fail_when(prompt):
            return {
                "type": "errored",
                "error": {
                    "type": "error",
                    "error": {"type": "invalid_request_error", "message": "stub refused this one"},
                },
            }
        text = self.state.reply(prompt)
        n_in, n_out = _words(prompt), _words(text)
        if api == "anthropic":
            message = {
                "id": f"msg_{uuid.uuid4().hex[:12]}",
                "type": "message",
                "role": "assistant",
                "model": body.get("model", "stub"),
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": n_in, "output_tokens": n_out},
            }
            return {"type": "succeeded", "message": message}
        completion = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "stub"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": n_in,
                "completion_tokens": n_out,
                "total_tokens": n_in + n_out,
            },
        }
        return {"type": "succeeded", "message": completion}

    def _write_openai_files(self, batch: StubBatch) -> None:
        """OpenAI's output file holds the answers, its error file the failures; requests that
        expired or were cancelled unprocessed are in neither."""
        output, errors = [], []
        for custom_id, _ in batch.items:
            result = batch.results[custom_id]
            request_id = f"req_{uuid.uuid4().hex[:8]}"
            if result["type"] == "succeeded":
                output.append(
                    {
                        "id": f"batch_req_{uuid.uuid4().hex[:8]}",
                        "custom_id": custom_id,
                        "response": {
                            "status_code": 200,
                            "request_id": request_id,
                            "body": result["message"],
                        },
                        "error": None,
                    }
                )
            elif result["type"] == "errored":
                errors.append(
                    {
                        "id": f"batch_req_{uuid.uuid4().hex[:8]}",
                        "custom_id": custom_id,
                        "response": {
                            "status_code": 400,
                            "request_id": request_id,
                            "body": {"error": {"message": "stub refused this one"}},
                        },
                        "error": None,
                    }
                )
        for lines, attr in ((output, "output_file_id"), (errors, "error_file_id")):
            if lines:
                file_id = f"file-{uuid.uuid4().hex[:16]}"
                self.state.files[file_id] = (
                    "\n".join(json.dumps(line) for line in lines) + "\n"
                ).encode()
                setattr(batch, attr, file_id)
