"""Response cache, cost accounting and secret redaction."""

from __future__ import annotations

import logging
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from flowstone.llm import client as client_module
from flowstone.llm.cache import SQLiteResponseCache
from flowstone.llm.errors import LLMError, MissingSecretError
from flowstone.llm.pricing import CostTotals
from flowstone.llm.redaction import MASK, redact, redact_mapping
from flowstone.llm.retry import RetryPolicy
from flowstone.llm.secrets import resolve_secret


@pytest.mark.slow
def test_rerun_is_served_from_the_durable_cache(stub, make_client, provider, tmp_path):
    first = make_client(provider("anthropic"))
    prompts = [f"question {i}" for i in range(5)]
    originals = first.complete_many(prompts)
    assert stub.calls == 5
    stub.reset()
    second = make_client(provider("anthropic"))  # a new client: a new step process, same file
    rerun = second.complete_many(prompts)
    assert stub.calls == 0
    assert [c.text for c in rerun] == [c.text for c in originals]
    assert all(c.cache_hit and c.cost_usd == 0.0 for c in rerun)
    assert second.totals.cache_hits == 5 and second.totals.calls == 0
    assert len(SQLiteResponseCache(tmp_path / "llm_cache.sqlite")) == 5


def test_threads_starting_together_share_one_cache(
    stub, make_client, provider, tmp_path, monkeypatch
):
    """Threads of a fresh client that reach its lazily opened cache at once: one store is
    opened, no call fails, and every answer is stored and served again."""
    opened = []
    real_open = client_module.open_cache

    def counting_open(location):
        opened.append(location)
        return real_open(location)

    monkeypatch.setattr(client_module, "open_cache", counting_open)
    client = make_client(provider("openai"))
    threads = 16
    barrier = threading.Barrier(threads)

    def ask(i):
        barrier.wait()
        return client.complete(f"together {i}")

    with ThreadPoolExecutor(threads) as pool:
        first = list(pool.map(ask, range(threads)))
    assert len(opened) == 1
    assert stub.calls == threads and not any(c.cache_hit for c in first)
    assert len(SQLiteResponseCache(tmp_path / "llm_cache.sqlite")) == threads
    again = [client.complete(f"together {i}") for i in range(threads)]
    assert stub.calls == threads and all(c.cache_hit for c in again)
    assert [c.text for c in again] == [c.text for c in first]


def test_a_new_cache_file_waits_for_another_connection_writing_it(tmp_path):
    """SQLite refuses the switch to WAL at once, busy timeout or not, while another
    connection writes a file that is not in WAL mode yet; opening the cache waits instead."""
    path = tmp_path / "llm_cache.sqlite"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.5, lambda: other.execute("ROLLBACK"))
    release.start()
    try:
        cache = SQLiteResponseCache(path)
    finally:
        release.join()
        other.close()
    assert cache._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert len(cache) == 0
    cache.close()


def test_cache_key_covers_params_and_opt_out_bypasses_it(stub, make_client, provider):
    client = make_client(provider("openai"))
    client.complete("same", params={"max_tokens": 10})
    client.complete("same", params={"max_tokens": 10})
    assert stub.calls == 1
    client.complete("same", params={"max_tokens": 11})
    assert stub.calls == 2
    client.complete("same", params={"max_tokens": 10}, use_cache=False)
    assert stub.calls == 3


def test_cost_totals_sum_tokens_and_prices(stub, make_client, provider):
    client = make_client(provider("anthropic"), provider("openai"), cache=False)
    totals = CostTotals()
    a = client.complete("one two three", provider="anthropic", totals=totals)
    b = client.complete("four five", provider="openai", totals=totals)
    # claude-haiku-4-5: $1 / $5 per Mtok; gpt-4o-mini: $0.15 / $0.60 per Mtok.
    assert a.cost_usd == pytest.approx((a.input_tokens * 1.0 + a.output_tokens * 5.0) / 1e6)
    assert b.cost_usd == pytest.approx((b.input_tokens * 0.15 + b.output_tokens * 0.6) / 1e6)
    meta = totals.as_metadata()
    assert meta["llm_calls"] == 2
    assert meta["llm_input_tokens"] == a.input_tokens + b.input_tokens
    assert meta["llm_cost_usd"] == pytest.approx(a.cost_usd + b.cost_usd, abs=1e-6)
    assert set(meta["llm_cost_by_provider"]) == {"anthropic", "openai"}


def test_unknown_model_is_counted_unpriced_not_free(stub, make_client, provider):
    client = make_client(provider("openai", model="my-finetune"), cache=False)
    client.complete("hello")
    assert client.totals.unpriced_calls == 1 and client.totals.cost_usd == 0.0


def test_keys_never_reach_logs_errors_or_metadata(stub, make_client, provider, keys, caplog):
    stub.state.expected_key = "a-different-key"  # every request is refused with 401
    client = make_client(provider("anthropic"), provider("openai"), provider("gemini"), cache=False)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(LLMError) as info:
        client.complete("leak nothing")
    text = str(info.value) + repr(info.value) + caplog.text
    for key in keys.values():
        assert key not in text
    assert "401" in str(info.value)
    # Keys did reach the server (so the test could have leaked them).
    seen = [{k.lower(): v for k, v in r["headers"].items()} for r in stub.state.requests]
    assert any(
        keys["anthropic"] in (h.get("x-api-key", ""), h.get("authorization", "")[7:]) for h in seen
    )
    assert any(h.get("authorization") == f"Bearer {keys['openai']}" for h in seen)


def test_redact_masks_registered_secrets_headers_and_key_shapes():
    resolve_secret("env:PATH", purpose="test")  # registers the value
    import os

    assert os.environ["PATH"] not in redact(f"path={os.environ['PATH']}")
    assert redact("Authorization: Bearer abcdefghijklmnop") == f"Authorization: {MASK}"
    assert "sk-live-0123456789abc" not in redact("key sk-live-0123456789abc failed")
    assert redact_mapping({"api_key": "x", "note": "x-api-key: sk-ant-00000000000"}) == {
        "api_key": MASK,
        "note": f"x-api-key: {MASK}",
    }


def test_missing_secret_names_the_variable_and_the_owner(monkeypatch):
    monkeypatch.delenv("FLOWSTONE_TEST_ABSENT_KEY", raising=False)
    with pytest.raises(
        MissingSecretError, match="FLOWSTONE_TEST_ABSENT_KEY not set for system qa-x"
    ):
        resolve_secret("env:FLOWSTONE_TEST_ABSENT_KEY", purpose="system qa-x")


def test_aws_secrets_manager_backend_through_moto_server(monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_SECRETS_ENDPOINT_URL": url,
        }.items():
            monkeypatch.setenv(name, value)
        boto3.client("secretsmanager", endpoint_url=url).create_secret(
            Name="llm/keys", SecretString='{"openai": "sk-from-aws-1234567890"}'
        )
        assert (
            resolve_secret("aws:llm/keys#openai", purpose="provider 'openai'")
            == "sk-from-aws-1234567890"
        )
        assert "sk-from-aws-1234567890" not in redact("echo sk-from-aws-1234567890")
        with pytest.raises(MissingSecretError, match="aws:llm/missing"):
            resolve_secret("aws:llm/missing", purpose="provider 'openai'")
    finally:
        server.stop()


def test_retry_logs_are_redacted(stub, make_client, provider, keys, caplog):
    client = make_client(provider("openai"), retry=RetryPolicy(2, 0.01, 0.01), cache=False)
    caplog.set_level(logging.DEBUG)
    stub.inject("500")
    client.complete("log me")
    assert "retrying provider 'openai'" in caplog.text
    assert keys["openai"] not in caplog.text


def test_object_store_cache_on_s3_is_shared_by_new_clients(stub, provider, monkeypatch, tmp_path):
    """The cache on moto's S3 server: a second client (another host, say) makes no calls."""
    moto_server = pytest.importorskip("moto.server")
    import boto3

    from flowstone.llm.cache import ObjectStoreResponseCache
    from flowstone.llm.client import LLMClient
    from flowstone.llm.config import ClientConfig

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        }.items():
            monkeypatch.setenv(name, value)
        boto3.client("s3").create_bucket(Bucket="llm")
        config = ClientConfig(cache_path="s3://llm/responses")
        first = LLMClient([provider("openai")], config)
        prompts = [f"shared question {i}" for i in range(3)]
        originals = first.complete_many(prompts)
        assert isinstance(first.cache, ObjectStoreResponseCache) and stub.calls == 3
        stub.reset()
        rerun = LLMClient([provider("openai")], config).complete_many(prompts)
        assert stub.calls == 0 and all(c.cache_hit for c in rerun)
        assert [c.text for c in rerun] == [c.text for c in originals]
        listed = boto3.client("s3").list_objects_v2(Bucket="llm", Prefix="responses/")
        assert listed["KeyCount"] == 3
    finally:
        server.stop()


def test_object_store_cache_in_a_shared_folder(stub, provider, tmp_path):
    from flowstone.llm.client import LLMClient
    from flowstone.llm.config import ClientConfig

    config = ClientConfig(cache_path=f"file://{tmp_path / 'shared-cache'}")
    LLMClient([provider("anthropic")], config).complete_many(["folder question"])
    stub.reset()
    again = LLMClient([provider("anthropic")], config).complete_many(["folder question"])
    assert stub.calls == 0 and again[0].cache_hit
    assert len(list((tmp_path / "shared-cache").rglob("*.json"))) == 1


def test_vault_backend_through_a_kv2_http_server(monkeypatch):
    """hvac reads a KV v2 secret from a loopback server speaking Vault's HTTP API."""
    import json as _json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[tuple[str, str | None]] = []
    secrets = {"/v1/secret/data/llm/keys": {"anthropic": "sk-ant-from-vault-0123456789"}}

    class Vault(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            seen.append((self.path.split("?")[0], self.headers.get("X-Vault-Token")))
            data = secrets.get(self.path.split("?")[0])
            if self.headers.get("X-Vault-Token") != "root-token" or data is None:
                body, status = _json.dumps({"errors": []}).encode(), 404 if data is None else 403
            else:
                payload = {"data": {"data": data, "metadata": {"version": 1, "deletion_time": ""}}}
                body, status = _json.dumps(payload).encode(), 200
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Vault)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setenv("VAULT_TOKEN", "root-token")
        value = resolve_secret(
            "vault:secret/data/llm/keys#anthropic", purpose="provider 'anthropic'"
        )
        assert value == "sk-ant-from-vault-0123456789"
        assert seen[0] == ("/v1/secret/data/llm/keys", "root-token")
        assert "sk-ant-from-vault-0123456789" not in redact("key=sk-ant-from-vault-0123456789")
        with pytest.raises(MissingSecretError, match="vault:secret/data/llm/missing"):
            resolve_secret("vault:secret/data/llm/missing#x", purpose="provider 'anthropic'")
        monkeypatch.setenv("VAULT_TOKEN", "wrong")
        with pytest.raises(MissingSecretError) as denied:
            resolve_secret("vault:secret/data/llm/keys#anthropic", purpose="provider 'anthropic'")
        assert "sk-ant-from-vault" not in str(denied.value)
    finally:
        server.shutdown()
