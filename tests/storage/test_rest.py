"""REST partition client against a loopback HTTP server with injected faults."""

from __future__ import annotations

import pandas as pd
import pytest

from flowstone.storage.errors import NoDataForPartitionError, StorageError, UnsafeKeyError
from flowstone.storage.rest import RestPartitionClient, RestSettings


def client_for(base, **kw):
    settings = RestSettings(
        url_template=base + "/data/{asset}/{partition_key}", backoff_initial_seconds=0.01,
        backoff_max_seconds=0.05, timeout_seconds=kw.pop("timeout_seconds", 2.0), **kw,
    )  # fmt: skip
    return RestPartitionClient(settings)


def test_json_round_trip_and_404_is_no_data(fake_api):
    base, api = fake_api
    c = client_for(base)
    url = c.url_for("scores", "2024-01-01")
    c.store(url, {"rows": [1, 2, 3]})
    assert c.load(url) == {"rows": [1, 2, 3]}
    with pytest.raises(NoDataForPartitionError, match="no data for partition"):
        c.load(c.url_for("scores", "2024-01-02"))


def test_csv_frames(fake_api):
    base, _ = fake_api
    c = client_for(base, format="csv", method="POST")
    df = pd.DataFrame({"id": [1, 2], "text": ["a", "b,c"]})
    url = c.url_for("preds", {"suite": "qa", "system": "s1"})
    assert url.endswith("/data/preds/qa%7Cs1")
    c.store(url, df)
    pd.testing.assert_frame_equal(c.load(url), df, check_dtype=False)


def test_500s_then_success_and_429_retry_after(fake_api):
    base, api = fake_api
    c = client_for(base)
    url = c.url_for("scores", "p")
    c.store(url, [1])
    api.faults = [500, 503, 429]
    assert c.load(url) == [1]
    gets = [r for r in api.requests if r[0] == "GET"]
    assert len(gets) == 4


def test_timeouts_are_retried(fake_api):
    base, api = fake_api
    c = client_for(base, timeout_seconds=0.3)
    url = c.url_for("scores", "p")
    c.store(url, {"a": 1})
    api.delay_seconds, api.delay_count = 1.0, 1
    assert c.load(url) == {"a": 1}


def test_retried_write_is_applied_once(fake_api):
    base, api = fake_api
    c = client_for(base)
    url = c.url_for("scores", "p")
    api.fail_after_apply = 1  # the server applies the write, then the response is lost (500)
    c.store(url, {"v": 1})
    assert len(api.applied) == 1
    puts = [r for r in api.requests if r[0] == "PUT"]
    assert len(puts) == 2
    assert puts[0][2]["idempotency-key"] == puts[1][2]["idempotency-key"]


def test_exhausted_retries_fail_loudly(fake_api):
    base, api = fake_api
    c = client_for(base, max_attempts=3)
    api.faults = [500] * 5
    with pytest.raises(StorageError, match="failed after 3 attempt"):
        c.load(c.url_for("scores", "p"))


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a\x00b"])
def test_unsafe_partition_keys_never_reach_the_server(fake_api, key):
    base, api = fake_api
    with pytest.raises(UnsafeKeyError):
        client_for(base).url_for("scores", key)
    assert api.requests == []


def test_injection_text_is_url_encoded(fake_api):
    base, api = fake_api
    c = client_for(base)
    url = c.url_for("scores", "x'; DROP TABLE t;--")
    c.store(url, [1])
    assert api.applied[0][0] == "/data/scores/x%27%3B%20DROP%20TABLE%20t%3B--"
