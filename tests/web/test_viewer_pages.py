"""Every viewer page and every 404 over real HTTP, on data the assets really materialized."""

from __future__ import annotations

import html as html_text
import re
import subprocess
import sys
import time
from urllib.parse import quote

import httpx
import pytest

# One evaluation, one dbt build and one bake for the whole module (2-4 min on a quiet machine).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
SYSTEMS = ["echo", "lead-1", "tunable"]  # conftest.SYSTEMS, checked in the first test
MODEL = "tiny"


@pytest.fixture(scope="module")
def http(viewer_url: str):
    with httpx.Client(base_url=viewer_url, timeout=30) as client:
        yield client


def cells(html: str, row_id: str) -> list[str]:
    """The text of each cell of the table row with ``id=row_id``."""
    row = re.search(rf'<tr id="{re.escape(row_id)}"[^>]*>(.*?)</tr>', html, re.S)
    assert row, f"no row {row_id!r}"
    return [
        html_text.unescape(re.sub(r"<[^>]+>", "", c)).strip()
        for c in re.findall(r"<td[^>]*>(.*?)</td>", row[1], re.S)
    ]


def test_index_lists_suites_systems_and_models(http, viewer_data) -> None:
    assert (list(viewer_data.systems), viewer_data.model) == (SYSTEMS, MODEL)
    page = http.get("/")
    assert page.status_code == 200
    for expected in (
        "/suites/qa",
        "/suites/docs",
        *SYSTEMS,
        f"/models/{MODEL}",
        "accuracy_retention",
    ):
        assert expected in page.text, expected
    # echo fails the qa fuzzy-match floor; the overview says so in its partition's cell
    assert re.search(r'class="fail"><a href="/suites/qa/systems/echo">[^<]*fuzzy_match', page.text)


def test_suite_page_compares_every_system(http) -> None:
    page = http.get("/suites/qa")
    assert page.status_code == 200
    html = page.text
    for system in SYSTEMS:
        means = cells(html, f"means-{system}")
        assert means[0] == system
        # per metric its mean (three decimals) and its interval around it
        for mean, ci in zip(means[1:7:2], means[2:7:2], strict=True):
            assert re.fullmatch(r"(✗ )?\d\.\d{3}", mean), means
            low, high = (float(x) for x in re.fullmatch(r"\[(\S+), (\S+)\]", ci).groups())
            assert low <= float(mean.removeprefix("✗ ")) <= high, means
    # echo's fuzzy-match mean is below its threshold: the cell is marked and says why
    assert re.search(
        r'class="num fail[^"]*" title="threshold 0\.580: failed">✗ 0\.\d{3}',
        html_text.unescape(html),
    )
    assert html.count('<th class="num ci">95% CI</th>') == 3  # one per metric
    assert 'id="pass-rates"' in html and 'id="checks"' in html
    echo_checks = cells(html, "checks-echo")  # the thresholded metrics in the suite's order
    assert re.fullmatch(r"✗ 0\.\d{3} < 0\.580", echo_checks[1]), echo_checks
    assert re.fullmatch(r"✓ 0\.\d{3} ≥ 0\.500", echo_checks[2]), echo_checks
    # the trend: one SVG per metric, every system with two materializations (a line)
    assert html.count("<svg") == 3
    assert html.count("<polyline") == 3 * len(SYSTEMS)
    assert "2 materializations" in html
    # links to every case
    for i in range(5):
        assert f'href="/suites/qa/cases/qa-{i}"' in html


def test_suite_page_shows_suite_metrics_side_by_side(http) -> None:
    """qa's chrF and spearman from each stored report: the best chrF marked, the threshold
    verdicts as in the means table, an undefined correlation failing its threshold."""
    html = http.get("/suites/qa").text
    assert "Over the whole suite" in html and 'id="suite-metrics"' in html
    rows = {s: cells(html, f"suite-metrics-{s}") for s in SYSTEMS}
    assert all(row[0] == s for s, row in rows.items())
    chrf = {s: float(row[1].removeprefix("✗ ")) for s, row in rows.items()}
    assert all(0.0 <= v <= 100.0 for v in chrf.values()) and len(set(chrf.values())) > 1
    best = max(chrf.values())
    for system, value in chrf.items():  # the best cell is bold, a failed floor of 20 marked
        cell = re.search(
            rf'<tr id="suite-metrics-{system}">.*?</td>\s*<td class="([^"]*)"', html, re.S
        )
        assert ("best" in cell[1]) == (value == best), (system, cell[1])
        assert ("fail" in cell[1]) == (value < 20), (system, cell[1])
    # every system's fuzzy-match scores are constant over qa: spearman undefined, and failed
    assert all(row[2] == "✗ undefined" for row in rows.values()), rows
    assert re.search(r'title="threshold 0\.000: failed \(spearman is undefined', html)
    checks = cells(html, "checks-echo")  # after the per-case metrics' checks
    assert checks[-1] == "✗ undefined, threshold 0.000" and checks[-2].startswith(("✓", "✗"))
    partition = http.get("/suites/qa/systems/echo").text
    assert cells(partition, "suite-metric-spearman")[1:] == ["undefined", "✗ undefined, < 0.000"]


def test_case_page_shows_every_system_side_by_side(http) -> None:
    page = http.get("/suites/qa/cases/qa-1")
    assert page.status_code == 200
    html = page.text
    assert "What colour is item 1?" in html and "Item 1 has colour 1." in html
    assert 'id="expected">colour 1<' in html
    outputs = {s: cells(html, f"output-{s}") for s in SYSTEMS}
    assert outputs["echo"][1] == "What colour is item 1?"
    assert outputs["tunable"][1] == "unrelated words"  # the latest (second, worse) run
    assert all(len(row) == 2 + 3 for row in outputs.values())  # output + 3 metric scores
    assert outputs["tunable"][2] == "✗ 0.000"  # exact match, failing and marked
    assert 'id="previous"' in html and 'id="next"' in html


def test_case_page_shows_every_reference(http) -> None:
    html = http.get("/suites/docs/cases/d2").text
    assert 'id="expected">Story 2 begins here.<' in html
    others = re.search(r'<ul id="other-references">(.*?)</ul>', html, re.S)
    assert others and re.findall(r"<li[^>]*>(.*?)</li>", others[1]) == [
        "Story 2 starts, then ends."
    ]
    assert 'id="other-references"' not in http.get("/suites/docs/cases/d1").text


def test_case_list_filters_are_links(http) -> None:
    every = http.get("/suites/qa/cases")
    assert every.status_code == 200 and every.text.count('<tr id="case-') == 5
    hard = http.get("/suites/qa/cases", params={"tag": "hard"})
    assert re.findall(r'<tr id="case-([^"]+)"', hard.text) == ["qa-0", "qa-2", "qa-4"]
    # echo and lead-1 pass rouge1 on every case, tunable (now answering unrelated words) fails
    # it: the systems disagree everywhere; on exact match all three fail: nowhere
    disagree = http.get("/suites/qa/cases", params={"metric": "rouge1", "disagree": "1"})
    assert disagree.status_code == 200 and disagree.text.count('<tr id="case-') == 5
    assert "systems disagree on rouge1" in disagree.text
    agree = http.get("/suites/qa/cases", params={"metric": "exact_match", "disagree": "1"})
    assert 'id="no-cases"' in agree.text
    failing = http.get(
        "/suites/qa/cases", params={"metric": "exact_match", "failing": "1", "system": "tunable"}
    )
    assert failing.text.count('<tr id="case-') == 5  # tunable now answers unrelated words
    assert "failing exact_match for tunable" in failing.text
    sorted_ = http.get("/suites/qa/cases", params={"metric": "fuzzy_match", "sort": "spread"})
    assert sorted_.status_code == 200
    spreads = [
        float(s) for s in re.findall(r'<td class="num">(\d\.\d{3})</td>\s*</tr>', sorted_.text)
    ]
    assert spreads == sorted(spreads, reverse=True) and len(spreads) == 5


def test_suite_page_says_which_differences_are_real(http) -> None:
    page = http.get("/suites/qa")
    # tunable now answers unrelated words and scores far lower on rouge1, but on 5 cases a
    # paired test cannot tell that from chance (the smallest sign-flip p is 2/32): no verdict
    row = cells(page.text, "pair-rouge1-tunable-echo")
    assert row[-1] == "tunable ≈ echo" and row[-5].startswith("-")
    assert float(row[-3]) >= 0.05 and "paired-permutation, 5 cases" in row[-2]
    assert re.search(r'<td rowspan="3" class="best">echo, lead-1, tunable</td>', page.text)
    # a suite whose comparison was not materialized says how to get it
    docs = http.get("/suites/docs")
    assert 'id="no-comparison"' in docs.text and "comparison_job" in docs.text


def test_partition_page_and_diff(http) -> None:
    page = http.get("/suites/qa/systems/tunable")
    assert page.status_code == 200
    assert "regressed:" in page.text and 'id="metrics"' in page.text
    report = http.get("/suites/qa/systems/tunable/report.html")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")

    diff = http.get("/suites/qa/systems/tunable/diff")
    assert diff.status_code == 200
    exact = cells(diff.text, "change-exact_match")
    assert exact[1:5] == ["1.000", "0.000", "-1.000", "✗ regressed"]
    assert "UTC (run " in exact[5]  # the first run, dated from dbt's report history
    # case by case: tunable now answers unrelated words, so every qa case got worse
    assert "5</b> changed, <b>0</b> unchanged" in diff.text
    qa0 = cells(diff.text, "case-change-qa-0")
    assert qa0[1:6] == [
        "changed",
        "1.000",
        "0.000",
        "-1.000",
        "✗ newly failing exact_match, fuzzy_match, rouge1",
    ]
    assert re.search(r"<del>colour</del>", diff.text) and "<ins>unrelated</ins>" in diff.text
    # the filter is a link; echo answered the same both times: nothing changed, all shown on request
    same = http.get("/suites/qa/systems/echo/diff", params={"show": "changed"})
    assert 'id="no-case-changes"' in same.text
    every = http.get("/suites/qa/systems/echo/diff", params={"show": "all", "metric": "rouge1"})
    assert every.text.count('<tr id="case-change-') == 5 and "5</b> unchanged" in every.text
    # another pair of kept runs by run id; a run that was not kept is a 404 naming those kept
    runs = re.findall(r'<code title="([0-9a-f-]{36})">', diff.text)
    assert len(runs) == 2
    again = http.get("/suites/qa/systems/tunable/diff", params={"current": runs[1][:8]})
    assert again.status_code == 200 and "5</b> changed" in again.text
    gone = http.get("/suites/qa/systems/tunable/diff", params={"previous": "feedbeef"})
    assert gone.status_code == 404 and "no kept materialization of qa|tunable by run" in gone.text
    assert http.get("/suites/qa/systems/tunable/diff", params={"show": "odd"}).status_code == 400


def test_model_page_and_chart(http) -> None:
    page = http.get(f"/models/{MODEL}")
    assert page.status_code == 200
    html = page.text
    for expected in ("accuracy_retention", 'id="latency"', 'id="history"', "Never deployed"):
        assert expected in html, expected
    assert f'src="/models/{MODEL}/chart.png"' in html
    chart = http.get(f"/models/{MODEL}/chart.png")
    assert chart.status_code == 200 and chart.headers["content-type"] == "image/png"
    assert chart.content[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/suites/foo", "no suite 'foo'; known suites: docs, qa"),
        ("/suites/foo/cases", "no suite 'foo'; known suites: docs, qa"),
        (
            "/suites/qa/systems/gpt-9",
            "no system 'gpt-9' evaluated on suite 'qa'; known systems: echo, lead-1, tunable",
        ),
        ("/suites/qa/systems/gpt-9/diff", "no system 'gpt-9' evaluated on suite 'qa'"),
        ("/suites/qa/cases/qa-99", "no case 'qa-99' in suite 'qa'; it has 5 cases"),
        ("/suites/qa/cases?system=gpt-9", "no system 'gpt-9' evaluated on suite 'qa'"),
        ("/models/resnet", f"no model 'resnet'; known models: {MODEL}"),
        ("/models/resnet/chart.png", "no model 'resnet'"),
        ("/no/such/page", "no page at /no/such/page"),
    ],
)
def test_unknown_names_get_a_404_naming_them(http, path: str, message: str) -> None:
    page = http.get(path)
    assert page.status_code == 404
    assert message.replace("'", "&#39;") in page.text


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"metric": "bleu"},
            "no metric 'bleu' on suite 'qa'; metrics: exact_match, fuzzy_match, rouge1",
        ),
        ({"tag": "nope"}, "no tag 'nope' in suite 'qa'; tags: easy, hard, numbers"),
        ({"sort": "random"}, "unknown sort 'random'"),
    ],
)
def test_bad_filters_say_what_exists(http, params: dict, message: str) -> None:
    page = http.get("/suites/qa/cases", params=params)
    assert page.status_code == 400
    assert message.replace("'", "&#39;") in page.text


def test_a_case_id_with_a_slash_round_trips(http) -> None:
    """Case ids are free text: the link quotes them, the route reads them back."""
    page = http.get(f"/suites/qa/cases/{quote('qa/1', safe='')}")
    assert page.status_code == 404 and "no case &#39;qa/1&#39;" in page.text


def test_a_locked_warehouse_gives_a_503_page_not_a_crash(http, viewer_data) -> None:
    """dbt or a pipeline step holding the DuckDB file: pages that read it say so and ask for
    a reload; pages that read only the object store keep working."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time\n"
         f"con = duckdb.connect({str(viewer_data.sources.warehouse)!r})\n"
         "print('holding', flush=True)\ntime.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        busy = http.get("/suites/qa")
        assert busy.status_code == 503, busy.text[:500]
        assert busy.headers["retry-after"] == "5"
        assert "held by another process" in busy.text and "Reload this page" in busy.text
        assert http.get(f"/models/{MODEL}").status_code == 503
        assert http.get("/suites/qa/cases/qa-1").status_code == 200
        assert http.get("/suites/qa/cases").status_code == 200
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 10
    while http.get("/suites/qa").status_code != 200:
        assert time.monotonic() < deadline, "the warehouse stayed busy after its holder exited"
        time.sleep(0.2)
