"""Helpers shared by the telemetry tests: reading Prometheus text over HTTP."""

from __future__ import annotations

import urllib.request


def scrape(url: str) -> tuple[str, str]:
    """GET a /metrics URL over HTTP; returns (content type, body)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.headers["Content-Type"], response.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format (None when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None
