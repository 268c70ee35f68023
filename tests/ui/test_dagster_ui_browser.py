"""The Dagster UI and the approvals page, driven in headless Chromium the way a person uses them.

`dagster dev -w workspace.yaml` serves the repo's code location (see conftest.py). The tests
open the global asset lineage and check FlowStone's asset groups, launch one evaluation
partition (qa|echo) from the evaluation group's "Materialize all" dialog, follow the run page
until the run succeeds, and approve a pending request on the approvals page. Each step saves a
screenshot to $FLOWSTONE_TEST_ARTIFACTS.

Selectors are what the UI shows (headings, button text, dimension names, partition titles)
and the aria-labels of Dagster's icons: dagster-webserver's production build carries no
data-testid attributes and hashes its CSS class names (only their readable prefixes, such as
``bp5-dialog`` or ``CollapsedGroupNode``, are used).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
from selenium.common.exceptions import WebDriverException
from support.approvals_page import serve_approvals_page, serve_viewer_app

from flowstone.approvals.links import ALL_REQUESTS, LinkSigner
from flowstone.approvals.machine import ApprovalPolicy, State
from flowstone.approvals.store import ApprovalStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# The groups FlowStone's assets declare: assets/evaluation.py, assets/dbt.py (analytics),
# assets/warehouse.py (warehouse, and baking for the bake tables), assets/promotion.py.
FLOWSTONE_GROUPS = {"analytics", "baking", "evaluation", "promotion", "warehouse"}
EVALUATION_ASSETS = ["suite", "predictions", "scores", "report"]
SUITE, SYSTEM = "qa", "echo"
PARTITION = f"{SUITE}|{SYSTEM}"
# One partition through 4 steps takes ~20 s on an idle 2-core machine (one run worker process
# loads the code location and runs the steps) and up to ~140 s when other work shares it.
RUN_TIMEOUT = 210.0
TERMINAL_RUN_STATES = {"Success", "Failure", "Canceled"}

DIALOG = "//div[contains(@class,'bp5-dialog')]"
OPEN_POPOVER = "//div[contains(@class,'dagster-popover') and @data-state='open']"
SIDEBAR_GROUPS = "//button[.//*[@aria-label='asset_group']]//*[@title]"
GRAPH_GROUPS = "//div[contains(@class,'CollapsedGroupNode')]//*[@data-tooltip]"


def _titles(driver, xpath: str, attribute: str) -> set[str]:
    return {e.get_attribute(attribute) for e in driver.find_elements("xpath", xpath)}


def test_asset_lineage_shows_the_flowstone_groups(dagster_ui) -> None:
    page, dev = dagster_ui.page, dagster_ui.dev
    started = time.monotonic()
    dagster_ui.open("/asset-groups")
    page.element(
        "the 'Global asset lineage' heading", "//*[normalize-space(text())='Global asset lineage']"
    )

    # The sidebar lists every group; the graph draws each one as a collapsed group node.
    sidebar = page.wait(
        f"the lineage sidebar to list the groups {sorted(FLOWSTONE_GROUPS)}",
        lambda d: (s := _titles(d, SIDEBAR_GROUPS, "title")) >= FLOWSTONE_GROUPS and s,
    )
    graph = page.wait(
        f"the lineage graph to draw the group nodes {sorted(FLOWSTONE_GROUPS)}",
        lambda d: (s := _titles(d, GRAPH_GROUPS, "data-tooltip")) >= FLOWSTONE_GROUPS and s,
    )
    # The UI shows exactly the groups the server knows (nothing ungrouped in "default").
    served = {n["groupName"] for n in dev.graphql("{ assetNodes { groupName } }")["assetNodes"]}
    assert sidebar == served, f"sidebar groups {sorted(sidebar)} != server's {sorted(served)}"
    assert graph == served, f"graph groups {sorted(graph)} != server's {sorted(served)}"
    assert "default" not in served, "an asset has no group_name (it shows under 'default')"

    page.wait(
        "the group nodes to finish 'fetching statuses'",
        lambda d: "fetching statuses" not in page.text(),
    )
    shot = page.capture("asset-lineage")
    assert shot and shot[0].stat().st_size > 10_000
    print(f"\n[ui] lineage checked in {time.monotonic() - started:.1f}s: {sorted(served)}")


def _pick_partition(page, dimension: str, key: str, dialog_title: str) -> None:
    """Open the dimension's partition selector, tick ``key``, close the selector."""
    page.click(
        f"the '{dimension}' partition selector",
        f"{DIALOG}//*[normalize-space(text())='{dimension}']/following::*[@aria-haspopup='dialog'][1]",
    )
    page.click(
        f"partition '{key}' in the '{dimension}' selector",
        f"{OPEN_POPOVER}//div[@role='menuitem'][.//*[@title='{key}']]",
    )
    # The selector stays open for more picks; a click on the dialog's title closes it.
    page.click("the dialog title", f"{DIALOG}//*[normalize-space(text())='{dialog_title}']")
    page.wait(
        f"the '{dimension}' selector to close",
        lambda d: not d.find_elements("xpath", OPEN_POPOVER),
        timeout=10,
    )


def _run_status(driver, short_id: str) -> str | None:
    """The status tag next to "Runs / <short id>" in the run page's header."""
    tags = driver.find_elements(
        "xpath", f"//span[span[normalize-space(.)='{short_id}']]/following-sibling::div[1]/div[1]"
    )
    return tags[0].text.strip() if tags else None


def test_materialize_one_evaluation_partition_from_the_ui(dagster_ui) -> None:
    page, dev = dagster_ui.page, dagster_ui.dev
    started = time.monotonic()
    dagster_ui.open("/locations/flowstone/asset-groups/evaluation")
    for name in EVALUATION_ASSETS:
        page.element(
            f"the '{name}' node in the evaluation graph", f"//*[normalize-space(text())='{name}']"
        )

    button = page.click(
        "the group's 'Materialize all' button",
        "//button[starts-with(normalize-space(.),'Materialize all')]",
    )
    assert f"({len(EVALUATION_ASSETS)})" in button.text, (
        f"'{button.text}': expected the {len(EVALUATION_ASSETS)} evaluation assets "
        "(the observable sources are observed, not materialized)"
    )
    title = f"Launch runs to materialize {len(EVALUATION_ASSETS)} assets"
    page.element("the launch dialog", f"{DIALOG}//*[normalize-space(text())='{title}']")
    _pick_partition(page, "suite", SUITE, title)
    _pick_partition(page, "system", SYSTEM, title)
    page.wait(
        "the dialog to count 1 partition",
        lambda d: "\n1 partition\n" in f"\n{d.find_element('xpath', DIALOG).text}\n",
    )
    page.capture("launch-dialog")
    page.click("the 'Launch 1 run' button", f"{DIALOG}//button[normalize-space(.)='Launch 1 run']")

    # The toast names the run and links to its page.
    view = page.element(
        "the 'Launched run' toast's View link",
        "//a[normalize-space(.)='View'][contains(@href,'/runs/')]",
    )
    run_id = view.get_attribute("href").rstrip("/").rsplit("/", 1)[-1]
    try:
        view.click()
    except WebDriverException:  # the toast can fade between finding and clicking; follow its link
        page.driver.get(f"{dev.base_url}/runs/{run_id}")
    page.wait(f"the run page of {run_id}", lambda d: f"/runs/{run_id}" in d.current_url)
    launched = time.monotonic()

    short_id = run_id[:8]
    try:
        status = page.wait(
            f"run {run_id} to finish (status tag in the run page header)",
            lambda d: (s := _run_status(d, short_id)) in TERMINAL_RUN_STATES and s,
            timeout=RUN_TIMEOUT,
        )
    except AssertionError as exc:
        server = dev.graphql(
            "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id}
        )["runOrError"]
        raise AssertionError(
            f"{exc}\nthe page showed '{_run_status(page.driver, short_id)}', the server says "
            f"{server}; dagster dev log {dev.log_path}:\n{dev.log_tail(15)}"
        ) from None
    run_seconds = time.monotonic() - launched
    page.capture("run-finished")
    assert status == "Success", (
        f"run {run_id} for {PARTITION} ended '{status}' ({dev.base_url}/runs/{run_id}); "
        f"dagster dev log {dev.log_path}:\n{dev.log_tail()}"
    )

    # Second opinion from the server: the run, its steps and each asset's partition.
    run = dev.graphql(
        """query($id: ID!) { runOrError(runId: $id) { __typename ... on Run {
             status creationTime startTime endTime tags { key value }
             stepStats { stepKey status } } } }""",
        {"id": run_id},
    )["runOrError"]
    assert run["status"] == "SUCCESS", run
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags.get("dagster/partition") == PARTITION and tags.get("dagster/from_ui") == "true", (
        tags
    )
    steps = {s["stepKey"]: s["status"] for s in run["stepStats"]}
    assert steps == {f"evaluation__{name}": "SUCCESS" for name in EVALUATION_ASSETS}, steps
    for name in EVALUATION_ASSETS:
        events = dev.graphql(
            """query($key: AssetKeyInput!, $p: [String!]) { assetOrError(assetKey: $key) {
                 ... on Asset { assetMaterializations(partitions: $p) { runId partition } } } }""",
            {"key": {"path": ["evaluation", name]}, "p": [PARTITION]},
        )["assetOrError"]["assetMaterializations"]
        assert [(e["runId"], e["partition"]) for e in events] == [(run_id, PARTITION)], (
            f"evaluation/{name} [{PARTITION}]: materializations {events}"
        )
    report_html = dev.outputs / "reports" / SUITE / f"{SYSTEM}.html"
    assert report_html.is_file(), f"the run wrote no HTML report at {report_html}"

    # What a person then opens: the report's partition, materialized by this run.
    dagster_ui.open(f"/assets/evaluation/report?view=partitions&partition={SUITE}%7C{SYSTEM}")
    page.wait(
        f"evaluation/report [{PARTITION}] to show as materialized by run {short_id}",
        lambda d: all(
            t in page.text() for t in ("Materialized (1)", short_id, "Latest materialization")
        ),
    )
    page.element("the report's 'cases' metadata", "//*[normalize-space(text())='cases']")
    page.capture("report-partition")
    print(
        f"\n[ui] {PARTITION} launched from the UI; run {run_id} succeeded {run_seconds:.0f}s "
        f"after launch (queued {run['startTime'] - run['creationTime']:.0f}s, ran "
        f"{run['endTime'] - run['startTime']:.0f}s); test took {time.monotonic() - started:.0f}s"
    )


def _follow_the_viewer_link(dagster_ui, viewer_url: str, partition: str) -> None:
    """Open the report partition in the UI, read its "viewer" metadata link and follow it."""
    page = dagster_ui.page
    suite, system = partition.split("|")
    dagster_ui.open(f"/assets/evaluation/report?view=partitions&partition={suite}%7C{system}")
    link = page.element(
        "the report's 'viewer' metadata link", f"//a[starts-with(@href,'{viewer_url}')]"
    )
    href = link.get_attribute("href")
    assert href == f"{viewer_url}/suites/{suite}/systems/{system}", href
    page.capture("report-viewer-link")
    page.driver.get(href)
    page.wait(
        f"the viewer's page of {partition}",
        lambda d: suite in page.text() and system in page.text() and "404" not in d.title,
    )
    page.capture("viewer-from-the-ui")


def _check_status_counts(home: Path, check: str) -> dict[str, int]:
    """How many report partitions the instance holds in each status of one partitioned check
    (what the UI's Partitions tab counts)."""
    import dagster as dg

    from assets.evaluation import REPORT_KEY
    from flowstone.definitions import build_definitions

    partitions = build_definitions().get_assets_def(REPORT_KEY).partitions_def
    key = dg.AssetCheckKey(REPORT_KEY, check)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        state = instance.event_log_storage.get_asset_check_state([(key, partitions)])[key]
    return {
        status.value: len(list(subset.value.get_partition_keys()))
        for status, subset in state.subsets.items()
    }


def test_report_checks_count_every_qa_partition_and_link_the_viewer(
    dagster_ui, monkeypatch
) -> None:
    """Each qa partition keeps its own rouge1 result: the ones below the threshold show
    failed, suites without a rouge1 threshold are not counted as passed, and the check list
    does not summarise the asset as all passed. The report's "viewer" link in the UI opens
    the served viewer on that partition."""
    import dagster as dg

    from flowstone.definitions import build_definitions
    from flowstone.web.sources import ViewerSources

    page, dev = dagster_ui.page, dagster_ui.dev
    monkeypatch.setenv("FLOWSTONE_OUTPUTS_DIR", str(dev.outputs))
    viewer = contextlib.ExitStack()
    viewer_url = viewer.enter_context(serve_viewer_app(sources=ViewerSources.from_env()))
    monkeypatch.setenv("FLOWSTONE_VIEWER_URL", viewer_url)  # what the runs' links point at
    job = build_definitions().resolve_job_def("evaluation_job")
    from flowstone.evaluation.catalog import load_catalog

    # every qa partition that means something (a class-name baseline answers no qa case)
    qa = [k for k in load_catalog().applicable_keys() if k.startswith("qa|")]
    assert set(qa) <= set(job.partitions_def.get_partition_keys())
    with viewer, dg.DagsterInstance.from_config(str(dev.home)) as instance:
        for key in qa:  # a run each, the way the demo and a sensor launch them
            job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)
        _follow_the_viewer_link(dagster_ui, viewer_url, qa[0])
    counts = _check_status_counts(dev.home, "rouge1_above_threshold")
    assert counts["FAILED"] >= 1, counts  # the deterministic baselines miss qa's rouge1 floor
    assert counts["FAILED"] + counts["SUCCEEDED"] == len(qa), counts  # only qa sets one

    dagster_ui.open("/assets/evaluation/report?view=checks")
    page.click("the rouge1 check", "//*[normalize-space(text())='rouge1_above_threshold']")
    page.element(
        "the rouge1 check marked failed in the list",
        "//*[normalize-space(text())='rouge1_above_threshold']"
        "/following::*[normalize-space(text())='Failed'][1]",
    )
    page.click("the check's Partitions tab", "//button[normalize-space(.)='Partitions']")
    expected = {
        "Failed": counts["FAILED"],
        "Passed": counts["SUCCEEDED"],
        "Skipped": counts["SKIPPED"],
    }
    page.wait(
        f"the Partitions tab to count {expected}",
        lambda d: all(f"{label} ({n})" in page.text() for label, n in expected.items()),
    )
    page.capture("report-checks-partitions")
    assert "Execution Failed (0)" in page.text()


# --------------------------------------------------------------------------- approvals page


@pytest.fixture
def approvals_page(tmp_path: Path):
    """The approvals page served the way the approvals tests and `flowstone approvals serve`
    serve it: make_server on a free loopback port, in a thread."""
    store = ApprovalStore(f"sqlite:///{tmp_path / 'approvals.db'}")
    signer = LinkSigner("ui-browser-test-secret", ttl_seconds=600)
    with serve_approvals_page(store, signer) as base:
        yield base, store, signer


def test_approve_a_pending_request_on_the_approvals_page(page, approvals_page) -> None:
    base, store, signer = approvals_page
    started = time.monotonic()
    policy = ApprovalPolicy(approvers={"promoted_system": ["alice"]})
    summary = {"mean/exact_match": 0.61, "cases": 36, "passed": True}
    request = store.open_request("promoted_system", PARTITION, "dv-ui-1", summary, policy).request
    other = store.open_request("promoted_system", "paraphrase|echo", "dv-ui-2", {}, policy).request

    # The link a notification carries for alice opens that one request, as her.
    page.driver.get(signer.url(base, request.id, "alice"))
    card = page.element(f"request {request.id}'s card", f"//*[@id='request-{request.id}']")
    for expected in ("promoted_system", PARTITION, "pending", "0.61", "alice"):
        assert expected in card.text, f"'{expected}' missing from the request card: {card.text!r}"
    assert not page.driver.find_elements("id", f"request-{other.id}"), (
        "a one-request link listed others"
    )
    page.capture("approvals-pending")

    assert "alice" in page.element("who the page says you are", "//*[@id='whoami']").text
    page.element("the comment field", f"//input[@id='comment-{request.id}']").send_keys("ship it")
    page.click("the Approve button", f"//button[@id='approve-{request.id}']")
    message = page.element("the confirmation message", "//*[@id='message']")
    assert f"promoted_system [{PARTITION}] approved by alice" in message.text, message.text
    card = page.element(f"request {request.id}'s decided card", f"//*[@id='request-{request.id}']")
    assert "approved" in card.text and "Decided by alice: ship it" in card.text, card.text
    assert not page.driver.find_elements("id", f"approve-{request.id}"), (
        "decided request still has Approve"
    )
    page.capture("approvals-approved")

    decided = store.get(request.id)
    assert (decided.state, decided.decided_by, decided.comment) == (
        State.APPROVED,
        "alice",
        "ship it",
    )
    trail = [e for e in store.audit(request.id) if e.to_state == State.APPROVED.value]
    via = trail[0].detail.get("via") if trail else None
    assert len(trail) == 1 and trail[0].actor == "alice", trail
    assert via == "web (link signed for the approver)", trail  # how her identity was proven
    assert store.get(other.id).state == State.PENDING

    # The pending list now holds only the other request.
    page.driver.get(signer.url(base, ALL_REQUESTS))
    page.element(f"request {other.id} in the pending list", f"//*[@id='request-{other.id}']")
    assert not page.driver.find_elements("id", f"request-{request.id}"), (
        "approved request still listed"
    )
    page.capture("approvals-list-after")
    print(f"\n[ui] approvals page checked in {time.monotonic() - started:.1f}s")
