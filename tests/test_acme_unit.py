"""ACME without a CA: renewal policy tables, backoff, the lock, errors, the
manager's decisions with a fake issuer, and `replaces` + Retry-After against a
small ARI-speaking stand-in (Pebble 2.4 has no ARI endpoint)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import base64
import datetime as dt
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme
from acme import client as acme_lib_client
from acme import messages
from aiohttp import web
from cryptography import x509
from support.apps import AcmeStandIn
from support.procs import free_port
from support.pairs import issue, replace_atomic

from certproxy.acme_client import AcmeError, AcmeIssuer, AcmeSettings, ari_cert_id, policy
from certproxy.acme_client.errors import translate
from certproxy.acme_client.manager import CertManager
from certproxy.certs import FileStore
from certproxy.certs.pair import serial_hex
from certproxy.cli import _parser
from certproxy.cli.renew import renew_config
from certproxy.service.config import LETSENCRYPT_PRODUCTION, LETSENCRYPT_STAGING, load_config

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
DAY = dt.timedelta(days=1)


@pytest.mark.parametrize("lifetime, due_after", [
    (90 * DAY, 60 * DAY),                       # last third of 90 days
    (45 * DAY, 30 * DAY),                       # last third of 45 days
    (6 * DAY, 3 * DAY),                         # last half of a short-lived certificate
    (dt.timedelta(hours=160), dt.timedelta(hours=80)),
    (10 * DAY, dt.timedelta(days=10) * 2 / 3),  # ten days is not short-lived
])
def test_renewal_time_without_ari(lifetime: dt.timedelta, due_after: dt.timedelta) -> None:
    assert policy.renewal_time(T0, T0 + lifetime, now=T0) == T0 + due_after


def test_renewal_time_with_ari_window_and_guards() -> None:
    nb, na = T0, T0 + 90 * DAY
    # The CA's window wins while it lies within the lifetime, early or late.
    assert policy.renewal_time(nb, na, ari_time=T0 + 20 * DAY, now=T0) == T0 + 20 * DAY
    assert policy.renewal_time(nb, na, ari_time=T0 + 80 * DAY, now=T0) == T0 + 80 * DAY
    # A window after expiry is ignored: the certificate must not lapse.
    assert policy.renewal_time(nb, na, ari_time=T0 + 100 * DAY, now=T0) == T0 + 60 * DAY
    # A past window (revocation, incident) means now, but never a re-order within the hour.
    now = T0 + 5 * DAY
    assert policy.renewal_time(nb, na, ari_time=T0, now=now) == T0
    assert policy.renewal_time(nb, na, ari_time=T0, now=now,
                               last_order=now - dt.timedelta(minutes=10)) == now + dt.timedelta(minutes=50)
    # Bootstrap, wrong names, another directory: at once.
    assert policy.renewal_time(nb, na, must_replace=True, now=now) == now
    # The guard shrinks with the lifetime (a 20-second test certificate: 5 seconds).
    short = dt.timedelta(seconds=20)
    assert policy.renewal_time(T0, T0 + short, last_order=T0, now=T0) == T0 + short / 2
    assert policy.renewal_time(T0, T0 + short, must_replace=True, last_order=T0, now=T0) == \
        T0 + short / 4


def test_backoff_is_front_weighted_capped_jittered_and_honours_retry_after() -> None:
    delays = [policy.retry_delay(n) for n in range(1, 30)]
    assert delays[0] == 60 and delays == sorted(delays) and max(delays) == 21600
    assert policy.retry_delay(0) == 0
    assert 54 <= policy.retry_delay(1, jitter=0.0) <= policy.retry_delay(1, jitter=0.999) <= 66
    assert policy.retry_delay(3, minimum=1) == pytest.approx(2.0)  # schedule scaled for tests
    now = T0
    assert policy.next_attempt(now, 1) == now + dt.timedelta(seconds=60)
    later = now + dt.timedelta(hours=3)
    assert policy.next_attempt(now, 1, retry_after=later) == later
    assert policy.next_attempt(now, 9, retry_after=now + dt.timedelta(seconds=5)) == \
        now + dt.timedelta(seconds=3600)


def test_lock_is_exclusive_and_a_dead_holders_lock_expires(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    (tmp_path / "locks").mkdir()
    a = store.lock("reg.example.com", ttl=60)
    b = store.lock("reg.example.com", ttl=60)
    assert a.try_acquire() and not b.try_acquire()
    assert f"pid {os.getpid()}" in b.holder()
    assert not b.try_acquire()  # still held: asking again does not steal it
    b.release()  # not the holder: releases nothing
    assert a.path.exists()
    old = time.time() - 120  # the holder died two minutes ago
    os.utime(a.path, (old, old))
    assert b.try_acquire()
    a.release()  # the old holder's token no longer matches
    assert b.path.exists()
    b.release()
    assert not b.path.exists()


def test_one_solver_per_challenge_presents_its_answers_and_cleans_them_up(tmp_path: Path) -> None:
    from acme import challenges

    from certproxy.acme_client.settings import DnsSettings
    from certproxy.acme_client.solvers import Dns01, Http01, TlsAlpn01, solver_for
    from certproxy.acme_client.tlsalpn import TLSALPN01

    store = FileStore(tmp_path)
    store.ensure_layout()
    base = {"directory": "https://ca.test/dir", "domains": ("reg.example.com",)}
    http = solver_for(AcmeSettings(**base), store, lambda _: None)
    assert isinstance(http, Http01) and http.challenge is challenges.HTTP01
    chall = challenges.HTTP01(token=b"t" * 16)
    http.present("reg.example.com", chall, "token.thumbprint")
    http.wait_visible()
    assert store.read_challenge(chall.encode("token")) == b"token.thumbprint"
    http.clean_up()
    assert store.read_challenge(chall.encode("token")) is None
    alpn = solver_for(AcmeSettings(**base, challenge="tls-alpn-01"), store, lambda _: None)
    assert isinstance(alpn, TlsAlpn01) and alpn.challenge is TLSALPN01
    alpn.present("reg.example.com", TLSALPN01(token=b"t" * 16), "token.thumbprint")
    assert b"BEGIN CERTIFICATE" in (store.alpn_challenge("reg.example.com") or b"")
    alpn.clean_up()
    assert store.alpn_challenge("reg.example.com") is None
    dns = solver_for(AcmeSettings(**base, challenge="dns-01", dns=DnsSettings(server="127.0.0.1")), store,
                     lambda _: None)
    assert isinstance(dns, Dns01) and dns.challenge is challenges.DNS01
    dns.wait_visible()  # nothing presented: no DNS server asked
    dns.clean_up()


def test_staging_production_and_directory_selection() -> None:
    assert load_config({}).directory_url == LETSENCRYPT_PRODUCTION
    args = _parser().parse_args(["renew", "--staging", "--domain", "reg.example.com"])
    cfg = renew_config(args, {"CERTPROXY_ACME_DIRECTORY": "https://ca.internal/dir"})
    assert cfg.directory_url == LETSENCRYPT_STAGING == "https://acme-staging-v02.api.letsencrypt.org/directory"
    args = _parser().parse_args(["renew", "--directory", "https://ca.internal/dir", "--domain", "a.example"])
    assert renew_config(args, {}).directory_url == "https://ca.internal/dir"
    settings = renew_config(args, {}).acme_settings()
    assert settings.domains == ("a.example",) and settings.name == "a.example"


def test_ari_cert_id_matches_rfc_9773_and_acme(ca: trustme.CA) -> None:
    leaf = x509.load_pem_x509_certificate(ca.issue_cert("reg.example.com").cert_chain_pems[0].bytes())
    ours = ari_cert_id(leaf)
    assert ours == acme_lib_client._renewal_info_path_component(leaf)  # noqa: SLF001
    aki, serial = ours.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    assert int.from_bytes(base64.urlsafe_b64decode(pad(serial)), "big", signed=True) == leaf.serial_number
    assert len(base64.urlsafe_b64decode(pad(aki))) == 20


def test_errors_are_translated_with_their_data() -> None:
    now = T0
    err = messages.Error(typ="urn:ietf:params:acme:error:rateLimited", detail="too many certificates")
    out = translate(err, stage="order", headers={"Retry-After": "3600"}, now=now)
    assert str(out) == "order: urn:ietf:params:acme:error:rateLimited: too many certificates"
    assert out.retry_after == now + dt.timedelta(hours=1) and not out.permanent
    rejected = translate(messages.Error(typ="urn:ietf:params:acme:error:rejectedIdentifier",
                                        detail="policy forbids"), stage="order")
    assert rejected.permanent
    unauthorized = translate(messages.Error(typ="urn:ietf:params:acme:error:unauthorized",
                                            detail="x"), stage="challenge")
    assert not unauthorized.permanent
    down = translate(requests.exceptions.ConnectionError("refused"), stage="account")
    assert str(down).startswith("account: cannot reach the ACME server")
    date = translate(err, stage="order", headers={"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"})
    assert date.retry_after == dt.datetime(2026, 10, 21, 7, 28, tzinfo=dt.timezone.utc)


class FakeIssuer:
    """A stand-in for the CA in unit tests: issues from a trustme CA, or fails on demand."""

    def __init__(self, ca: trustme.CA) -> None:
        self.ca = ca
        self.account_uri = "https://ca.test/acct/1"
        self.calls: list[dict[str, Any]] = []
        self.fail: AcmeError | None = None

    def issue(self, domains: tuple[str, ...], *, replaces: str | None = None,
              progress: Any = None) -> tuple[bytes, bytes]:
        self.calls.append({"domains": domains, "replaces": replaces})
        if self.fail:
            raise self.fail
        pair = issue(self.ca, *domains)
        return pair.chain, pair.key

    def offers_ari(self) -> bool:
        return False

    def renewal_info(self, cert_pem: bytes) -> tuple[dt.datetime | None, dt.datetime]:
        raise AssertionError("not an ARI directory")


def _manager(tmp_path: Path, ca: trustme.CA, **kw: Any) -> tuple[CertManager, FakeIssuer, FileStore]:
    store = FileStore(tmp_path)
    store.ensure_layout()
    settings = AcmeSettings(directory="https://ca.test/dir", domains=("reg.example.com", "ui.example.com"),
                            retry_min=1, **kw)
    fake = FakeIssuer(ca)
    return CertManager(store, settings, fake, jitter=lambda: 0.5), fake, store  # type: ignore[arg-type]


async def test_manager_issues_when_missing_then_waits_until_due(no_blocking: None, tmp_path: Path, ca: trustme.CA) -> None:
    manager, fake, store = await asyncio.to_thread(_manager, tmp_path, ca)
    await asyncio.to_thread(store.ensure_bootstrap, ("reg.example.com", "ui.example.com"))
    next_check = await manager.maintain()
    assert len(fake.calls) == 1 and fake.calls[0]["domains"] == ("reg.example.com", "ui.example.com")
    pair = store.load_live("reg.example.com")
    assert store.live_meta("reg.example.com")["directory"] == "https://ca.test/dir"
    assert manager.status.last_success and manager.status.last_error is None
    assert next_check > T0.replace(year=2026) and manager.status.next_renewal > pair.not_before
    await manager.maintain()
    assert len(fake.calls) == 1  # not due: no second order
    assert not list((tmp_path / "locks").iterdir())


@pytest.mark.parametrize("setup, reason", [
    (lambda store, ca: replace_atomic(store.root / "live" / "reg.example.com", issue(ca, "reg.example.com")),
     "does not cover ui.example.com"),
    (lambda store, ca: store.write_live("reg.example.com", *(lambda p: (p.chain, p.key))(
        issue(ca, "reg.example.com", "ui.example.com")), {"directory": "https://other.test/dir"}),
     "another ACME directory"),
])
async def test_manager_replaces_certificates_that_do_not_fit(no_blocking: None, setup, reason: str, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                              ca: trustme.CA) -> None:
    manager, fake, store = await asyncio.to_thread(_manager, tmp_path, ca)
    await asyncio.to_thread(setup, store, ca)  # the test's set-up, off the loop
    decision = await asyncio.to_thread(manager.decide)  # blocking: maintain() runs it in a thread too
    assert reason in decision.reason and decision.due_at <= manager.clock()
    await manager.maintain()
    assert len(fake.calls) == 1
    assert store.live_meta("reg.example.com")["directory"] == "https://ca.test/dir"


async def test_manager_backs_off_stops_on_permanent_errors_and_keeps_the_pair(no_blocking: None, 
        tmp_path: Path, ca: trustme.CA) -> None:
    manager, fake, store = await asyncio.to_thread(_manager, tmp_path, ca)
    now = [dt.datetime.now(dt.timezone.utc)]
    manager.clock = lambda: now[0]  # the schedule follows this clock, not the machine's speed
    fake.fail = AcmeError("order: urn:ietf:params:acme:error:serverInternal: oops")
    await manager.maintain()
    assert manager.status.failures == 1 and "serverInternal" in manager.status.last_error
    assert manager.status.next_attempt == now[0] + dt.timedelta(seconds=1)  # retry_min, half jitter
    now[0] += dt.timedelta(seconds=0.9)
    await manager.maintain()  # inside the backoff: no new order
    assert len(fake.calls) == 1
    fake.fail = AcmeError("order: urn:ietf:params:acme:error:rejectedIdentifier: no", permanent=True)
    await manager.maintain(force=True)
    assert manager.status.blocked
    now[0] += dt.timedelta(seconds=1.2)
    await manager.maintain()
    assert len(fake.calls) == 2  # blocked: no retries until the configuration changes
    assert manager.status.next_attempt is None  # blocked has no next attempt
    assert not (tmp_path / "live" / "reg.example.com").exists()


async def test_manager_skips_while_another_process_holds_the_lock(no_blocking: None, tmp_path: Path, ca: trustme.CA) -> None:
    manager, fake, store = await asyncio.to_thread(_manager, tmp_path, ca)
    other = store.lock("reg.example.com")
    assert other.try_acquire()
    await manager.maintain()
    assert fake.calls == []
    other.release()
    await manager.maintain()
    assert len(fake.calls) == 1


class AriStandIn(AcmeStandIn):
    """A minimal ACME directory with renewalInfo, answering newOrder with rateLimited."""

    def __init__(self, window: tuple[dt.datetime, dt.datetime]) -> None:
        super().__init__()
        self.window = window
        self.ari_ids: list[str] = []

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/ari/{id}", self.ari)
        router.add_post("/order", self.order)

    def extra_directory(self) -> dict[str, str]:
        return {"renewalInfo": self.base + "/ari"}

    async def ari(self, request: web.Request) -> web.Response:
        self.ari_ids.append(request.match_info["id"])
        start, end = self.window
        return web.json_response({"suggestedWindow": {"start": start.isoformat().replace("+00:00", "Z"),
                                                      "end": end.isoformat().replace("+00:00", "Z")}},
                                 headers={"Retry-After": "21600"})

    async def order(self, request: web.Request) -> web.Response:
        await self.record_order(request)
        return web.json_response(
            {"type": "urn:ietf:params:acme:error:rateLimited",
             "detail": "too many certificates (5) already issued for this exact set of identifiers"},
            status=429, content_type="application/problem+json",
            headers={**self.nonce_headers(), "Retry-After": "3600"})


async def test_renewal_names_the_certificate_it_replaces_and_honours_retry_after(no_blocking: None, 
        tmp_path: Path, ca: trustme.CA) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    stand_in = AriStandIn((now - dt.timedelta(hours=2), now - dt.timedelta(hours=1)))
    directory = await stand_in.start()
    try:
        store = FileStore(tmp_path)
        pair = await asyncio.to_thread(issue, ca, "reg.example.com")

        def set_up() -> None:  # the test's, off the loop
            store.ensure_layout()
            store.write_live("reg.example.com", pair.chain, pair.key,
                             {"directory": directory, "issued_at": (now - DAY).isoformat()})

        await asyncio.to_thread(set_up)
        settings = AcmeSettings(directory=directory, domains=("reg.example.com",))
        manager = CertManager(store, settings, AcmeIssuer(store, settings), jitter=lambda: 0.5)
        await manager.maintain()
        leaf = x509.load_pem_x509_certificate(pair.chain)
        assert stand_in.ari_ids == [ari_cert_id(leaf)]
        assert manager.status.ari is True and manager.status.reason == "the CA's renewal window"
        assert len(stand_in.orders) == 1
        assert stand_in.orders[0]["replaces"] == ari_cert_id(leaf)
        assert stand_in.orders[0]["identifiers"] == [{"type": "dns", "value": "reg.example.com"}]
        assert manager.status.last_error.startswith(
            "order: urn:ietf:params:acme:error:rateLimited: too many certificates")
        wait = (manager.status.next_attempt - dt.datetime.now(dt.timezone.utc)).total_seconds()
        assert 3500 < wait <= 3600  # the CA's Retry-After, not the 60-second first retry
        assert store.load_live("reg.example.com").serial == serial_hex(leaf.serial_number)
    finally:
        await stand_in.stop()


@pytest.mark.parametrize("spread, due_after", [
    (0.0, 60 * DAY), (0.5, 67 * DAY + dt.timedelta(hours=12)), (0.999999, 75 * DAY - dt.timedelta(seconds=1)),
])
def test_renewal_is_spread_over_the_first_half_of_the_period(spread: float, due_after: dt.timedelta) -> None:
    due = policy.renewal_time(T0, T0 + 90 * DAY, spread=spread, now=T0)
    assert abs(due - (T0 + due_after)) < dt.timedelta(seconds=2)
    # ARI windows are random already: the spread does not move them.
    assert policy.renewal_time(T0, T0 + 90 * DAY, ari_time=T0 + 50 * DAY, spread=spread, now=T0) == T0 + 50 * DAY


def test_the_renewal_spread_is_drawn_once_and_shared_by_every_replica(tmp_path: Path) -> None:
    stores = [FileStore(tmp_path) for _ in range(3)]
    stores[0].ensure_layout()
    values = {s.renewal_spread() for s in stores}
    assert len(values) == 1 and 0.0 <= values.pop() < 1.0
    assert json.loads((tmp_path / "installation.json").read_text())["renewal_spread"] == stores[1].renewal_spread()


async def test_a_configuration_change_is_not_held_back_by_the_reorder_guard(
        no_blocking: None, tmp_path: Path, ca: trustme.CA) -> None:
    manager, fake, store = await asyncio.to_thread(_manager, tmp_path, ca)
    just_now = (manager.clock() - dt.timedelta(minutes=1)).isoformat()
    pair, small = await asyncio.to_thread(
        lambda: (issue(ca, "reg.example.com", "ui.example.com"), issue(ca, "reg.example.com")))
    # The pairs are written off the loop (the test's set-up), and decide() runs in a thread as
    # maintain() runs it.
    # Issued a minute ago by another directory (staging -> production): a new request, at once.
    await asyncio.to_thread(store.write_live, "reg.example.com", pair.chain, pair.key,
                            {"directory": "https://staging.test/dir", "issued_at": just_now,
                             "domains": ["reg.example.com", "ui.example.com"]})
    assert (await asyncio.to_thread(manager.decide)).due_at <= manager.clock()
    # Issued a minute ago for fewer names: a new request, at once.
    await asyncio.to_thread(store.write_live, "reg.example.com", pair.chain, pair.key,
                            {"directory": "https://ca.test/dir", "issued_at": just_now,
                             "domains": ["reg.example.com"]})
    await asyncio.to_thread(store.write_live, "reg.example.com", small.chain, small.key,
                            {"directory": "https://ca.test/dir", "issued_at": just_now,
                             "domains": ["reg.example.com"]})
    assert (await asyncio.to_thread(manager.decide)).due_at <= manager.clock()
    # The same request answered with a certificate that still misses a name: held back,
    # and the reason says until when.
    await asyncio.to_thread(store.write_live, "reg.example.com", small.chain, small.key,
                            {"directory": "https://ca.test/dir", "issued_at": just_now,
                             "domains": ["reg.example.com", "ui.example.com"]})
    decision = await asyncio.to_thread(manager.decide)
    assert decision.due_at > manager.clock() and "held back until" in decision.reason


async def test_every_replica_follows_the_store_for_its_status(no_blocking: None, tmp_path: Path, ca: trustme.CA) -> None:
    one, fake, store = await asyncio.to_thread(_manager, tmp_path, ca)
    other = CertManager(store, one.settings, FakeIssuer(ca), jitter=lambda: 0.5)  # type: ignore[arg-type]
    await one.maintain()
    await other.maintain()  # what another replica wrote
    assert len(fake.calls) == 1
    assert other.status.last_success == one.status.last_success is not None
    assert other.status.next_renewal == one.status.next_renewal


async def test_a_store_change_wakes_the_maintenance_loop(no_blocking: None, tmp_path: Path, ca: trustme.CA) -> None:
    manager, fake, store = await asyncio.to_thread(_manager, tmp_path, ca)
    calls: list[float] = []
    real = manager.maintain

    async def counting(force: bool = False, fresh_since: Any = None) -> dt.datetime:
        calls.append(time.monotonic())
        return await real(force, fresh_since)

    manager.maintain = counting  # type: ignore[method-assign]
    task = asyncio.create_task(manager.run())
    try:
        deadline = time.monotonic() + 30
        while not (len(calls) == 1 and manager.status.next_renewal) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert len(calls) == 1 and manager.status.next_renewal
        manager.store_changed()
        while len(calls) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert len(calls) == 2  # woken at once, not after the hours it would sleep
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- the ACME client in a child process (certproxy serve) ----------------------------------


def test_serving_process_never_imports_the_acme_stack() -> None:
    """``certproxy serve`` reaches the ACME client only through ChildIssuer: acme, josepy,
    requests and dnspython stay out of the serving process (about 9 MiB resident)."""
    code = ("import sys, certproxy.service.server, certproxy.acme_client.child, certproxy.cli.serve; "
            "print(sorted(m for m in ('acme', 'josepy', 'requests', 'dns', 'lexicon') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_child_issuer_reports_the_clients_error_in_one_line(tmp_path: Path) -> None:
    from certproxy.acme_client.child import ChildIssuer

    port = free_port()  # nothing listens there
    settings = AcmeSettings(directory=f"https://127.0.0.1:{port}/dir", domains=("reg.example.com",))
    issuer = ChildIssuer(FileStore(tmp_path / "store"), settings)
    lines: list[str] = []
    with pytest.raises(AcmeError) as err:
        issuer.issue(("reg.example.com",), progress=lines.append)
    assert str(err.value).startswith("account: cannot reach the ACME server") and "\n" not in str(err.value)
    assert any(line.startswith("account: new ECDSA P-256 key") for line in lines)  # progress streamed


def test_child_exits_when_the_server_goes_away(tmp_path: Path) -> None:
    """An order in a child whose parent died (its standard input closes) is not finished."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts, never answers: the child waits on the directory
    port = silent.getsockname()[1]
    request = {"op": "issue", "args": {"domains": ["reg.example.com"], "replaces": None},
               "store": str(tmp_path / "store"),
               "settings": {"directory": f"https://127.0.0.1:{port}/dir", "domains": ["reg.example.com"],
                            "email": None, "ca_bundle": None, "eab_kid": None, "eab_hmac_key": None,
                            "key_type": "ec256", "profile": None, "retry_min": 60.0, "network_timeout": 30.0,
                            "challenge": "http-01", "dns": None}}
    child = subprocess.Popen([sys.executable, "-m", "certproxy.acme_client.child"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdin is not None
        child.stdin.write(json.dumps(request) + "\n")
        child.stdin.flush()
        time.sleep(1.0)
        assert child.poll() is None  # waiting on the silent directory
        child.stdin.close()
        assert child.wait(5) == 3
    finally:
        if child.poll() is None:
            child.kill()
        silent.close()


# --- IP addresses (RFC 8738) --------------------------------------------------------------

def test_a_csr_names_addresses_as_ip_addresses_beside_dns_names() -> None:
    import ipaddress

    from certproxy.acme_client.client import make_csr
    from certproxy.certs.keys import new_private_key
    csr = x509.load_pem_x509_csr(make_csr(new_private_key("ec256"), ("reg.example.com", "192.0.2.7", "::1")))
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["reg.example.com"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.7"),
                                                       ipaddress.ip_address("::1")]


@pytest.mark.parametrize("configured, offered, addresses, chosen, why", [
    (None, {"classic": {}, "shortlived": {}}, ("192.0.2.7",), "shortlived", "names the IP address 192.0.2.7"),
    (None, {"classic": {}, "shortlived": {}}, (), None, "the CA's default"),
    ("classic", {"classic": {}, "shortlived": {}}, ("192.0.2.7",), "classic", "CERTPROXY_ACME_PROFILE"),
    ("tlsserver", {"classic": {}}, (), None, "does not offer CERTPROXY_ACME_PROFILE=tlsserver"),
    (None, {"classic": {}}, ("192.0.2.7",), None, "offers no shortlived profile"),
    (None, {}, ("192.0.2.7",), None, "offers no profiles"),
])
def test_the_profile_is_shortlived_for_an_address_unless_configured(
        configured: str | None, offered: dict, addresses: tuple[str, ...], chosen: str | None, why: str) -> None:
    from certproxy.acme_client.client import choose_profile
    profile, reason = choose_profile(configured, offered, addresses)
    assert profile == chosen and why in reason


def test_tls_alpn_01_for_an_address_answers_its_reverse_dns_name() -> None:
    import ipaddress

    from certproxy.certs.alpn import ACME_IDENTIFIER, sni_for, validation_certificate
    assert sni_for("192.0.2.7") == "7.2.0.192.in-addr.arpa"
    assert sni_for("::1") == "1." + "0." * 31 + "ip6.arpa"
    assert sni_for("reg.example.com") == "reg.example.com"
    pem = validation_certificate("::1", "token.thumbprint", dt.datetime.now(dt.timezone.utc))
    cert = x509.load_pem_x509_certificate(pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.IPAddress(ipaddress.ip_address("::1"))]
    assert cert.extensions.get_extension_for_oid(ACME_IDENTIFIER).critical


def test_the_store_keeps_an_address_challenge_under_the_name_the_ca_sends(tmp_path: Path) -> None:
    from acme import challenges

    from certproxy.acme_client.solvers import solver_for
    from certproxy.acme_client.tlsalpn import TLSALPN01
    store = FileStore(tmp_path)
    store.ensure_layout()
    settings = AcmeSettings(directory="https://ca.test/dir", domains=("::1",), challenge="tls-alpn-01")
    solver = solver_for(settings, store, lambda _: None)
    solver.present("::1", TLSALPN01(token=b"x" * 32), "key.auth")
    assert store.alpn_challenge(ipaddress_reverse("::1")) is not None
    solver.clean_up()
    assert store.alpn_challenge(ipaddress_reverse("::1")) is None
    assert isinstance(solver_for(settings, store, print, "http-01").challenge(), challenges.HTTP01)


def ipaddress_reverse(address: str) -> str:
    import ipaddress
    return ipaddress.ip_address(address).reverse_pointer


@pytest.mark.parametrize("env, message", [
    # the store's folder name holds ::1; a scoped address is refused naming the setting
    ({"CERTPROXY_DOMAINS": "fe80::1%eth0", "CERTPROXY_ACME": "off"}, "CERTPROXY_DOMAINS: 'fe80::1%eth0': a scoped"),
    ({"CERTPROXY_DOMAINS": "reg.example.com,2001:db8::1::2"},
     "CERTPROXY_DOMAINS: '2001:db8::1::2' is not a domain name or an IP address"),
    # dns-01 cannot prove an address; without a plain-HTTP listener or a TLS route on 443 nothing can
    ({"CERTPROXY_DOMAINS": "*.example.com,192.0.2.7", "CERTPROXY_CHALLENGE": "dns-01",
      "CERTPROXY_DNS_SERVER": "ns1.example.com", "CERTPROXY_HTTP_PORT": "off",
      "CERTPROXY_ROUTES": "5000=http://registry:5000"},
     "CERTPROXY_CHALLENGE: dns-01 cannot prove the IP address 192.0.2.7"),
])
def test_address_mistakes_stop_start_up_naming_the_setting(env: dict[str, str], message: str) -> None:
    from certproxy.service.config import ConfigError
    with pytest.raises(ConfigError) as caught:
        load_config(env)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_addresses_are_kept_in_canonical_form_and_dns_01_lends_them_http_01() -> None:
    cfg = load_config({"CERTPROXY_DOMAINS": "[::1],0:0::2,192.0.2.7"})
    assert cfg.domains == ("::1", "::2", "192.0.2.7")
    assert cfg.acme_settings().name == "::1" and cfg.acme_settings().addresses == cfg.domains
    mixed = load_config({"CERTPROXY_DOMAINS": "*.example.com,192.0.2.7", "CERTPROXY_CHALLENGE": "dns-01",
                         "CERTPROXY_DNS_SERVER": "ns1.example.com"}).acme_settings()
    assert mixed.challenge_for("*.example.com") == "dns-01"
    assert mixed.challenge_for("192.0.2.7") == "http-01"
    # no plain-HTTP listener: tls-alpn-01 on the route of port 443, whose listener answers it
    cfg = load_config({"CERTPROXY_DOMAINS": "*.example.com,192.0.2.7", "CERTPROXY_CHALLENGE": "dns-01",
                       "CERTPROXY_DNS_SERVER": "ns1.example.com", "CERTPROXY_HTTP_PORT": "off"})
    assert cfg.acme_settings().challenge_for("192.0.2.7") == "tls-alpn-01"
    assert cfg.acme_settings().challenge_for("*.example.com") == "dns-01"
    assert cfg.alpn_ports == (443,)


class ProfileStandIn(AcmeStandIn):
    """An ACME directory that offers profiles, as Let's Encrypt's does (Pebble 2.4 offers
    none): it records each newOrder and refuses it, which is all the choice needs."""

    async def directory(self, request: web.Request) -> web.Response:
        answer = await super().directory(request)
        body = json.loads(answer.body)  # type: ignore[arg-type]
        body["meta"] = {"profiles": {"classic": "90 days", "shortlived": "160 hours",
                                     "tlsserver": "no client auth"}}
        return web.json_response(body)

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/order", self.order)

    async def order(self, request: web.Request) -> web.Response:
        await self.record_order(request)
        return web.json_response(
            {"type": "urn:ietf:params:acme:error:rejectedIdentifier", "detail": "stand-in: recorded"},
            status=400, content_type="application/problem+json", headers=self.nonce_headers())


@pytest.mark.parametrize("domains, configured, sent, said", [
    (("192.0.2.7",), None, "shortlived", "profile shortlived (the order names the IP address 192.0.2.7)"),
    (("reg.example.com", "2001:db8::7"), None, "shortlived", "profile shortlived (the order names the IP"),
    (("192.0.2.7",), "classic", "classic", "profile classic (CERTPROXY_ACME_PROFILE)"),
    (("reg.example.com",), None, None, "profile none (the CA's default)"),
])
async def test_the_shortlived_profile_is_ordered_for_addresses_against_a_ca_offering_profiles(
        no_blocking: None, tmp_path: Path, domains: tuple[str, ...], configured: str | None,
        sent: str | None, said: str) -> None:
    stand_in = ProfileStandIn()
    directory = await stand_in.start()
    try:
        store = FileStore(tmp_path)
        await asyncio.to_thread(store.ensure_layout)
        settings = AcmeSettings(directory=directory, domains=domains, profile=configured)
        said_lines: list[str] = []
        issuer = AcmeIssuer(store, settings, progress=said_lines.append)
        with pytest.raises(AcmeError) as caught:
            await asyncio.to_thread(issuer.issue, domains)
        assert "rejectedIdentifier" in str(caught.value)
        order = stand_in.orders[0]
        assert order.get("profile") == sent
        assert order["identifiers"] == [
            {"type": "ip" if ":" in d or d[0].isdigit() else "dns", "value": d} for d in domains]
        assert any(said in line for line in said_lines), said_lines
    finally:
        await stand_in.stop()


# --- short lifetimes: retries and wake-ups scaled with the certificate's lifetime ------------

@pytest.mark.parametrize("lifetime, longest_step, idle", [
    (90 * DAY, 21600, dt.timedelta(hours=12)),                       # as before: 6 h, 12 h
    (dt.timedelta(hours=160), 6000, dt.timedelta(hours=2.5)),      # 1 h 40 min, 2.5 h
    (dt.timedelta(seconds=24), 1.0, dt.timedelta(seconds=1)),       # test certificates: 1 s floors
])
def test_retry_steps_and_idle_wake_ups_scale_with_the_lifetime(
        lifetime: dt.timedelta, longest_step: float, idle: dt.timedelta) -> None:
    steps = [policy.retry_delay(n, lifetime=lifetime) for n in range(1, 30)]
    assert max(steps) == pytest.approx(longest_step) and steps == sorted(steps)
    assert policy.idle_limit(lifetime) == idle
    assert policy.idle_limit(None) == dt.timedelta(hours=12)
    assert policy.retry_delay(1, lifetime=90 * DAY) == 60  # the front of the schedule is kept


async def test_a_failing_renewal_of_a_160_hour_certificate_is_retried_many_times_before_expiry(
        no_blocking: None, tmp_path: Path, ca: trustme.CA, measure: Any) -> None:
    lifetime = dt.timedelta(hours=160)
    start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    not_before = start - lifetime * 3 / 4  # past any renewal time (half the lifetime, spread)

    def set_up() -> CertManager:
        store = FileStore(tmp_path)
        store.ensure_layout()
        pair = issue(ca, "192.0.2.7", not_before=not_before, not_after=not_before + lifetime)
        store.write_live("192.0.2.7", pair.chain, pair.key,
                         {"directory": "https://ca.test/dir", "issued_at": not_before.isoformat(),
                          "domains": ["192.0.2.7"]})
        settings = AcmeSettings(directory="https://ca.test/dir", domains=("192.0.2.7",))
        fake = FakeIssuer(ca)
        fake.fail = AcmeError("order: urn:ietf:params:acme:error:connection: the CA is down")
        return CertManager(store, settings, fake, jitter=lambda: 0.5)  # type: ignore[arg-type]

    manager = await asyncio.to_thread(set_up)
    now = [start]
    manager.clock = lambda: now[0]
    expiry = not_before + lifetime
    attempts: list[dt.datetime] = []
    while now[0] < expiry:
        before = manager.status.attempts
        when = await manager.maintain()
        if manager.status.attempts > before:
            attempts.append(now[0])
        assert when > now[0]
        now[0] = when
    gaps = [(b - a).total_seconds() for a, b in zip(attempts, attempts[1:])]
    window_h = (expiry - start).total_seconds() / 3600
    unscaled = _attempts_within(expiry - start, None)
    measure("160-hour certificate, CA down for the last 40 h: attempts with / without scaling",
            f"{len(attempts)} / {unscaled} in {window_h:.0f} h")
    assert max(gaps) <= 6000 * 1.1 + 1  # never more than 1 h 40 min (+ jitter) apart
    assert len(attempts) >= 25 > unscaled
    assert manager.status.last_error and "the CA is down" in manager.status.last_error


def _attempts_within(window: dt.timedelta, lifetime: dt.timedelta | None) -> int:
    spent, n = 0.0, 0
    while spent < window.total_seconds():
        n += 1
        spent += policy.retry_delay(n, lifetime=lifetime)
    return n


@pytest.mark.parametrize("days, shown", [
    (89.52, "89.5d"), (5.93, "5.9d"), (1.5, "36h00m"), (0.3, "7h12m"), (0.01, "14m"), (0.0, "expired")])
def test_status_shows_the_last_two_days_of_a_lifetime_in_hours(days: float, shown: str) -> None:
    from certproxy.cli.status import time_left
    assert time_left(days) == shown


@pytest.mark.parametrize("domains, noted", [
    (("reg.example.com", "10.0.0.5"), "10.0.0.5"), (("192.168.1.10",), "192.168.1.10"),
    (("fd00::5",), "fd00::5"), (("8.8.8.8",), None), (("2606:4700::1111",), None), (("reg.example.com",), None)])
def test_a_private_address_is_noted_at_start_up_when_acme_is_on(domains: tuple[str, ...], noted: str | None) -> None:
    note = AcmeSettings(directory="https://ca.test/dir", domains=domains).private_address_note()
    assert (note is None) if noted is None else note.startswith(f"{noted} is not a public address")
    if note:
        assert "CERTPROXY_LOCAL_CA=1" in note and "\n" not in note
    assert AcmeSettings(directory="certproxy-local-ca", domains=domains).private_address_note() is None


async def test_with_no_certificate_to_read_an_address_order_retries_at_the_short_lived_pace(
        no_blocking: None, tmp_path: Path, ca: trustme.CA) -> None:
    """The first order for an address, or a restart with its certificate expired: no
    lifetime to read, and a public CA's certificate for an address lives 160 hours."""
    def set_up() -> CertManager:
        store = FileStore(tmp_path)
        store.ensure_layout()
        settings = AcmeSettings(directory="https://ca.test/dir", domains=("192.0.2.7",))
        fake = FakeIssuer(ca)
        fake.fail = AcmeError("order: urn:ietf:params:acme:error:connection: the CA is down")
        return CertManager(store, settings, fake, jitter=lambda: 0.5)  # type: ignore[arg-type]

    manager = await asyncio.to_thread(set_up)
    start = dt.datetime.now(dt.timezone.utc)
    now = [start]
    manager.clock = lambda: now[0]
    gaps = []
    for _ in range(30):
        when = await manager.maintain()
        gaps.append((when - now[0]).total_seconds())
        now[0] = when
    assert manager.lifetime == dt.timedelta(hours=160)
    assert max(gaps) <= 160 * 3600 / 96 + 1, gaps  # not the 6-hour steps of a 90-day certificate


def test_address_choices_for_dns_01_and_what_listens_for_tls_alpn_01() -> None:
    names_only = load_config({"CERTPROXY_DOMAINS": "*.example.com,example.com", "CERTPROXY_CHALLENGE": "dns-01",
                              "CERTPROXY_DNS_SERVER": "ns1.example.com", "CERTPROXY_HTTP_PORT": "off"})
    assert names_only.alpn_ports == ()  # no address: nothing to answer on the TLS ports
    mixed = load_config({"CERTPROXY_DOMAINS": "*.example.com,192.0.2.7", "CERTPROXY_CHALLENGE": "dns-01",
                         "CERTPROXY_DNS_SERVER": "ns1.example.com", "CERTPROXY_HTTP_PORT": "off"})
    assert mixed.alpn_ports == (443,)  # the route of 443 only, not 5000
    alpn = load_config({"CERTPROXY_DOMAINS": "reg.example.com", "CERTPROXY_CHALLENGE": "tls-alpn-01"})
    assert alpn.alpn_ports == (443, 5000)


@pytest.mark.parametrize("domain, says", [
    ("010.0.0.1", "is neither a domain name"),
    ("256.1.1.1", "is neither a domain name"),
    ("reg.example.com,10.0.0.300", "is neither a domain name"),
    ("::ffff:1.2.3.4", "an IPv4-mapped address: name 1.2.3.4 instead"),
    ("::", "an unspecified or multicast address"),
    ("0.0.0.0", "an unspecified or multicast address"),
    ("ff02::1", "an unspecified or multicast address"),
])
def test_numbers_that_are_no_address_and_addresses_no_client_dials_are_refused(domain: str, says: str) -> None:
    from certproxy.service.config import ConfigError
    with pytest.raises(ConfigError) as caught:
        load_config({"CERTPROXY_DOMAINS": domain, "CERTPROXY_ACME": "off"})
    assert caught.value.source == "CERTPROXY_DOMAINS" and says in str(caught.value), str(caught.value)


def test_an_address_folder_in_another_spelling_is_reported_not_ignored(tmp_path: Path, ca: trustme.CA) -> None:
    store = FileStore(tmp_path)
    store.ensure_layout()
    for name in ("2001:DB8::1", "0:0::2"):
        folder = tmp_path / "live" / name
        folder.mkdir(parents=True)
        pair = issue(ca, "2001:db8::1")
        (folder / "fullchain.pem").write_bytes(pair.chain)
        (folder / "privkey.pem").write_bytes(pair.key)
    errors = store.misnamed_live()
    assert sorted(errors) == [str(tmp_path / "live" / "0:0::2"), str(tmp_path / "live" / "2001:DB8::1")]
    assert "named 2001:db8::1" in errors[str(tmp_path / "live" / "2001:DB8::1")]


def test_the_trust_recipe_puts_an_ipv6_address_in_brackets(tmp_path: Path) -> None:
    from certproxy.service.trust import trust_recipe
    cfg = load_config({"CERTPROXY_DOMAINS": "::1,reg.example.com", "CERTPROXY_LOCAL_CA": "1",
                       "CERTPROXY_STORE": str(tmp_path)})
    store = FileStore(tmp_path)
    store.ensure_layout()
    local, _ = store.ensure_local_ca(cfg.cert_domains, dt.datetime.now(dt.timezone.utc))
    lines = trust_recipe(local, cfg)
    assert any("/etc/docker/certs.d/[::1]:5000/ca.crt" in line for line in lines), lines
    assert any("/etc/containers/certs.d/[::1]:PORT/" in line for line in lines), lines
