"""The viewer without materialized data: links, the empty state, old approval links, the
records and charts the pages are built from, and what the modules import."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta

import httpx
import pytest
from support.approvals_page import serve_viewer_app

from flowstone.approvals.settings import default_base_url
from flowstone.web import links
from flowstone.web.charts import Series, line_chart
from flowstone.web.compare import SuiteComparison
from flowstone.web.records import PartitionReport


def test_links_follow_the_public_url(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (links.URL_ENV, links.HOST_ENV, links.PORT_ENV):
        monkeypatch.delenv(name, raising=False)
    assert links.public_base_url() == "http://127.0.0.1:8765"
    assert links.suite_url("qa") == "http://127.0.0.1:8765/suites/qa"
    monkeypatch.setenv(links.HOST_ENV, "0.0.0.0")
    monkeypatch.setenv(links.PORT_ENV, "9000")
    assert links.public_base_url() == "http://127.0.0.1:9000"  # what a local browser opens
    monkeypatch.setenv(links.URL_ENV, "https://flowstone.example.com/viewer/")
    base = "https://flowstone.example.com/viewer"
    assert links.case_url("qa", "qa-001") == f"{base}/suites/qa/cases/qa-001"
    assert links.partition_url("qa", "lead-1") == f"{base}/suites/qa/systems/lead-1"
    assert links.diff_url("qa", "lead-1") == f"{base}/suites/qa/systems/lead-1/diff"
    # a '/' inside a name stays inside its segment; spaces and '#' are quoted
    assert links.model_url("org/model") == f"{base}/models/org%2Fmodel"
    assert links.case_url("qa", "a b#1") == f"{base}/suites/qa/cases/a%20b%231"
    assert (
        links.cases_url("qa", tag="hard", failing="1", system="")
        == f"{base}/suites/qa/cases?tag=hard&failing=1"
    )
    assert links.suite_url("qa", base_url="") == "/suites/qa"
    # approval links land on the pages inside the same app unless told otherwise
    monkeypatch.delenv("FLOWSTONE_APPROVALS_URL", raising=False)
    assert default_base_url() == f"{base}/approvals"
    monkeypatch.setenv(links.PORT_ENV, "http")
    with pytest.raises(ValueError, match="FLOWSTONE_VIEWER_PORT='http' is not a port"):
        links.viewer_port()


def test_empty_state_and_404s_before_anything_ran(empty_sources) -> None:
    with serve_viewer_app(sources=empty_sources) as base, httpx.Client(base_url=base) as http:
        page = http.get("/")
        assert page.status_code == 200
        assert "Nothing is materialized yet" in page.text and "make demo" in page.text
        assert str(empty_sources.object_store.url) in page.text
        defined = http.get("/suites/qa")
        assert defined.status_code == 404
        assert "suite &#39;qa&#39; has nothing materialized yet" in defined.text
        unknown = http.get("/suites/foo")
        assert unknown.status_code == 404
        assert (
            "no suite &#39;foo&#39;; known suites: intent, paraphrase, qa, summarisation"
            in unknown.text
        )
        model = http.get("/models/minilm")
        assert model.status_code == 404 and "known models: none yet" in model.text
        assert http.get("/healthz").json() == {"ok": True}
        css = http.get("/static/viewer.css")
        assert css.status_code == 200 and "td.fail" in css.text


def test_links_signed_for_the_old_approvals_server_are_redirected(empty_sources) -> None:
    with serve_viewer_app(sources=empty_sources) as base, httpx.Client(base_url=base) as http:
        listing = http.get("/", params={"t": "tok.en"})
        assert listing.status_code == 307
        assert listing.headers["location"] == "/approvals/?t=tok.en"
        one = http.get("/requests/r-1", params={"t": "tok"})
        assert one.status_code == 307 and one.headers["location"] == "/approvals/requests/r-1?t=tok"
        refused = http.get("/approvals/?t=tok.en")
        assert refused.status_code == 403 and 'id="error"' in refused.text


def stored_report(system: str, mean: float, ci: tuple[float, float] | None = None) -> dict:
    figures = {"mean": mean, "median": mean, "p95": mean, "min": 0.0, "pass_rate": 0.5,
               "pass_score": 0.5, "cases": 4, "invalid": 0}  # fmt: skip
    if ci:
        figures.update(ci_low=ci[0], ci_high=ci[1])
    return {
        "suite": "qa",
        "system": system,
        "cases": 4,
        "metrics": {"rouge1": figures},
        "tags": [],
        "thresholds": {
            "rouge1": {
                "metric": "rouge1",
                "min_mean": 0.5,
                "mean": mean,
                "passed": mean >= 0.5,
                "blocking": False,
            },  # fmt: skip
            "bleu": {
                "metric": "bleu",
                "min_mean": float("nan"),
                "mean": 0.1,
                "passed": True,
                "blocking": False,
            },  # fmt: skip
        },
        "previous_means": {"rouge1": 0.7},
        "regressions": ["rouge1"],
    }


def test_reports_read_confidence_intervals_once_stored() -> None:
    with_ci = PartitionReport.from_stored(stored_report("a", 0.61, (0.52, 0.70)))
    without = PartitionReport.from_stored(stored_report("b", 0.42))
    assert with_ci.metrics["rouge1"].ci == (0.52, 0.70)
    assert without.metrics["rouge1"].ci is None
    assert list(with_ci.thresholds) == ["rouge1"]  # an unset (NaN) threshold is no check
    assert not without.passed and without.failed_checks == ["rouge1"]
    comparison = SuiteComparison("qa", {"a": with_ci, "b": without})
    assert comparison.has_ci("rouge1") and comparison.best_mean("rouge1") == 0.61
    assert comparison.checks_passed() == (1, 2)
    assert not SuiteComparison("qa", {"b": without}).has_ci("rouge1")


def test_the_suite_page_shows_a_ci_column_once_intervals_are_stored() -> None:
    from starlette.requests import Request

    from flowstone.web.compare import case_table
    from flowstone.web.render import environment, links_for

    request = Request({"type": "http", "path": "/suites/qa", "root_path": "", "headers": []})

    def render(reports: dict) -> str:
        comparison = SuiteComparison("qa", reports)
        return (
            environment()
            .get_template("suite.html")
            .render(
                request=request,
                links=links_for(request),
                comparison=comparison,
                table=case_table("qa", {}, {}, comparison),
                charts=[],
                colours={},
                warehouse_exists=False,
                sources={"object_store": "objects", "warehouse": "warehouse.duckdb"},
            )
        )

    with_ci = render(
        {
            "a": PartitionReport.from_stored(stored_report("a", 0.61, (0.52, 0.70))),
            "b": PartitionReport.from_stored(stored_report("b", 0.42)),
        }
    )
    assert '<th class="num ci">95% CI</th>' in with_ci
    assert "[0.520, 0.700]" in with_ci and 'class="num fail"' in with_ci  # b is under 0.5
    without = render({"b": PartitionReport.from_stored(stored_report("b", 0.42))})
    assert "95% CI" not in without


def test_line_chart_is_inline_svg_with_a_point_per_materialization() -> None:
    start = datetime(2026, 1, 1, 12, 0)
    svg = line_chart(
        [
            Series("echo", [(start, 0.2), (start + timedelta(hours=1), 0.4)]),
            Series("lead-1", [(start, 0.9)]),
        ],
        title="rouge1 <mean>",
    )
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<polyline") == 1 and svg.count("<circle") == 3
    assert "rouge1 &lt;mean&gt;" in svg and "echo · 2026-01-01 13:00:00 · 0.400" in svg
    single = line_chart([Series("echo", [(start, 0.5)])], title="one run")
    assert "<polyline" not in single and "1 materialization<" in single


def test_the_viewer_imports_no_dagster_and_the_code_location_no_web_stack() -> None:
    script = (
        "import sys\n"
        "import flowstone.web.app, flowstone.web.server\n"
        "assert not [m for m in sys.modules if m.startswith('dagster')], 'viewer imported dagster'\n"
        "import flowstone.web.links\n"
        "for m in [m for m in sys.modules if m.startswith(('starlette', 'uvicorn', 'flowstone.web'))]:\n"
        "    del sys.modules[m]\n"
        "import assets.baking\n"
        "loaded = [m for m in sys.modules if m.startswith(('starlette', 'uvicorn', 'flowstone.web.'))]\n"
        "assert loaded == ['flowstone.web.links'], loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_flowstone_approvals_serve_starts_the_app_with_the_pages(tmp_path) -> None:
    """The command a person runs: the app on the port asked for, a signed list link from
    `flowstone approvals link` opens the pages, Ctrl-C stops it."""
    import os
    import signal
    from pathlib import Path

    from support.net import free_port, reachable
    from support.polling import wait_for

    port = free_port()
    flowstone = str(Path(sys.executable).parent / "flowstone")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "home"),
        "FLOWSTONE_OUTPUTS_DIR": str(tmp_path / "out"),
        "FLOWSTONE_VIEWER_URL": f"http://127.0.0.1:{port}",
        "FLOWSTONE_APPROVAL_SECRET": "cli-test-secret",
    }
    env.pop("FLOWSTONE_APPROVALS_URL", None)
    server = subprocess.Popen(
        [flowstone, "approvals", "serve", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert wait_for(lambda: reachable("127.0.0.1", port), timeout=60), "never listened"
        link = subprocess.run(
            [flowstone, "approvals", "link"], env=env, capture_output=True, text=True, timeout=60
        ).stdout.strip()
        assert link.startswith(f"http://127.0.0.1:{port}/approvals/?t="), link
        page = httpx.get(link)
        assert page.status_code == 200 and 'id="empty"' in page.text
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=30)
    assert f"approvals pages: http://127.0.0.1:{port}/approvals/" in output


def test_the_viewer_reads_the_s3_store_the_io_manager_writes(
    monkeypatch: pytest.MonkeyPatch, moto_endpoint: str, tmp_path
) -> None:
    """Same variable, same bucket, same keys: what the code location's I/O manager wrote to S3
    (moto on loopback) is what the viewer lists and shows."""
    import boto3

    from flowstone.storage.keys import object_key_for
    from flowstone.storage.objects import save_object
    from flowstone.web.sources import ViewerSources
    from io_managers.object_store import object_store_io_manager_from_env

    bucket = "viewer-store"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    monkeypatch.setenv("FLOWSTONE_OBJECT_STORE_URL", f"s3://{bucket}/runs")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("FLOWSTONE_OUTPUTS_DIR", str(tmp_path / "out"))
    io_manager = object_store_io_manager_from_env()
    for system, mean in (("echo", 0.42), ("lead-1", 0.61)):
        key = object_key_for(
            io_manager.prefix, ["evaluation", "report"], {"suite": "qa", "system": system}
        )
        save_object(io_manager.build_store(), key, stored_report(system, mean))
    with (
        serve_viewer_app(sources=ViewerSources.from_env()) as base,
        httpx.Client(base_url=base) as http,
    ):
        overview = http.get("/")
        assert overview.status_code == 200 and 'href="/suites/qa"' in overview.text
        suite = http.get("/suites/qa")
        assert suite.status_code == 200
        assert "0.420" in suite.text and "0.610" in suite.text
        assert f"s3://{bucket}/runs" in suite.text  # the footer names the store it read


def test_a_failed_judge_metric_reads_as_failed_not_as_an_error() -> None:
    from flowstone.web.records import PartitionReport

    stored = {
        "suite": "qa", "system": "s", "cases": 3,
        "metrics": {
            "judge": {"mean": None, "cases": 0, "invalid": 3,
                      "failure": "0 valid of 3 judgements; see judge_invalid_reply"},
            "rouge1": {"mean": 0.5, "cases": 3, "ci_low": 0.4, "ci_high": 0.6},
        },
        "thresholds": {"judge": {"min_mean": 0.5, "mean": None, "passed": False,
                                 "blocking": True}},
    }  # fmt: skip
    report = PartitionReport.from_stored(stored)
    judge = report.metrics["judge"]
    assert judge.mean is None and judge.failure and "0 valid of 3" in judge.failure
    assert report.metrics["rouge1"].ci == (0.4, 0.6) and report.metrics["rouge1"].failure is None
    assert not report.passed and report.failed_checks == ["judge"]
    stored["suite_metrics"] = {"chrf": 41.5, "spearman": None}
    assert PartitionReport.from_stored(stored).suite_metrics == {"chrf": 41.5, "spearman": None}
