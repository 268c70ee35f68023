"""Attacks on approver identity (issue 19, point 1): an approver is proven, never typed.

Each test is a forged, borrowed or missing identity, or a rule that must hold whatever front
end decides (timeout, unknown requester), or input that used to crash the page. The page is
the real app served by uvicorn on 127.0.0.1; the CLI runs through typer's runner against the
same SQLite store.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa
from support.approvals_page import serve_approvals_page
from typer.testing import CliRunner

from flowstone.approvals import cli as approvals_cli
from flowstone.approvals.links import ALL_REQUESTS, LinkSigner
from flowstone.approvals.machine import ApprovalPolicy, State, UnauthorisedApprover
from flowstone.approvals.settings import DEV_SIGNING_SECRET, MissingSecret, resolve_signing_secret
from flowstone.approvals.store import ApprovalStore, InvalidToken, RequestTimedOut
from flowstone.storage.sql import utcnow

SECRET = "identity-test-secret-0123456789"
POLICY = ApprovalPolicy(approvers={"promoted_system": ["alice", "bob"], "other": ["carol"]})


@pytest.fixture
def page(store_url: str) -> Iterator[tuple[str, ApprovalStore, LinkSigner]]:
    store = ApprovalStore(store_url)
    signer = LinkSigner(SECRET, ttl_seconds=3600)
    with serve_approvals_page(store, signer) as base:
        yield base, store, signer


def _open(store: ApprovalStore, asset: str = "promoted_system", **kwargs: Any):
    return store.open_request(asset, "qa|base", "v1", {"f1": 0.9}, POLICY, **kwargs).request


def _decide(http: httpx.Client, request_id: str, **form: str) -> httpx.Response:
    return http.post(f"/requests/{request_id}/decide", data={"action": "approve", **form})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --------------------------------------------------------------------------- links


def test_a_link_signed_for_alice_cannot_decide_as_bob(page) -> None:
    base, store, signer = page
    request = _open(store)
    alice = signer.sign(request.id, approver="alice")
    payload, signature = alice.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    as_bob = f"{_b64(json.dumps({**body, 'a': 'bob'}, separators=(',', ':')).encode())}.{signature}"
    with httpx.Client(base_url=base) as http:
        forged = _decide(http, request.id, t=as_bob)
        assert forged.status_code == 403 and "does not match" in forged.text
        assert store.get(request.id).state == State.PENDING
        # A name typed next to alice's link changes nothing: the link decides, as alice.
        done = _decide(http, request.id, t=alice, by="bob")
        assert done.status_code == 303
    assert store.get(request.id).decided_by == "alice"


def test_a_borrowed_link_for_an_approver_of_another_asset_is_refused(page) -> None:
    base, store, signer = page
    request = _open(store)  # promoted_system: alice, bob
    carols = signer.sign(ALL_REQUESTS, approver="carol")  # carol approves "other" only
    with httpx.Client(base_url=base) as http:
        refused = _decide(http, request.id, t=carols)
        assert refused.status_code == 409 and "carol&#39; is not an approver" in refused.text
    assert store.get(request.id).state == State.PENDING


def test_a_typed_name_on_the_page_is_not_an_identity(page) -> None:
    base, store, signer = page
    request = _open(store)
    unbound = signer.sign(ALL_REQUESTS)  # a link naming nobody
    with httpx.Client(base_url=base) as http:
        shown = http.get("/", params={"t": unbound})
        assert shown.status_code == 200 and 'id="login"' in shown.text
        assert f'id="approve-{request.id}"' not in shown.text  # no decide form without login
        typed = _decide(http, request.id, t=unbound, by="alice")
        assert typed.status_code == 401 and "typed name is not accepted" in typed.text
        no_link = _decide(http, request.id, by="alice")
        assert no_link.status_code == 401
    assert store.get(request.id).state == State.PENDING


def test_a_typed_name_on_the_cli_is_not_an_identity(store_url: str) -> None:
    store = ApprovalStore(store_url)
    request = _open(store)
    runner = CliRunner()
    typed = runner.invoke(
        approvals_cli.app, ["approve", request.id, "--by", "alice", "--db", store_url]
    )
    assert typed.exit_code != 0 and "No such option: --by" in typed.output
    anonymous = runner.invoke(approvals_cli.app, ["approve", request.id, "--db", store_url])
    assert anonymous.exit_code == 1 and "who is deciding?" in anonymous.output
    # $USER is whatever the caller sets: it is not the OS user the policy maps.
    spoofed = runner.invoke(
        approvals_cli.app, ["approve", request.id, "--db", store_url], env={"USER": "alice"}
    )
    assert spoofed.exit_code == 1
    assert store.get(request.id).state == State.PENDING


def test_the_cli_decides_as_the_mapped_os_user(store_url: str) -> None:
    login = approvals_cli.os_login()
    if login is None:
        pytest.skip("no POSIX login name here")
    store = ApprovalStore(store_url)
    policy = ApprovalPolicy(approvers={"*": ["alice"]}, os_users={login: "alice"})
    request = store.open_request("promoted_system", "", "v1", {}, policy).request
    result = CliRunner().invoke(approvals_cli.app, ["approve", request.id, "--db", store_url])
    assert result.exit_code == 0, result.output
    assert store.get(request.id).decided_by == "alice"
    assert store.audit(request.id)[-1].detail == {"via": f"cli (OS user {login})"}


# --------------------------------------------------------------------------- tokens


def test_tokens_decide_until_revoked_on_every_front_end(page, store_url: str) -> None:
    base, store, signer = page
    first, second = _open(store), _open(store, asset="promoted_system_2")
    runner = CliRunner()
    created = runner.invoke(approvals_cli.app, ["token", "create", "alice", "--db", store_url])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[0]
    assert token.startswith("fsa_")
    token_id = store.tokens("alice")[0].id
    with httpx.Client(base_url=base) as http:
        bearer = {"Authorization": f"Bearer {token}"}
        shown = http.get("/", headers=bearer)
        assert shown.status_code == 200 and "You are <b>alice</b>" in shown.text
        done = http.post(
            f"/requests/{first.id}/decide", data={"action": "approve", "by": "bob"}, headers=bearer
        )
        assert done.status_code == 303
        assert store.get(first.id).decided_by == "alice"
        assert store.audit(first.id)[-1].detail == {"via": "web (token)"}

        revoked = runner.invoke(approvals_cli.app, ["token", "revoke", token_id, "--db", store_url])
        assert revoked.exit_code == 0 and "revoked" in revoked.output
        refused = http.post(
            f"/requests/{second.id}/decide", data={"action": "approve"}, headers=bearer
        )
        assert refused.status_code == 401 and "revoked" in refused.text
        login = http.post("/login", data={"token": token})
        assert login.status_code == 401 and "revoked" in login.text
    cli = runner.invoke(
        approvals_cli.app, ["approve", second.id, "--token", token, "--db", store_url]
    )
    assert cli.exit_code == 1 and "revoked" in cli.output
    with pytest.raises(InvalidToken, match="revoked"):
        store.approver_for_token(token)
    assert store.get(second.id).state == State.PENDING
    listed = runner.invoke(approvals_cli.app, ["token", "list", "--db", store_url])
    assert token_id in listed.output and "revoked" in listed.output and token not in listed.output


def test_only_the_tokens_hash_is_stored(store_url: str) -> None:
    store = ApprovalStore(store_url)
    _, token = store.create_token("alice")
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM flowstone_approval_tokens")).all()
    stored = " ".join(str(value) for row in rows for value in row)
    assert token not in stored and token[4:] not in stored
    assert hashlib.sha256(token.encode()).hexdigest() in stored
    assert store.approver_for_token(token) == "alice"
    with pytest.raises(InvalidToken):
        store.approver_for_token(hashlib.sha256(token.encode()).hexdigest())


def test_login_cookie_decides_only_with_the_pages_form_token(page) -> None:
    base, store, signer = page
    request = _open(store)
    _, token = store.create_token("bob")
    with httpx.Client(base_url=base) as http:
        login = http.post("/login", data={"token": token, "next": "https://evil.test/"})
        assert login.status_code == 303 and login.headers["location"] == "/approvals/"
        assert "httponly" in login.headers["set-cookie"].lower()
        shown = http.get("/")
        assert "You are <b>bob</b>" in shown.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', shown.text)
        assert csrf is not None
        # A cross-site form rides on the cookie but cannot know the form token.
        forged = _decide(http, request.id)
        assert forged.status_code == 403 and "form token" in forged.text
        # Nor can a form token issued to someone else be reused by bob's session.
        alices = signer.sign("alice", "alice", purpose="form")
        assert _decide(http, request.id, csrf=alices).status_code == 403
        # The cookie is not a link, and a link is not a cookie.
        session = http.cookies.get("flowstone_approver")
        assert http.get("/", params={"t": session}, cookies={}).status_code == 403
        assert _decide(http, request.id, csrf=csrf.group(1)).status_code == 303
    assert store.get(request.id).decided_by == "bob"


def test_the_proxy_header_is_trusted_only_when_enabled(page, monkeypatch) -> None:
    base, store, signer = page
    request = _open(store)
    header = {"X-Auth-Request-User": "alice"}
    with httpx.Client(base_url=base) as http:
        assert http.get("/", headers=header).status_code == 401
        assert _decide(http, request.id, **{}).status_code == 401
        monkeypatch.setenv("FLOWSTONE_APPROVALS_TRUSTED_HEADER", "X-Auth-Request-User")
        shown = http.get("/", headers=header)
        assert shown.status_code == 200 and "You are <b>alice</b>" in shown.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', shown.text)
        assert csrf is not None
        done = http.post(
            f"/requests/{request.id}/decide",
            data={"action": "approve", "csrf": csrf.group(1)},
            headers=header,
        )
        assert done.status_code == 303
    decided = store.get(request.id)
    assert decided.decided_by == "alice"
    assert store.audit(request.id)[-1].detail == {"via": "web (proxy header X-Auth-Request-User)"}


# --------------------------------------------------------------------------- store rules


def test_a_decision_after_timeout_at_is_refused_by_the_store(store_url: str) -> None:
    store = ApprovalStore(store_url)
    past = utcnow() - timedelta(hours=2)
    policy = ApprovalPolicy(approvers={"*": ["alice"]}, timeout_hours=1)
    request = store.open_request("a", "", "v1", {}, policy, now=past).request
    # The sweep has not run: the request still reads pending, and is refused all the same.
    assert store.get(request.id).state == State.PENDING
    with pytest.raises(RequestTimedOut, match="timed out at"):
        store.decide(request.id, approve=True, by="alice", via="slack")
    assert store.get(request.id).state == State.EXPIRED
    assert store.get(request.id).decided_by is None
    # An escalating policy escalates at the deadline; the escalation approver decides.
    escalate = ApprovalPolicy(
        approvers={"*": ["alice"]}, timeout_hours=1, on_timeout="escalate",
        escalation_approvers=["carol"],
    )  # fmt: skip
    late = store.open_request("b", "", "v1", {}, escalate, now=past).request
    assert store.decide(late.id, approve=True, by="carol").state == State.APPROVED


def test_no_self_approval_with_an_unknown_requester_refuses(store_url: str) -> None:
    store = ApprovalStore(store_url)
    policy = ApprovalPolicy(approvers={"*": ["alice", "bob"]}, allow_self_approval=False)
    unknown = store.open_request("a", "", "v1", {}, policy).request
    with pytest.raises(UnauthorisedApprover, match="does not record who requested it"):
        store.decide(unknown.id, approve=True, by="alice")
    assert store.get(unknown.id).state == State.PENDING
    known = store.open_request("b", "", "v1", {}, policy, requested_by="alice").request
    with pytest.raises(UnauthorisedApprover, match="self-approval is disabled"):
        store.decide(known.id, approve=True, by="alice")
    assert store.decide(known.id, approve=True, by="bob").state == State.APPROVED


@dg.asset(key=dg.AssetKey(["evaluation", "report"]))
def _report(context) -> dg.MaterializeResult:
    return dg.MaterializeResult(data_version=dg.DataVersion(context.run.tags.get("test/v", "v1")))


def test_the_requester_is_not_a_run_tag_the_launcher_types(store_url, outbox_url) -> None:
    """alice launches the upstream run tagged as bob's, then approves it herself."""
    from resources.approvals import ApprovalsResource
    from resources.notifications import NotificationsResource
    from sensors.approvals import build_approval_sensors

    gated = dg.AssetKey("promoted_system")
    requests_sensor, _ = build_approval_sensors(gated, _report.key)
    resources = {
        "approvals": ApprovalsResource(
            database_url=store_url,
            approvers={"promoted_system": ["alice", "bob"]},
            allow_self_approval=False,
            signing_secret=SECRET,
        ),
        "notifications": NotificationsResource(database_url=outbox_url),
    }
    store = ApprovalStore(store_url)
    with dg.instance_for_test() as instance:
        tags = {"flowstone/requested_by": "bob", "user": "bob"}
        assert dg.materialize([_report], instance=instance, tags=tags).success
        with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
            result = requests_sensor(ctx)
        assert isinstance(result, dg.SensorResult)
        cursor = result.cursor
        (request,) = store.list()
        assert request.requested_by is None  # typed tags name nobody
        with pytest.raises(UnauthorisedApprover, match="does not record who requested it"):
            store.decide(request.id, approve=True, by="alice")
        assert store.get(request.id).state == State.PENDING
        # The tag Dagster+ sets to the signed-in launcher is the requester.
        tags = {"dagster/user": "alice", "flowstone/requested_by": "bob", "test/v": "v2"}
        assert dg.materialize([_report], instance=instance, tags=tags).success
        with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as ctx:
            requests_sensor(ctx)
    (newer,) = store.list(states=[State.PENDING])
    assert newer.requested_by == "alice"
    with pytest.raises(UnauthorisedApprover, match="self-approval is disabled"):
        store.decide(newer.id, approve=True, by="alice")
    assert store.decide(newer.id, approve=True, by="bob").decided_by == "bob"


# --------------------------------------------------------------------------- secret and --dev


def test_without_a_secret_the_signer_and_the_server_refuse_unless_dev(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowstone import cli as flowstone_cli
    from flowstone.web import server
    from resources.approvals import ApprovalsResource

    monkeypatch.delenv("FLOWSTONE_APPROVALS_DEV", raising=False)
    monkeypatch.delenv("FLOWSTONE_VIEWER_HOST", raising=False)
    with pytest.raises(MissingSecret, match="FLOWSTONE_APPROVAL_SECRET"):
        resolve_signing_secret()
    runner = CliRunner()
    link = runner.invoke(approvals_cli.app, ["link", "abc"])
    assert link.exit_code == 1 and "no signing secret" in link.output
    # The sensors' notifications carry no link rather than one anyone could forge.
    request = _open(ApprovalStore(store_url))
    assert ApprovalsResource(database_url=store_url).request_links(request) == []

    bound: list[tuple[str, int]] = []
    monkeypatch.setattr(server, "serve", lambda app, host, port, **_: bound.append((host, port)))
    refused = runner.invoke(flowstone_cli.app, ["serve", "--port", "8799"])
    assert refused.exit_code == 2 and "no approval signing secret" in refused.output
    refused = runner.invoke(flowstone_cli.app, ["approvals", "serve", "--port", "8799"])
    assert refused.exit_code == 2 and bound == []
    wide = runner.invoke(flowstone_cli.app, ["serve", "--dev", "--host", "0.0.0.0"])
    assert wide.exit_code == 2 and "binds 127.0.0.1 only" in wide.output and bound == []
    monkeypatch.setenv("FLOWSTONE_VIEWER_HOST", "0.0.0.0")  # the environment cannot widen it
    dev = runner.invoke(flowstone_cli.app, ["serve", "--dev", "--port", "8799"])
    assert dev.exit_code == 0, dev.output
    assert bound == [("127.0.0.1", 8799)]
    # --dev made this process a development one: links sign with the public secret, and a
    # request anyone may decide gets a link for the fixed "demo" identity, nobody typed.
    assert resolve_signing_secret() == DEV_SIGNING_SECRET
    anyone = ApprovalStore(store_url).open_request("x", "", "v1", {}, ApprovalPolicy()).request
    ((label, url),) = ApprovalsResource(database_url=store_url).request_links(anyone)
    assert label == "Decide as demo"
    claims = LinkSigner(DEV_SIGNING_SECRET).verify(httpx.URL(url).params["t"])
    assert (claims.scope, claims.approver) == (anyone.id, "demo")


def test_notifications_carry_one_link_signed_for_each_approver(store_url: str) -> None:
    from resources.approvals import ApprovalsResource

    resource = ApprovalsResource(database_url=store_url, signing_secret=SECRET, base_url="http://h")
    request = _open(ApprovalStore(store_url))
    links = resource.request_links(request)
    assert [label for label, _ in links] == ["Decide as alice", "Decide as bob"]
    signer = LinkSigner(SECRET)
    for (_label, url), name in zip(links, ["alice", "bob"], strict=True):
        claims = signer.verify(httpx.URL(url).params["t"])
        assert (claims.scope, claims.approver) == (request.id, name)


# --------------------------------------------------------------------------- malformed input


def _raw(base: str, data: bytes) -> bytes:
    url = httpx.URL(base)
    assert url.port is not None
    with socket.create_connection((url.host, url.port), timeout=10) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET /approvals/?t=abc.%C3%A9%C3%A9 HTTP/1.1\r\n", id="non-ascii-signature"),
        pytest.param(b"GET /approvals/requests/x?t=%FF%FE.x HTTP/1.1\r\n", id="non-utf8-link"),
        pytest.param(
            b"POST /approvals/requests/x/decide HTTP/1.1\r\nContent-Type: "
            b"application/x-www-form-urlencoded\r\nContent-Length: 20\r\n\r\nt=abc.%C3%A9&a=b1234",
            id="non-ascii-signature-in-form",
        ),
        pytest.param(
            b"POST /approvals/requests/x/decide HTTP/1.1\r\nContent-Length: 4\r\n\r\nt=\xff\xfe",
            id="body-not-utf8",
        ),
        pytest.param(
            b"POST /approvals/requests/x/decide HTTP/1.1\r\nContent-Length: abc\r\n\r\nt=1",
            id="content-length-not-a-number",
        ),
        pytest.param(
            b"POST /approvals/requests/x/decide HTTP/1.1\r\nContent-Length: -5\r\n\r\nt=1",
            id="content-length-negative",
        ),
        pytest.param(
            b"POST /approvals/requests/x/decide HTTP/1.1\r\nContent-Length: 3\r\n"
            b"Content-Length: 4\r\n\r\nt=1",
            id="content-length-twice",
        ),
        pytest.param(
            b"POST /approvals/requests/x/decide HTTP/1.1\r\nContent-Length: 99999999\r\n\r\nt=1",
            id="content-length-oversized",
        ),
    ],
)
def test_malformed_requests_get_a_400(page, request_bytes: bytes) -> None:
    base, store, _ = page
    first, rest = request_bytes.split(b"\r\n", 1)
    data = first + b"\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + rest
    if b"\r\n\r\n" not in data:
        data += b"\r\n"
    response = _raw(base, data)
    assert response.startswith(b"HTTP/1.1 400 "), response[:200]
