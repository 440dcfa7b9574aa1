"""The registry routes' access gate in-process: the data plane driven through fake
transports with a real policy file, a real htpasswd (bcrypt) and token keys in a real
store; the upstream is the test. What the token flow answers, what reaches the
registry, and the token keys and login throttle on their own."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from pathlib import Path

import pytest

from certproxy.certs import FileStore
from certproxy.service.access.gate import AccessGate, Upstream
from certproxy.service.access.throttle import Throttle
from certproxy.service.access.tokens import KEEP, LIFETIME, ROTATE, TokenKeys
from certproxy.service.auth import make_entry
from support.inproc import Plane, make_plane, settle
from test_protocol import responses

POLICY = """
users = "htpasswd"

[groups]
ci = ["ci-bot"]
admins = ["alice"]

[[rule]]
repositories = ["public/*"]
who = ["anonymous"]
actions = ["pull"]

[[rule]]
repositories = ["team/*"]
who = ["@ci", "bob"]
actions = ["pull", "push"]

[[rule]]
repositories = ["*"]
who = ["@admins"]
actions = ["pull", "push", "delete", "catalog"]
"""
HOST = b"reg.example.com:5000"


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


@pytest.fixture
def gate(tmp_path: Path) -> AccessGate:
    (tmp_path / "htpasswd").write_text(
        "\n".join(make_entry(u, f"{u}pw", cost=4) for u in ("alice", "bob", "ci-bot")) + "\n")
    (tmp_path / "access.toml").write_text(POLICY)
    store = FileStore(tmp_path / "store")
    store.ensure_layout()
    gate = AccessGate(tmp_path / "access.toml", store, Upstream("registry", 5000, None))
    gate.load()
    return gate


async def ask(plane: Plane, method: bytes, target: bytes, auth: bytes | None = None,
              extra: bytes = b"") -> tuple[int, bytes, bytes, bytes]:
    """(status, head, body, what reached the upstream) of one request on a new connection."""
    conn, client = plane.connect_client()
    head = b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, target, HOST)
    if auth is not None:
        head += b"Authorization: %s\r\n" % auth
    conn.data_received(head + extra + b"\r\n")
    for _ in range(100):  # bcrypt runs in a thread: wait for it, bounded
        await settle()
        sent = plane.upstreams[-1].take() if plane.upstreams else b""
        out = client.take()
        if sent:
            plane.upstream_protocol().data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            out += client.take()
        if out:
            (status, got, body), = responses(out, head_only=1 if method == b"HEAD" else 0)
            return status, got, body, sent
        await asyncio.sleep(0.02)
    raise AssertionError("no answer")


async def token(plane: Plane, scope: str, auth: bytes | None = None) -> bytes:
    status, _, body, _ = await ask(plane, b"GET", b"/token?service=%s&scope=%s" % (HOST, scope.encode()), auth)
    assert status == 200, body
    doc = json.loads(body)
    assert doc["token"] == doc["access_token"] and doc["expires_in"] == LIFETIME
    return b"Bearer " + doc["token"].encode()


async def test_anonymous_pull_of_a_public_repository_goes_through_as_it_came(gate: AccessGate) -> None:
    plane = make_plane(gate=gate)
    status, _, _, sent = await ask(plane, b"GET", b"/v2/public/app/manifests/v1")
    assert status == 200 and sent.startswith(b"GET /v2/public/app/manifests/v1 HTTP/1.1\r\n")


async def test_what_anonymous_may_not_do_is_a_bearer_challenge_with_the_scope(gate: AccessGate) -> None:
    plane = make_plane(gate=gate)
    status, head, body, sent = await ask(plane, b"POST", b"/v2/team/app/blobs/uploads/")
    assert status == 401 and not sent
    assert (b'www-authenticate: Bearer realm="https://reg.example.com:5000/token",'
            b'service="reg.example.com:5000",scope="repository:team/app:pull,push"') in head
    assert b"docker-distribution-api-version: registry/2.0" in head
    assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
    # the ping challenges without credentials, and passes with valid ones
    assert (await ask(plane, b"GET", b"/v2/"))[0] == 401
    assert (await ask(plane, b"GET", b"/v2/", basic("bob", "bobpw")))[0] == 200
    assert (await ask(plane, b"GET", b"/v2/", b"Basic Og=="))[0] == 401  # empty Basic is anonymous


async def test_a_refusal_names_what_was_asked_as_the_registry_does(gate: AccessGate) -> None:
    """docker reads an error with the code's own message and no detail as a bare code, which
    it retries for a minute and prints as "unauthorized": a refusal carries its detail."""
    plane = make_plane(gate=gate)
    _, _, body, _ = await ask(plane, b"POST", b"/v2/team/app/blobs/uploads/")
    assert json.loads(body)["errors"] == [{"code": "UNAUTHORIZED", "message": "authentication required",
                                           "detail": [{"Type": "repository", "Name": "team/app",
                                                       "Action": "push"}]}]
    _, _, body, _ = await ask(plane, b"GET", b"/v2/_catalog")
    assert json.loads(body)["errors"][0]["detail"] == [{"Type": "registry", "Name": "catalog", "Action": "*"}]
    status, _, body, _ = await ask(plane, b"DELETE", b"/v2/team/app/manifests/v1", basic("bob", "bobpw"))
    assert status == 403 and json.loads(body)["errors"][0]["detail"][0]["Action"] == "delete"


async def test_a_browser_is_challenged_with_basic_which_it_can_answer(gate: AccessGate) -> None:
    """A registry UI's page: its requests carry Sec-Fetch-Mode (no registry client sends it)."""
    plane = make_plane(gate=gate)
    browser = b"Sec-Fetch-Mode: navigate\r\n"
    for method, target, auth in ((b"GET", b"/v2/", None), (b"GET", b"/v2/team/app/tags/list", None),
                                 (b"GET", b"/v2/", basic("bob", "wrong"))):
        status, head, body, sent = await ask(plane, method, target, auth, extra=browser)
        assert status == 401 and not sent
        assert b'www-authenticate: Basic realm="certproxy", charset="UTF-8"' in head and b"Bearer" not in head
        assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
    status, _, _, sent = await ask(plane, b"GET", b"/v2/team/app/tags/list", basic("bob", "bobpw"), extra=browser)
    assert status == 200 and sent  # the prompt's answer: Basic credentials, checked against the policy
    status, _, body, _ = await ask(plane, b"GET", b"/v2/secret/x/tags/list", basic("bob", "bobpw"), extra=browser)
    assert status == 403 and json.loads(body)["errors"][0]["code"] == "DENIED"


async def test_the_token_flow_grants_what_the_policy_grants_of_what_was_asked(gate: AccessGate) -> None:
    plane = make_plane(gate=gate)
    bearer = await token(plane, "repository:team/app:pull,push&scope=repository:other/x:pull",
                         basic("bob", "bobpw"))
    status, _, _, sent = await ask(plane, b"POST", b"/v2/team/app/blobs/uploads/", bearer)
    assert status == 200 and sent.startswith(b"POST /v2/team/app/blobs/uploads/ ")
    # a user the policy does not grant: 403 DENIED, nothing forwarded
    status, _, body, sent = await ask(plane, b"GET", b"/v2/other/x/manifests/v1", bearer)
    assert status == 403 and not sent and json.loads(body)["errors"][0]["code"] == "DENIED"
    # a token without a scope the policy would grant: insufficient_scope, so the client asks again
    pull_only = await token(plane, "repository:team/app:pull", basic("bob", "bobpw"))
    status, head, _, _ = await ask(plane, b"PUT", b"/v2/team/app/manifests/v1", pull_only)
    assert status == 401 and b'error="insufficient_scope"' in head
    # an anonymous token grants only what anonymous may
    anonymous = await token(plane, "repository:team/app:pull,push")
    assert (await ask(plane, b"GET", b"/v2/team/app/manifests/v1", anonymous))[0] == 401


async def test_a_forged_expired_or_foreign_token_is_a_401_that_is_not_a_failed_login(gate: AccessGate) -> None:
    plane = make_plane(gate=gate)
    bearer = await token(plane, "repository:team/app:pull", basic("bob", "bobpw"))
    kid, claims, mac = bearer[7:].split(b".")
    forged = json.loads(base64.urlsafe_b64decode(claims + b"=" * (-len(claims) % 4)))
    forged["access"]["secret/x"] = ["pull", "push"]
    other = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=")
    for bad in (b"Bearer " + b".".join([kid, other, mac]), b"Bearer junk", b"Bearer 0123456789abcdef.e30.AA"):
        status, head, _, sent = await ask(plane, b"GET", b"/v2/team/app/manifests/v1", bad)
        assert status == 401 and b'error="invalid_token"' in head and not sent
    assert gate.throttle.retry_after("192.0.2.7") is None and not gate.throttle._windows


async def test_wrong_passwords_are_refused_counted_and_throttled_per_address(gate: AccessGate) -> None:
    plane = make_plane(gate=gate)
    for _ in range(10):
        status, _, body, sent = await ask(plane, b"GET", b"/token?service=x&scope=repository:team/app:pull",
                                          basic("bob", "wrong"))
        assert status == 401 and not sent and b"incorrect username or password" in body
    status, head, _, _ = await ask(plane, b"GET", b"/v2/team/app/manifests/v1", basic("bob", "bobpw"))
    assert status == 429 and b"retry-after: " in head  # even the right password waits now
    assert (await ask(plane, b"GET", b"/v2/public/app/manifests/v1"))[0] == 200  # anonymous still served


async def test_a_mount_without_pull_on_its_source_becomes_a_plain_upload(gate: AccessGate) -> None:
    plane = make_plane(gate=gate)
    digest = b"sha256:" + b"a" * 64
    bob = basic("bob", "bobpw")
    _, _, _, sent = await ask(plane, b"POST", b"/v2/team/app/blobs/uploads/?mount=%s&from=secret/x" % digest, bob)
    assert sent.startswith(b"POST /v2/team/app/blobs/uploads/ HTTP/1.1\r\n")  # mount and from dropped
    _, _, _, sent = await ask(plane, b"POST", b"/v2/team/app/blobs/uploads/?mount=%s&from=team/lib" % digest, bob)
    assert sent.startswith(b"POST /v2/team/app/blobs/uploads/?mount=%s&from=team/lib HTTP/1.1" % digest)
    # the registry reads mount/from from a form body too: such an upload's start is refused
    for target in (b"/v2/team/app/blobs/uploads/", b"/v2/team/app/blobs/uploads/?mount=%s&from=secret/x" % digest):
        status, _, _, sent = await ask(plane, b"POST", target, bob,
                                       b"Content-Type: application/x-www-form-urlencoded\r\n")
        assert status == 400 and not sent


async def test_paths_that_are_not_the_registry_api_are_refused_in_its_format(gate: AccessGate) -> None:
    plane = make_plane(gate=gate)
    for target, status in ((b"/v2/team/../secret/manifests/v1", 400), (b"/v2/team%2Fapp/manifests/v1", 400),
                           (b"/v2/Team/app/manifests/v1", 400), (b"/admin", 404)):
        got, head, body, sent = await ask(plane, b"GET", target, basic("alice", "alicepw"))
        assert got == status and not sent and json.loads(body)["errors"], target
        assert b"docker-distribution-api-version: registry/2.0" in head


async def test_the_access_log_says_who_did_what_to_which_repository(gate: AccessGate) -> None:
    records: list[object] = []
    plane = make_plane(gate=gate, access_log=records.append)
    await ask(plane, b"GET", b"/v2/public/app/manifests/v1")
    await ask(plane, b"DELETE", b"/v2/team/app/manifests/v1", basic("bob", "bobpw"))
    await settle()
    assert [(r.user, r.action, r.repository, r.status) for r in records] == [  # type: ignore[attr-defined]
        (None, "pull", "public/app", 200), ("bob", "delete", "team/app", 403)]


def test_token_keys_rotate_and_old_tokens_stay_good_until_they_expire(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    store.ensure_layout()
    now = [time.time()]
    keys = TokenKeys(store, clock=lambda: now[0])
    first = keys.issue("bob", "svc", {"team/app": frozenset({"pull"})}, False)
    made = {kid: mode for kid, mode in ((p.stem, p.stat().st_mode & 0o777) for p in (tmp_path / "store" / "tokens").iterdir())}
    assert list(made.values()) == [0o600]
    grant = keys.verify(first, "svc")
    assert grant is not None and grant.user == "bob" and grant.allows("team/app", "pull")
    assert keys.verify(first, "other-service") is None
    # a day later a new key signs; the old one still checks what it signed while that lives
    (old_kid,) = made
    os.utime(tmp_path / "store" / "tokens" / f"{old_kid}.key", (now[0] - ROTATE - 1, now[0] - ROTATE - 1))
    keys.load()
    second = keys.issue("bob", "svc", {}, False)
    assert second.split(".")[0] != old_kid and len(store.token_keys()) == 2
    replica = TokenKeys(store, clock=lambda: now[0])  # another process on the same store
    replica.load()
    assert replica.verify(first, "svc") is not None and replica.verify(second, "svc") is not None
    now[0] += LIFETIME + 1
    assert keys.verify(first, "svc") is None  # expired
    os.utime(tmp_path / "store" / "tokens" / f"{old_kid}.key", (now[0] - KEEP - 1, now[0] - KEEP - 1))
    keys.load()
    os.utime(tmp_path / "store" / "tokens" / f"{second.split('.')[0]}.key",
             (now[0] - ROTATE - 1, now[0] - ROTATE - 1))
    keys.load()
    keys.issue(None, "svc", {}, False)  # the next rotation removes keys past KEEP
    assert old_kid not in store.token_keys()


def test_the_throttle_counts_per_address_within_its_window_and_is_bounded() -> None:
    now = [100.0]
    throttle = Throttle(limit=3, window=60, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.retry_after("a") is None
        throttle.failed("a")
    assert throttle.retry_after("a") == 60 and throttle.retry_after("b") is None
    now[0] += 59.5
    assert throttle.retry_after("a") == 1
    now[0] += 1
    assert throttle.retry_after("a") is None  # the window is over
    for i in range(20_000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle._windows) <= 10_000


async def test_wrong_passwords_sent_at_once_are_throttled_too(gate: AccessGate) -> None:
    """Logins being checked count against the limit: 30 guesses in one burst cannot all
    be checked (bcrypt runs in a thread, so they would all be in flight together)."""
    plane = make_plane(gate=gate)
    conns = []
    for _ in range(30):
        conn, client = plane.connect_client()
        conn.data_received(b"GET /token?service=x HTTP/1.1\r\nHost: %s\r\nAuthorization: %s\r\n\r\n"
                           % (HOST, basic("bob", "wrong")))
        conns.append(client)
    statuses: list[int] = []
    for _ in range(200):
        await asyncio.sleep(0.02)
        statuses = [responses(c.written)[0][0] for c in conns if responses(c.written)]
        if len(statuses) == 30:
            break
    assert sorted(statuses) == [401] * 10 + [429] * 20, statuses


async def test_a_user_removed_from_htpasswd_loses_their_tokens(gate: AccessGate, tmp_path: Path) -> None:
    plane = make_plane(gate=gate)
    bearer = await token(plane, "repository:team/app:pull", basic("bob", "bobpw"))
    assert (await ask(plane, b"GET", b"/v2/team/app/manifests/v1", bearer))[0] == 200
    users = tmp_path / "htpasswd"
    users.write_text("".join(line + "\n" for line in users.read_text().splitlines() if not line.startswith("bob:")))
    os.utime(users, (time.time() + 5, time.time() + 5))
    gate.users._checked = 0.0  # the once-a-second look is due
    await asyncio.to_thread(gate.poll)
    status, head, _, sent = await ask(plane, b"GET", b"/v2/team/app/manifests/v1", bearer)
    assert status == 401 and b'error="invalid_token"' in head and not sent


async def test_bounds_on_what_one_request_may_ask(gate: AccessGate) -> None:
    plane = make_plane(gate=gate)
    scopes = "&".join(f"scope=repository:r{i}/x:pull" for i in range(40))
    status, _, body, _ = await ask(plane, b"GET", b"/token?service=x&" + scopes.encode())
    assert status == 400 and b"scopes" in body
    alice = basic("alice", "alicepw")
    status, _, body, sent = await ask(plane, b"GET", b"/v2/_catalog?n=%C2%B2", alice)
    assert status == 400 and json.loads(body)["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID" and not sent
    # a browser page of another site may not change the registry with the browser's login
    status, _, _, sent = await ask(plane, b"DELETE", b"/v2/team/app/manifests/v1", alice,
                                   b"Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\n")
    assert status == 403 and not sent
    # long targets are read every time, not remembered
    long = b"/v2/public/app/manifests/v1?" + b"x" * 4000
    assert (await ask(plane, b"GET", long))[0] == 200 and (b"GET", long) not in gate._calls


def test_a_policy_that_would_guard_no_port_stops_start_up(tmp_path: Path) -> None:
    from certproxy.service.config import ConfigError, load_config

    env = {"CERTPROXY_ACCESS": str(tmp_path / "access.toml"), "CERTPROXY_ROUTES": "15443=http://127.0.0.1:9"}
    with pytest.raises(ConfigError, match="CERTPROXY_ACCESS_PORTS: the access policy would guard no port"):
        load_config(env)
    assert load_config({**env, "CERTPROXY_ACCESS_PORTS": "15443"}).gated_ports == (15443,)
