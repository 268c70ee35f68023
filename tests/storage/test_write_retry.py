"""A write the store refuses in passing is written again where it failed (save_encoded), a
bounded number of times; a write that would fail again is not."""

import json

import pytest

from flowstone.faults import ENV, InjectedFault, fired
from flowstone.storage.errors import UnsafeKeyError
from flowstone.storage.local_store import LocalObjectStore
from flowstone.storage.objects import WRITE_ATTEMPTS, load_object, save_object


def _refusals(tmp_path, key, count):
    plan = tmp_path / "faults.json"
    plan.write_text(json.dumps([
        {"id": f"refuse-{i}", "point": "store:put", "action": "raise",
         "match": {"key_contains": key}}
        for i in range(count)
    ]))  # fmt: skip
    return plan


def test_a_write_refused_in_passing_is_written_again(tmp_path, monkeypatch):
    store = LocalObjectStore(tmp_path / "store")
    plan = _refusals(tmp_path, "a/b", WRITE_ATTEMPTS - 1)
    monkeypatch.setenv(ENV, str(plan))
    stored = save_object(store, "a/b", {"x": 1})
    assert len(fired(plan)) == WRITE_ATTEMPTS - 1  # every refusal happened, then it was written
    assert stored.stored_bytes > 0 and load_object(store, "a/b") == {"x": 1}


def test_a_store_that_keeps_refusing_fails_the_write_with_its_error(tmp_path, monkeypatch):
    store = LocalObjectStore(tmp_path / "store")
    plan = _refusals(tmp_path, "a/b", WRITE_ATTEMPTS + 1)
    monkeypatch.setenv(ENV, str(plan))
    with pytest.raises(InjectedFault, match="store:put"):
        save_object(store, "a/b", {"x": 1})
    assert len(fired(plan)) == WRITE_ATTEMPTS  # bounded
    assert not (tmp_path / "store" / "a" / "b").exists()  # nothing half-written


def test_a_write_that_would_fail_again_is_not_retried(tmp_path, monkeypatch):
    store = LocalObjectStore(tmp_path / "store")
    calls = []
    original = store.put_encoded

    def counting(key, encoded):
        calls.append(key)
        return original(key, encoded)

    monkeypatch.setattr(store, "put_encoded", counting)
    with pytest.raises(UnsafeKeyError):
        save_object(store, "../outside", {"x": 1})
    assert calls == ["../outside"]
