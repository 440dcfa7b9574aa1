"""The registry routes read as the registry (``service/registry.py``), in-process: the
fields of the access lines, the upload sessions followed from start to end, the bounded
repository series, the user the registry accepted, and, generated without exclusions
(any method, any target bytes, any status, any kept header, any order), the invariants:
nothing raises, counters never go down, the series stay bounded, the uploads add up,
and no credential ever reaches a record.

With real clients and a real registry: ``test_registry_insight.py``.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from certproxy.proxy.routes import AccessRecord
from certproxy.service import logs
from certproxy.service.registry import REBALANCE, SESSIONS_MAX, RegistryObserver, RepositoryLabels

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Req:
    """What the observer reads of a request (``proxy.routes.Request``)."""

    def __init__(self, method: bytes, target: bytes, headers: dict[bytes, bytes] | None = None,
                 kept: bytes | None = None) -> None:
        self.method, self.target, self.kept = method, target, kept
        self._headers = headers or {}
        self.client_ip = "127.0.0.1"

    def header(self, name: bytes) -> list[bytes]:
        return [self._headers[name]] if name in self._headers else []

    def note(self, user: str | None, action: str, repository: str | None) -> None:
        raise AssertionError("the observer never notes")


def record(req: Req, status: int, bytes_in: int = 0, bytes_out: int = 0, seconds: float = 0.01,
           user: str | None = None, noted: str | None = None) -> AccessRecord:
    return AccessRecord("127.0.0.1", req.method.decode("latin-1"), req.target.decode("latin-1"), status,
                        bytes_in, bytes_out, seconds, "http://registry:5000", 5000, "reg.example", user, noted)


def run(obs: RegistryObserver, method: bytes, target: bytes, status: int, **kw: object) -> AccessRecord:
    headers = kw.pop("headers", None)
    kept = kw.pop("kept", None)
    req = Req(method, target, headers, kept)  # type: ignore[arg-type]
    obs.begin(req)
    return obs.observe(req, record(req, status, **kw))  # type: ignore[arg-type]


def scrape(obs: RegistryObserver) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as Prometheus would read it from the text format."""
    reg = CollectorRegistry()
    reg.register(obs)
    text = generate_latest(reg).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def collected(obs: RegistryObserver) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The same samples straight from ``collect`` (the generated test takes thousands)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in obs.collect() for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def push_layer(obs: RegistryObserver, repo: str, upload: str, digest: str = D1, size: int = 1000) -> None:
    run(obs, b"POST", b"/v2/%s/blobs/uploads/" % repo.encode(), 202, kept=upload.encode())
    run(obs, b"PATCH", b"/v2/%s/blobs/uploads/%s?_state=x" % (repo.encode(), upload.encode()), 202,
        bytes_in=size)
    run(obs, b"PUT", b"/v2/%s/blobs/uploads/%s?_state=y&digest=%s" % (
        repo.encode(), upload.encode(), digest.replace(":", "%3A").encode()), 201)


# --- the fields of an access line -------------------------------------------------------


def test_an_upload_is_followed_by_its_session_id_through_every_request() -> None:
    obs = RegistryObserver(50, 3600)
    post = run(obs, b"POST", b"/v2/team/app/blobs/uploads/", 202, kept=b"u-1")
    patch = run(obs, b"PATCH", b"/v2/team/app/blobs/uploads/u-1?_state=abc", 202, bytes_in=4096)
    put = run(obs, b"PUT", b"/v2/team/app/blobs/uploads/u-1?_state=def&digest=sha256%3A" + b"a" * 64, 201)
    assert [(r.action, r.repository, r.upload) for r in (post, patch, put)] == [("push", "team/app", "u-1")] * 3
    assert (post.reference, patch.reference, put.reference) == (None, None, D1)
    manifest = run(obs, b"GET", b"/v2/team/app/manifests/v2", 200, bytes_out=500)
    assert (manifest.action, manifest.repository, manifest.reference, manifest.upload) == (
        "pull", "team/app", "v2", None)
    for target, action in ((b"/v2/", "ping"), (b"/v2/_catalog", "catalog"), (b"/token?x", "other"),
                           (b"/v2/a/blobs/" + D1.encode(), "pull"), (b"/v2/%2e%2e/x", "other")):
        assert run(obs, b"GET", target, 200).action == action
    assert run(obs, b"DELETE", b"/v2/a/manifests/" + D2.encode(), 202).action == "delete"
    # a mount names the digest it mounts; a 201 has no session
    mount = run(obs, b"POST", b"/v2/b/blobs/uploads/?mount=%s&from=a" % D1.encode(), 201, kept=None)
    assert (mount.action, mount.reference, mount.upload) == ("push", D1, None)


def test_a_session_id_offered_with_a_refusal_is_not_taken() -> None:
    obs = RegistryObserver(50, 3600)
    refused = run(obs, b"POST", b"/v2/team/app/blobs/uploads/", 401, kept=b"u-9")
    assert refused.upload is None
    assert value(scrape(obs), "certproxy_registry_uploads_started_total", repository="team/app") == 0


def test_the_user_is_the_one_checked_or_the_one_the_registry_accepted() -> None:
    obs = RegistryObserver(50, 3600)
    creds = {b"authorization": b"Basic " + base64.b64encode(b"alice:s3cret-pw")}
    accepted = run(obs, b"GET", b"/v2/a/manifests/v1", 200, headers=creds)
    assert accepted.user == "alice"
    assert run(obs, b"GET", b"/v2/a/manifests/v1", 401, headers=creds).user is None
    claims = base64.urlsafe_b64encode(json.dumps({"sub": "ci-bot", "access": []}).encode()).rstrip(b"=")
    token = {b"authorization": b"Bearer eyJhbGciOiJFUzI1NiJ9." + claims + b".c2ln"}
    assert run(obs, b"GET", b"/v2/a/manifests/v1", 200, headers=token).user == "ci-bot"
    for junk in (b"Bearer x.y.z", b"Bearer " + b"." * 5000, b"Basic !!!", b"Basic " + base64.b64encode(b"nocolon"),
                 b"Digest x", b""):
        assert run(obs, b"GET", b"/v2/a/manifests/v1", 200, headers={b"authorization": junk}).user is None
    # what the access policy checked wins, even a failed login (anonymous)
    req = Req(b"GET", b"/v2/a/manifests/v1", creds)
    obs.begin(req)
    assert obs.observe(req, record(req, 401, user=None, noted="login")).user is None


def test_access_lines_carry_the_fields_in_text_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    obs = RegistryObserver(50, 3600)
    rec = run(obs, b"PUT", b"/v2/team/app/blobs/uploads/u-7?digest=sha256%3A" + b"a" * 64, 201,
              headers={b"authorization": b"Basic " + base64.b64encode(b"bob:hunter22")})
    for fmt in ("text", "json"):
        stream = io.StringIO()
        monkeypatch.setattr("sys.stderr", stream)
        logs.setup_logging(fmt)
        try:
            logs.access(rec)
            logs.flush_access()
        finally:
            logging.getLogger().handlers[:] = []
        line = stream.getvalue().strip()
        assert "hunter22" not in line and "Ym9i" not in line
        if fmt == "text":
            assert line.endswith(f"user=bob action=push repository=team/app reference={D1} upload=u-7"), line
        else:
            fields = json.loads(line)
            assert {k: fields[k] for k in ("user", "action", "repository", "reference", "upload")} == {
                "user": "bob", "action": "push", "repository": "team/app", "reference": D1, "upload": "u-7"}


# --- uploads -------------------------------------------------------------------------------


def test_uploads_started_completed_and_failed_by_reason() -> None:
    clock = Clock()
    obs = RegistryObserver(50, 600, clock)
    push_layer(obs, "team/app", "done")
    # aborted: the client went away mid-PATCH
    run(obs, b"POST", b"/v2/team/app/blobs/uploads/", 202, kept=b"gone")
    run(obs, b"PATCH", b"/v2/team/app/blobs/uploads/gone", 499, bytes_in=10)
    # cancelled
    run(obs, b"POST", b"/v2/team/app/blobs/uploads/", 202, kept=b"del")
    run(obs, b"DELETE", b"/v2/team/app/blobs/uploads/del", 204)
    # error: a wrong digest at the end; a 401 on the way (a fresh token) is no failure
    run(obs, b"POST", b"/v2/team/app/blobs/uploads/", 202, kept=b"bad")
    run(obs, b"PATCH", b"/v2/team/app/blobs/uploads/bad", 401)
    run(obs, b"PATCH", b"/v2/team/app/blobs/uploads/bad", 202, bytes_in=5)
    run(obs, b"PUT", b"/v2/team/app/blobs/uploads/bad?digest=" + D2.encode(), 400)
    # abandoned: opened, then nothing for the window; a long request in flight keeps another alive
    run(obs, b"POST", b"/v2/team/app/blobs/uploads/", 202, kept=b"left")
    run(obs, b"POST", b"/v2/team/app/blobs/uploads/", 202, kept=b"slow")
    slow = Req(b"PATCH", b"/v2/team/app/blobs/uploads/slow")
    obs.begin(slow)
    clock.now += 601
    obs.sweep()
    samples = scrape(obs)
    started = value(samples, "certproxy_registry_uploads_started_total", repository="team/app")
    assert started == 6
    assert value(samples, "certproxy_registry_uploads_completed_total", repository="team/app") == 1
    for reason in ("aborted", "cancelled", "error", "abandoned"):
        assert value(samples, "certproxy_registry_uploads_failed_total", repository="team/app",
                     reason=reason) == 1, reason
    assert value(samples, "certproxy_registry_uploads_in_progress") == 1
    obs.observe(slow, record(slow, 202, bytes_in=1 << 30, seconds=601))
    run(obs, b"PUT", b"/v2/team/app/blobs/uploads/slow?digest=" + D1.encode(), 201)
    samples = scrape(obs)
    assert value(samples, "certproxy_registry_uploads_completed_total", repository="team/app") == 2
    assert value(samples, "certproxy_registry_uploads_in_progress") == 0
    assert value(samples, "certproxy_registry_pushed_bytes_total", repository="team/app") == 1000 + 10 + 5 + (1 << 30)


def test_a_session_first_seen_mid_way_is_adopted_and_an_unknown_one_refused_is_not() -> None:
    obs = RegistryObserver(50, 3600)
    run(obs, b"PATCH", b"/v2/a/blobs/uploads/from-another-worker", 202)
    run(obs, b"PUT", b"/v2/a/blobs/uploads/from-another-worker?digest=" + D1.encode(), 201)
    run(obs, b"PATCH", b"/v2/a/blobs/uploads/never-was", 404)  # e.g. a probe for buffering
    samples = scrape(obs)
    assert value(samples, "certproxy_registry_uploads_started_total", repository="a") == 1
    assert value(samples, "certproxy_registry_uploads_completed_total", repository="a") == 1
    assert value(samples, "certproxy_registry_uploads_failed_total", repository="a", reason="error") == 0


def test_open_sessions_are_bounded() -> None:
    obs = RegistryObserver(50, 3600)
    for i in range(SESSIONS_MAX + 5):
        run(obs, b"POST", b"/v2/a/blobs/uploads/", 202, kept=b"s%d" % i)
    samples = scrape(obs)
    assert value(samples, "certproxy_registry_uploads_in_progress") == SESSIONS_MAX
    assert value(samples, "certproxy_registry_uploads_failed_total", repository="a", reason="abandoned") == 5


# --- bounded repository series ---------------------------------------------------------


def test_the_busiest_repositories_take_the_places_of_quieter_ones_without_a_counter_going_down() -> None:
    clock = Clock()
    obs = RegistryObserver(2, 3600, clock)
    for repo in ("r1", "r2", "r3"):
        run(obs, b"GET", b"/v2/%s/manifests/v1" % repo.encode(), 200, bytes_out=10)
    before = scrape(obs)
    assert value(before, "certproxy_registry_requests_total", action="pull", repository="r1", status="200") == 1
    assert value(before, "certproxy_registry_requests_total", action="pull", repository="other", status="200") == 1
    for _ in range(5):  # r3 becomes the busiest
        run(obs, b"GET", b"/v2/r3/manifests/v1", 200)
    run(obs, b"GET", b"/v2/r2/manifests/v1", 200)
    clock.now += REBALANCE + 1
    obs.sweep()
    run(obs, b"GET", b"/v2/r3/manifests/v1", 200)
    after = scrape(obs)
    assert value(after, "certproxy_registry_requests_total", action="pull", repository="r3", status="200") == 1
    assert ("certproxy_registry_requests_total",
            (("action", "pull"), ("repository", "r1"), ("status", "200"))) not in after  # dropped
    assert value(after, "certproxy_registry_requests_total", action="pull", repository="r2", status="200") == 2
    assert_monotonic(before, after)


def test_named_repositories_and_patterns() -> None:
    labels = RepositoryLabels(("library/*", "team/app"))
    assert [labels.label(r) for r in ("library/alpine", "team/app", "team/other", None)] == [
        "library/alpine", "team/app", "other", "-"]
    none = RepositoryLabels(0)
    assert none.label("anything") == "other"


# --- generated: the invariants ---------------------------------------------------------

METHODS = st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"]) | st.binary(max_size=8)
REPOS = st.sampled_from([b"a", b"b", b"team/app", b"lib/x", b"c", b"d", b"e"])
SESSIONS = st.sampled_from([b"s1", b"s2", b"s3", b"s4"]) | st.binary(max_size=12)
STATUSES = st.sampled_from([200, 201, 202, 204, 400, 401, 403, 404, 416, 499, 500, 502, 504]) | st.integers(0, 999)


@st.composite
def targets(draw: st.DrawFn) -> bytes:
    repo, session = draw(REPOS), draw(SESSIONS)
    return draw(st.sampled_from([
        b"/v2/%s/blobs/uploads/" % repo, b"/v2/%s/blobs/uploads/%s" % (repo, session),
        b"/v2/%s/blobs/uploads/%s?digest=sha256%%3A%s" % (repo, session, b"a" * 64),
        b"/v2/%s/manifests/v1" % repo, b"/v2/%s/blobs/%s" % (repo, D1.encode()), b"/v2/", b"/v2/_catalog",
        b"/token?scope=x",
    ])) if draw(st.booleans()) else draw(st.binary(max_size=80))


STEPS = st.lists(st.tuples(METHODS, targets(), STATUSES, st.none() | SESSIONS, st.integers(0, 1 << 40),
                           st.booleans(), st.floats(0, 4000), st.binary(max_size=40)), max_size=40)


def totals(samples: dict, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def assert_monotonic(before: dict, after: dict) -> None:
    for (name, labels), was in before.items():
        if name.endswith(("_total", "_bucket", "_count", "_sum")) and not name.endswith("_created"):
            now = after.get((name, labels))
            assert now is None or now >= was, (name, labels, was, now)


EXAMPLES = int(os.environ.get("CERTPROXY_FUZZ_EXAMPLES", "200"))


CHOSEN = st.integers(0, 3) | st.sampled_from([("team/*",), ("a", "lib/*"), ("*",)])


@given(STEPS, CHOSEN)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_generated_traffic_keeps_the_invariants(steps: list, chosen: int | tuple[str, ...]) -> None:
    clock = Clock()
    obs = RegistryObserver(chosen, 600, clock)
    top = chosen if isinstance(chosen, int) else 1000
    previous = collected(obs)
    previous_balance = 0.0
    for method, target, status, kept, size, begin, later, auth in steps:
        password = b"SECRET" + auth.hex().encode()
        header = b"Basic " + base64.b64encode(auth[:6] + b":" + password)  # any user name, forged ones too
        req = Req(method, target, {b"authorization": header}, kept)
        if begin:
            obs.begin(req)
        rec = obs.observe(req, record(req, status, bytes_in=size, bytes_out=size))
        assert rec.action in ("ping", "pull", "push", "delete", "catalog", "other")
        assert b"SECRET" not in repr(rec).encode() and header[6:].decode() not in repr(rec)
        assert rec.user is None or re.fullmatch(r"[\x21-\x7e]{1,128}", rec.user), rec.user
        clock.now += later
        obs.sweep()
        samples = collected(obs)
        assert_monotonic(previous, samples)
        repos = {dict(labels).get("repository") for (_, labels) in samples} - {None}
        assert len(repos - {"other", "-"}) <= top
        balance = (totals(samples, "certproxy_registry_uploads_started_total")
                   - totals(samples, "certproxy_registry_uploads_completed_total")
                   - totals(samples, "certproxy_registry_uploads_failed_total")
                   - value(samples, "certproxy_registry_uploads_in_progress"))
        gone = [key for key in previous if key not in samples]
        if gone:  # a repository lost its place: its series went with what they had counted
            assert later > REBALANCE or clock.now - 1000.0 > REBALANCE, gone
        else:
            assert balance == previous_balance  # every upload started is ended or in progress
        previous, previous_balance = samples, balance
    # whatever happened, every upload ends: nothing stays in progress past the window
    for _ in range(2):
        clock.now += 600 + 301
        obs.sweep()
    assert value(collected(obs), "certproxy_registry_uploads_in_progress") == 0


@pytest.fixture(autouse=True)
def _quiet_logging() -> Iterator[None]:
    handlers = logging.getLogger().handlers[:]
    yield
    logging.getLogger().handlers[:] = handlers


# --- what a client or an upstream may send ------------------------------------------------


def test_made_up_credentials_neither_raise_nor_forge_a_line() -> None:
    obs = RegistryObserver(50, 3600)
    nested = base64.urlsafe_b64encode(b"[" * 11000).rstrip(b"=")
    for token in (b"a." + nested + b".c", b"a." + b"x" * 5000 + b".c"):
        rec = run(obs, b"GET", b"/v2/a/manifests/v1", 200, headers={b"authorization": b"Bearer " + token})
        assert rec.user is None
    forged = json.dumps({"sub": 'x\n2099-01-01 00:00:00,000 INFO certproxy.access: 1.2.3.4 "DELETE /v2/p" 202'})
    token = b"e30." + base64.urlsafe_b64encode(forged.encode()).rstrip(b"=") + b".c2ln"
    rec = run(obs, b"GET", b"/v2/a/manifests/v1", 200, headers={b"authorization": b"Bearer " + token})
    assert rec.user is not None and "\n" not in rec.user and " " not in rec.user
    basic = {b"authorization": b"Basic " + base64.b64encode(b"mallory:pw")}
    assert run(obs, b"GET", b"/v2/a/manifests/v1", 404, headers=basic).user is None  # no success
    assert run(obs, b"GET", b"/admin", 200, headers=basic).user is None  # not the API


def test_made_up_repositories_and_statuses_get_no_series() -> None:
    obs = RegistryObserver(("team/*",), 3600)
    for i in range(3000):
        run(obs, b"GET", b"/v2/team/r%d/manifests/v1" % i, 401)
        run(obs, b"GET", b"/v2/team/r%d/manifests/v1" % i, 404)
    for i in range(1200):
        run(obs, b"PUT", b"/v2/team/s%d/manifests/v1" % i, 201)
    run(obs, b"GET", b"/v2/", 799)
    samples = collected(obs)
    repos = {dict(labels).get("repository") for (_, labels) in samples} - {None}
    assert len(repos - {"other", "-"}) == 1000  # the pattern's bound
    assert not any(r.startswith("team/r") for r in repos)
    statuses = {dict(labels).get("status") for (_, labels) in samples} - {None}
    assert statuses == {"401", "404", "201", "5xx"}


def test_a_request_the_api_refuses_does_not_keep_a_session_alive() -> None:
    clock = Clock()
    obs = RegistryObserver(50, 600, clock)
    run(obs, b"POST", b"/v2/a/blobs/uploads/", 202, kept=b"s1")
    for method in (b"HEAD", b"OPTIONS", b"TRACE"):
        run(obs, method, b"/v2/a/blobs/uploads/s1", 405)
    clock.now += 601
    obs.sweep()
    samples = collected(obs)
    assert value(samples, "certproxy_registry_uploads_failed_total", repository="a", reason="abandoned") == 1
    assert value(samples, "certproxy_registry_uploads_in_progress") == 0


def test_a_step_retried_after_a_server_error_is_one_upload() -> None:
    clock = Clock()
    obs = RegistryObserver(50, 3600, clock)
    run(obs, b"POST", b"/v2/a/blobs/uploads/", 202, kept=b"s1")
    run(obs, b"PATCH", b"/v2/a/blobs/uploads/s1", 503)
    run(obs, b"PATCH", b"/v2/a/blobs/uploads/s1", 429)
    run(obs, b"PATCH", b"/v2/a/blobs/uploads/s1", 202)
    run(obs, b"PUT", b"/v2/a/blobs/uploads/s1?digest=" + D1.encode(), 201)
    run(obs, b"POST", b"/v2/a/blobs/uploads/", 202, kept=b"s2")
    run(obs, b"PATCH", b"/v2/a/blobs/uploads/s2", 500)  # and nothing after it
    clock.now += 299
    obs.sweep()
    assert value(collected(obs), "certproxy_registry_uploads_failed_total", repository="a", reason="error") == 0
    clock.now += 2
    obs.sweep()
    samples = collected(obs)
    assert value(samples, "certproxy_registry_uploads_started_total", repository="a") == 2
    assert value(samples, "certproxy_registry_uploads_completed_total", repository="a") == 1
    assert value(samples, "certproxy_registry_uploads_failed_total", repository="a", reason="error") == 1
    assert value(samples, "certproxy_registry_uploads_in_progress") == 0


async def test_a_defect_in_the_observer_costs_neither_the_answer_nor_the_connection() -> None:
    from support.inproc import make_plane, settle

    class Broken:
        keep = b"docker-upload-uuid"

        def begin(self, request: object) -> None:
            pass

        def observe(self, request: object, record: AccessRecord) -> AccessRecord:
            raise RecursionError("made up")

    lines: list[AccessRecord] = []
    plane = make_plane(access_log=lines.append, observer=Broken())
    conn, client = plane.connect_client()
    for _ in range(2):
        conn.data_received(b"GET /v2/ HTTP/1.1\r\nHost: r.example\r\n\r\n")
        await settle()
        plane.upstream_protocol().data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await settle()
        assert client.take().startswith(b"HTTP/1.1 200 OK")
    assert len(lines) == 2 and lines[0].status == 200


# --- the settings -------------------------------------------------------------------------


def test_the_settings_and_their_mistakes() -> None:
    from certproxy.service.config import ConfigError, load_config

    routes = {"CERTPROXY_ROUTES": "443=http://ui:80,5000=http://registry:5000,5001=http://r2:5000"}
    assert load_config(routes).watched_ports == (5000,)
    assert load_config({**routes, "CERTPROXY_REGISTRY_PORTS": "5000,5001"}).watched_ports == (5000, 5001)
    assert load_config({"CERTPROXY_ROUTES": "443=http://ui:80"}).watched_ports == ()
    cfg = load_config({**routes, "CERTPROXY_METRICS_REPOSITORIES": "library/*, team/app"})
    assert cfg.metrics_repositories == ("library/*", "team/app")
    assert load_config({**routes, "CERTPROXY_METRICS_REPOSITORIES": "0"}).metrics_repositories == 0
    for name, raw, says in (
        ("CERTPROXY_REGISTRY_PORTS", "5002", "port 5002 is not a TLS route"),
        ("CERTPROXY_METRICS_REPOSITORIES", "Team/App", "'Team/App' is not a repository name"),
        ("CERTPROXY_METRICS_REPOSITORIES", "99999", "more than 10000"),
        ("CERTPROXY_METRICS_REPOSITORIES", " , ", "name repositories"),
        ("CERTPROXY_METRICS_UPLOAD_WINDOW", "soon", "not a number of seconds"),
        ("CERTPROXY_METRICS_REPOSITORY", "5", "did you mean CERTPROXY_METRICS_REPOSITORIES"),
    ):
        with pytest.raises(ConfigError) as err:
            load_config({**routes, name: raw})
        assert err.value.source == name and says in str(err.value), (name, str(err.value))


def test_doctors_variable_is_no_unknown_setting_of_serve() -> None:
    from certproxy.service.config import load_config

    assert load_config({"CERTPROXY_DOCTOR_CERTS_D": "/tmp/x"}).routes
