"""The certificate lifecycle against the real Pebble: a CA that forgets the
account, configuration changes ordered at once, a certificate written while a
replica starts, three replicas on one store, two forced renewals at once, and
`certproxy status` showing a failing renewal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import trustme

from certproxy.certs.pair import serial_hex
from conftest import write_live
from support.pebble import Pebble, start_pebble
from support.procs import CertproxyProcess, free_port, stop_process, wait_for
from test_acme import acme_env, peer_cert, verifies_with

pytestmark = pytest.mark.integration
Factory = Callable[..., CertproxyProcess]


@pytest.fixture
def pebble_factory(tmp_path: Path, ca: trustme.CA) -> Iterator[Callable[..., Pebble]]:
    started: list[Pebble] = []

    def factory(http_port: int, **kw: Any) -> Pebble:
        p = start_pebble(tmp_path, ca, http_port, **kw)
        started.append(p)
        return p

    yield factory
    for p in started:
        p.stop()


def health(cp: CertproxyProcess) -> dict[str, Any]:
    with urllib.request.urlopen(cp.healthz, timeout=10) as r:
        return json.load(r)  # type: ignore[no-any-return]


def served(port: int) -> str:
    return serial_hex(peer_cert(port).serial_number)


def live_serial(store: Path) -> str | None:
    from cryptography import x509
    try:
        data = (store / "live" / "localhost" / "fullchain.pem").read_bytes()
    except FileNotFoundError:
        return None
    return serial_hex(x509.load_pem_x509_certificate(data).serial_number)


def test_a_ca_that_forgets_the_account_gets_a_new_one_and_the_renewal_goes_through(
        certproxy_factory: Factory, pebble_factory: Callable[..., Pebble], tmp_path: Path) -> None:
    http_port, tls_port = free_port(), free_port()
    pebble = pebble_factory(http_port, validity=20)
    store = tmp_path / "store"
    cp = certproxy_factory({tls_port: "http://127.0.0.1:9"}, store, http_port=http_port,
                           extra_env=acme_env(pebble))
    wait_for(lambda: verifies_with(tls_port, pebble.roots_pem()), 30, "the first certificate", cp.proc, cp.log)
    first = served(tls_port)
    # The CA restarts without its state: the account is gone.
    pebble.stop()
    pebble = pebble_factory(http_port, validity=20, port=pebble.port)
    assert served(tls_port) == first  # the old certificate stays in service meanwhile
    roots = pebble.roots_pem()
    wait_for(lambda: verifies_with(tls_port, roots), 40, "a renewal from the restarted CA", cp.proc, cp.log)
    # certproxy serve's ACME client starts afresh for each order (a child process): it
    # registers the account key again, and the CA, which forgot it, makes a new account.
    assert cp.output().count("account: registered") == 2
    renewal = health(cp)["renewals"][0]
    assert renewal["failures"] == 0 and renewal["last_error"] is None

    # A client that registered before the CA forgot it (the reset falls between its account
    # and its order): the CA answers accountDoesNotExist; the old key is kept aside, a new
    # account is registered, and the same order goes on.
    from certproxy.acme_client import AcmeIssuer, AcmeSettings
    from certproxy.certs import FileStore

    settings = AcmeSettings(directory=pebble.directory, domains=("localhost",), ca_bundle=pebble.ca_bundle)
    lines: list[str] = []
    issuer = AcmeIssuer(FileStore(store), settings, progress=lines.append)
    issuer.connect()
    pebble.stop()
    pebble = pebble_factory(http_port, validity=20, port=pebble.port)
    chain, _ = issuer.issue(("localhost",))  # the running certproxy answers its http-01 from the store
    assert b"BEGIN CERTIFICATE" in chain
    assert sum("registering a new one" in line for line in lines) == 1, lines
    aside = list((store / "accounts").rglob("private_key.pem.lost-*"))
    assert len(aside) == 1 and aside[0].stat().st_mode & 0o777 == 0o600


def test_a_configuration_change_is_ordered_at_once(
        certproxy_factory: Factory, pebble_factory: Callable[..., Pebble], tmp_path: Path) -> None:
    http_port, tls_port = free_port(), free_port()
    pebble = pebble_factory(http_port)
    store = tmp_path / "store"
    routes = {tls_port: "http://127.0.0.1:9"}
    cp = certproxy_factory(routes, store, http_port=http_port, extra_env=acme_env(pebble))
    wait_for(lambda: verifies_with(tls_port, pebble.roots_pem()), 30, "the first certificate", cp.proc, cp.log)
    assert stop_process(cp.proc) == 0
    # A name added: ordered at start-up, not an hour later.
    t0 = time.monotonic()
    cp = certproxy_factory(routes, store, http_port=http_port,
                           extra_env=acme_env(pebble, CERTPROXY_DOMAINS="localhost,reg.certproxy.test"))
    wait_for(lambda: "reg.certproxy.test" in str(peer_cert(tls_port).extensions), 15,
             "a certificate with the added name", cp.proc, cp.log)
    added_s = time.monotonic() - t0
    assert stop_process(cp.proc) == 0
    # Another directory (staging to production, here a second CA): the same.
    other = pebble_factory(http_port)
    t0 = time.monotonic()
    cp = certproxy_factory(routes, store, http_port=http_port,
                           extra_env=acme_env(other, CERTPROXY_DOMAINS="localhost,reg.certproxy.test"))
    roots = other.roots_pem()
    wait_for(lambda: verifies_with(tls_port, roots), 15, "a certificate from the other directory", cp.proc, cp.log)
    print(f"configuration change to new certificate served: name added {added_s:.2f} s, "
          f"other directory {time.monotonic() - t0:.2f} s")


def test_a_certificate_written_while_a_replica_starts_is_served_within_a_second(
        certproxy_factory: Factory, tmp_path: Path, ca: trustme.CA) -> None:
    # Another process (here the test) writes the first certificate at moments spread over
    # the replica's start-up; the poll of the store is an hour, so only the watcher (and
    # the check after the load) can notice. Lag: from the later of the write and the
    # replica's first answer to the moment it serves the written certificate.
    from cryptography import x509
    lags = []
    for i, delay in enumerate((0.0, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6)):
        store = tmp_path / f"store-{i}"
        tls_port = free_port()
        cp = certproxy_factory({tls_port: "http://127.0.0.1:9"}, store, wait=False,
                               extra_env={"CERTPROXY_ACME": "off", "CERTPROXY_RELOAD_POLL": "3600"})
        time.sleep(delay)
        leaf = write_live(store, "localhost", ca, "localhost")
        written = time.monotonic()
        want = serial_hex(x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number)
        up_at = None
        deadline = written + 20
        while time.monotonic() < deadline:
            try:
                got = served(tls_port)
            except OSError:
                time.sleep(0.01)
                continue
            up_at = up_at or time.monotonic()
            if got == want:
                lags.append(time.monotonic() - max(written, up_at))
                break
            time.sleep(0.01)
        else:
            raise AssertionError(f"the certificate written after {delay} s was not served: {cp.output()}")
        stop_process(cp.proc)
    assert max(lags) < 1.0, lags


def test_three_replicas_on_one_store(
        certproxy_factory: Factory, pebble_factory: Callable[..., Pebble], tmp_path: Path,
        measure: Callable[[str, str], None]) -> None:
    # Pebble validates on replica C's plain-HTTP port; C maintains no certificates
    # (ACME off), so every challenge is answered by a replica that did not order.
    store = tmp_path / "store"
    http_a, http_b, http_c = free_port(), free_port(), free_port()
    pebble = pebble_factory(http_c, validity=20)
    ports = [free_port() for _ in range(3)]
    certproxy_factory({ports[2]: "http://127.0.0.1:9"}, store, http_port=http_c,
                      extra_env={"CERTPROXY_ACME": "off"})  # C, up before anyone orders
    a = certproxy_factory({ports[0]: "http://127.0.0.1:9"}, store, http_port=http_a, extra_env=acme_env(pebble))
    b = certproxy_factory({ports[1]: "http://127.0.0.1:9"}, store, http_port=http_b, extra_env=acme_env(pebble))
    roots = pebble.roots_pem()
    wait_for(lambda: all(verifies_with(p, roots) for p in ports), 30, "the first certificate", a.proc, a.log)
    seen: list[str] = []
    lags: list[float] = []
    deadline = time.monotonic() + 45
    while len(seen) < 3 and time.monotonic() < deadline:
        serial = live_serial(store)
        if serial is None or serial in seen:
            time.sleep(0.02)
            continue
        written = time.monotonic()
        seen.append(serial)
        pending = set(ports)
        while pending and time.monotonic() - written < 5:
            pending = {p for p in pending if served(p) != serial}
        assert not pending, f"replicas on {pending} do not serve {serial}"
        lags.append(time.monotonic() - written)
    assert len(seen) == 3, seen  # the first certificate and two renewals
    orders = a.output().count("ordering a certificate") + b.output().count("ordering a certificate")
    assert orders == len(seen), (orders, seen)  # one order per certificate
    assert max(lags) < 1.0, lags
    time.sleep(1.0)
    ra, rb = health(a)["renewals"][0], health(b)["renewals"][0]
    assert ra["last_success"] == rb["last_success"] and ra["next_renewal"] == rb["next_renewal"], (ra, rb)
    measure("3 replicas: renewals seen / orders / worst lag until every replica served it, s",
            f"{len(seen) - 1} / {orders - 1} / {max(lags):.2f}")


def test_two_forced_renewals_at_once_make_one_order_and_both_tell_the_truth(
        certproxy_factory: Factory, pebble_factory: Callable[..., Pebble], tmp_path: Path) -> None:
    http_port = free_port()
    pebble = pebble_factory(http_port)
    store = tmp_path / "store"
    # A certproxy sharing the store answers the challenges for both runs.
    certproxy_factory({free_port(): "http://127.0.0.1:9"}, store, http_port=http_port,
                      extra_env={"CERTPROXY_ACME": "off"})
    base = {k: v for k, v in os.environ.items() if not k.startswith("CERTPROXY_")}
    cmd = [sys.executable, "-m", "certproxy", "renew", "--directory", pebble.directory, "--ca-bundle",
           str(pebble.ca_bundle), "--store", str(store), "--http-port", str(http_port), "--domain", "localhost"]
    first = subprocess.run(cmd, env={**base, "CERTPROXY_BIND": "127.0.0.1"}, capture_output=True, text=True,
                           timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    before = live_serial(store)
    runs = [subprocess.Popen([*cmd, "--force"], env={**base, "CERTPROXY_BIND": "127.0.0.1"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [r.communicate(timeout=180) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outs
    after = live_serial(store)
    assert after != before
    stdouts = [o[0] for o in outs]
    assert sum(s.count("order: ") for s in stdouts) == 1, stdouts
    assert sum("another issuer sharing the store ordered it meanwhile" in s for s in stdouts) == 1, stdouts
    assert all(f"serial {after}" in s for s in stdouts), stdouts  # both report what is in the store


def test_status_shows_a_failing_renewal_with_its_error_and_next_attempt(
        certproxy_factory: Factory, tmp_path: Path) -> None:
    tls_port, dead = free_port(), free_port()
    store = tmp_path / "store"
    cp = certproxy_factory({tls_port: "http://127.0.0.1:9"}, store,
                           extra_env={"CERTPROXY_DOMAINS": "localhost", "CERTPROXY_ACME_RETRY_MIN": "30",
                                      "CERTPROXY_ACME_DIRECTORY": f"https://127.0.0.1:{dead}/dir"})
    wait_for(lambda: health(cp)["renewals"][0]["last_error"], 15, "a failed attempt", cp.proc, cp.log)
    renewal = health(cp)["renewals"][0]
    assert renewal["next_attempt"] and renewal["blocked"] is False
    base = {k: v for k, v in os.environ.items() if not k.startswith("CERTPROXY_")}
    out = subprocess.run([sys.executable, "-m", "certproxy", "status", "--store", str(store), "--url",
                          f"http://127.0.0.1:{cp.http_port}"], env=base, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert f"  last error: {renewal['last_error']}" in out.stdout  # whole, as /healthz has it
    assert "cannot reach the ACME server" in out.stdout
    assert f"  next attempt {renewal['next_attempt']}" in out.stdout
    assert "consecutive failures 1" in out.stdout
