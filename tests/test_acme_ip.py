"""Certificates for IP addresses (RFC 8738) from the real Pebble, which validates IP
identifiers: 127.0.0.1 and ::1 over HTTP-01 and over TLS-ALPN-01 (the CA's ClientHello
names the address's reverse-DNS name), a mixed order (a name and an address), and the
served certificate checked by a client that dials the address, without SNI and with it."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from pathlib import Path
from typing import Callable

import pytest
import trustme
from cryptography import x509

from support.pebble import Pebble, start_pebble
from support.procs import CertproxyProcess, free_port, stop_process, wait_for
from test_tls import _served

pytestmark = pytest.mark.integration


def verifies_address(address: str, port: int, roots: bytes) -> bool:
    """A client that dials the address and checks the certificate against it (Python
    sends no SNI for an address, as docker and curl do not)."""
    ctx = ssl.create_default_context(cadata=roots.decode())
    try:
        with socket.create_connection((address, port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname=address):
            return True
    except (OSError, ssl.SSLError):
        return False


def sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ext.get_values_for_type(x509.DNSName), [str(i) for i in ext.get_values_for_type(x509.IPAddress)]


@pytest.mark.parametrize("challenge, address", [
    ("http-01", "127.0.0.1"), ("http-01", "::1"), ("tls-alpn-01", "127.0.0.1"), ("tls-alpn-01", "::1")])
def test_a_certificate_for_an_ip_address_from_pebble(
        challenge: str, address: str, certproxy_factory: Callable[..., CertproxyProcess],
        tmp_path: Path, ca: trustme.CA, measure: Callable[[str, str], None]) -> None:
    http_port, tls_port = free_port(), free_port()
    extra: dict[str, object] = {"tlsPort": tls_port} if challenge == "tls-alpn-01" else {}
    pebble = start_pebble(tmp_path, ca, http_port, extra_config=extra)
    # On 127.0.0.1 the order is mixed: the name resolves (challtestsrv) to the same address.
    domains = f"{address},localhost" if address == "127.0.0.1" else address
    store = tmp_path / "store"
    env = {"CERTPROXY_DOMAINS": domains, "CERTPROXY_EMAIL": "ops@certproxy.test",
           "CERTPROXY_ACME_DIRECTORY": pebble.directory, "CERTPROXY_ACME_CA_BUNDLE": str(pebble.ca_bundle),
           "CERTPROXY_ACME_RETRY_MIN": "1", "CERTPROXY_CHALLENGE": challenge, "CERTPROXY_BIND": address}
    if challenge == "tls-alpn-01":
        env["CERTPROXY_HTTP_PORT"] = "off"
    try:
        t0 = time.monotonic()
        cp = certproxy_factory({tls_port: "http://127.0.0.1:9"}, store, http_port=http_port,
                               extra_env=env, wait=False)
        roots = pebble.roots_pem()
        wait_for(lambda: verifies_address(address, tls_port, roots), 60,
                 f"a Pebble certificate for {address} over {challenge}", cp.proc, cp.log)
        measure(f"RFC 8738: {address} over {challenge}, start to a served certificate, s",
                f"{time.monotonic() - t0:.2f}")
        leaf = _served(address, tls_port, None)  # no SNI: what docker pushing to IP:5000 sends
        names, ips = sans(leaf)
        assert ips == [str(ipaddress.ip_address(address))]
        assert names == (["localhost"] if address == "127.0.0.1" else [])
        assert _served(address, tls_port, address).serial_number == leaf.serial_number  # SNI = the address
        assert (store / "live" / address / "fullchain.pem").exists()  # live/::1, as certbot names it
        assert (store / "live" / address / "privkey.pem").stat().st_mode & 0o777 == 0o600
        assert cp.wait_output(f"challenge {address}: {challenge} answered")
        alpn = store / "challenges" / "tls-alpn-01"
        assert not alpn.exists() or not list(alpn.iterdir())
        assert f"{address} is not a public address: a public ACME CA cannot connect" in cp.output()
        assert "Traceback" not in cp.output()
    finally:
        pebble.stop()


class Clients:
    """Handshakes against ``address:port`` in a thread, as a client of the address does
    (no SNI, the certificate checked against the address and ``roots``), until stopped:
    how many succeeded, every failure, and each serial seen with its expiry."""

    def __init__(self, address: str, port: int, roots: bytes) -> None:
        self.address, self.port = address, port
        self.roots = roots
        self.ok = 0
        self.failures: list[str] = []
        self.seen: dict[int, x509.Certificate] = {}
        self._stop = False
        self.paused = False  # while the test swaps the CA (and the roots to trust)
        import threading
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def trust(self, roots: bytes) -> None:
        self.roots += roots

    def _run(self) -> None:
        while not self._stop:
            if self.paused:
                time.sleep(0.05)
                continue
            ctx = ssl.create_default_context(cadata=self.roots.decode())
            try:
                with socket.create_connection((self.address, self.port), timeout=10) as raw, \
                        ctx.wrap_socket(raw, server_hostname=self.address) as conn:
                    der = conn.getpeercert(binary_form=True)
                leaf = x509.load_der_x509_certificate(der)  # type: ignore[arg-type]
                self.seen.setdefault(leaf.serial_number, leaf)
                self.ok += 1
            except (OSError, ssl.SSLError) as exc:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}")
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop = True
        self.thread.join(30)


def _short_lived_proxy(certproxy_factory: Callable[..., CertproxyProcess], tmp_path: Path,
                       pebble: Pebble, http_port: int, tls_port: int, **extra: str) -> CertproxyProcess:
    env = {"CERTPROXY_DOMAINS": "127.0.0.1", "CERTPROXY_EMAIL": "ops@certproxy.test",
           "CERTPROXY_ACME_DIRECTORY": pebble.directory, "CERTPROXY_ACME_CA_BUNDLE": str(pebble.ca_bundle),
           "CERTPROXY_ACME_RETRY_MIN": "1", **extra}
    # This installation renews when the last half begins (its spread, kept in the store, is
    # 0): the most time left for retries, whatever the machine's load.
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "installation.json").write_text('{"renewal_spread": 0.0}\n')
    return certproxy_factory({tls_port: "http://127.0.0.1:9"}, tmp_path / "store", http_port=http_port,
                             extra_env=env)


def test_short_lived_address_certificates_are_renewed_repeatedly_under_load(
        certproxy_factory: Callable[..., CertproxyProcess], tmp_path: Path, ca: trustme.CA,
        measure: Callable[[str, str], None]) -> None:
    http_port, tls_port = free_port(), free_port()
    pebble = start_pebble(tmp_path, ca, http_port, validity=30)
    try:
        admin = free_port()
        cp = _short_lived_proxy(certproxy_factory, tmp_path, pebble, http_port, tls_port,
                                CERTPROXY_ADMIN_PORT=str(admin))
        roots = pebble.roots_pem()
        wait_for(lambda: verifies_address("127.0.0.1", tls_port, roots), 60, "the first certificate",
                 cp.proc, cp.log)
        clients = Clients("127.0.0.1", tls_port, roots)
        try:
            # Four renewals of 30-second certificates (each due in the last half of its life).
            wait_for(lambda: len(clients.seen) >= 5, 150, "four renewals", cp.proc, cp.log)
            _health_and_metrics_follow_the_short_lifetime(cp, admin, tls_port)
        finally:
            clients.stop()
        certs = sorted(clients.seen.values(), key=lambda c: c.not_valid_before_utc)
        lifetime = certs[0].not_valid_after_utc - certs[0].not_valid_before_utc
        measure("RFC 8738, 30-second Pebble certificates under load: renewals seen / handshakes ok / failed",
                f"{len(certs) - 1} / {clients.ok} / {len(clients.failures)}")
        assert not clients.failures, clients.failures[:5]  # never an expired certificate, never a failure
        assert lifetime.total_seconds() <= 31
        for old, new in zip(certs, certs[1:]):  # each renewed before the one it replaced expired
            assert new.not_valid_before_utc < old.not_valid_after_utc
        assert "Traceback" not in cp.output()
    finally:
        pebble.stop()


def _health_and_metrics_follow_the_short_lifetime(cp: CertproxyProcess, admin: int, port: int) -> None:
    """/healthz and /metrics of a certproxy serving 30-second certificates: the renewal is due
    within the served certificate's lifetime, the expiry is the served certificate's. (Looked
    at again when a renewal lands between the looks.)"""
    import json
    import urllib.request

    from certproxy.certs.pair import serial_hex
    from test_metrics_auth import scrape, value
    for _ in range(20):  # a renewal written between the looks (the store ahead of the handshake)
        served = _served("127.0.0.1", port, None)
        with urllib.request.urlopen(cp.healthz, timeout=10) as r:
            health = json.load(r)
        samples = scrape(admin)
        expiry = served.not_valid_after_utc.timestamp()
        nxt = value(samples, "certproxy_renewal_next_timestamp_seconds", name="127.0.0.1")
        if _served("127.0.0.1", port, None).serial_number == served.serial_number and nxt < expiry:
            break
        time.sleep(0.5)
    serial = serial_hex(served.serial_number)
    listed = {c["serial"]: c for c in health["certificates"]}
    # (the route's upstream is a closed port: "degraded" for that alone)
    assert [p for p in health["problems"] if "upstream" not in p] == [], health["problems"]
    assert health["status"] != "failing" and listed[serial]["days_left"] < 30 / 86400
    renewal = health["renewals"][0]
    assert renewal["last_error"] is None and renewal["failures"] == 0
    assert served.not_valid_before_utc.timestamp() < nxt < expiry
    assert value(samples, "certproxy_certificate_expiry_timestamp_seconds",
                 name="127.0.0.1", kind="live", serial=serial) == expiry


def test_a_ca_outage_across_the_renewal_window_is_recovered_before_expiry(
        certproxy_factory: Callable[..., CertproxyProcess], tmp_path: Path, ca: trustme.CA,
        measure: Callable[[str, str], None]) -> None:
    import json
    import urllib.request
    http_port, tls_port = free_port(), free_port()
    validity = 120  # renewal due 60 s after issuance; the CA is down from 30 s to 85 s
    pebble = start_pebble(tmp_path, ca, http_port, validity=validity)
    cp = _short_lived_proxy(certproxy_factory, tmp_path, pebble, http_port, tls_port)
    roots = pebble.roots_pem()
    wait_for(lambda: verifies_address("127.0.0.1", tls_port, roots), 60, "the first certificate",
             cp.proc, cp.log)
    clients = Clients("127.0.0.1", tls_port, roots)
    try:
        first = _served("127.0.0.1", tls_port, None)
        issued = first.not_valid_before_utc.timestamp()
        time.sleep(max(0.0, issued + 30 - time.time()))
        port = pebble.port
        pebble.stop()  # the CA goes away before the renewal window opens

        def renewal() -> dict:
            with urllib.request.urlopen(cp.healthz, timeout=10) as r:
                return json.load(r)["renewals"][0]

        time.sleep(max(0.0, issued + 85 - time.time()))
        during = renewal()
        clients.paused = True  # the CA comes back with a new root: trusted before the next handshake
        pebble = start_pebble(tmp_path, ca, http_port, validity=validity, port=port)
        clients.trust(pebble.roots_pem())
        clients.paused = False
        wait_for(lambda: len(clients.seen) >= 2, 60, "the renewal once the CA is back", cp.proc, cp.log)
        renewed_at = time.time()
        clients.stop()
        assert during["failures"] >= 3 and "cannot reach the ACME server" in (during["last_error"] or ""), during
        assert renewed_at < first.not_valid_after_utc.timestamp()  # before the old one expired
        assert not clients.failures, clients.failures[:5]
        measure("RFC 8738, CA down across the renewal window of a 120-second certificate: "
                "failed attempts during the outage / renewed s before expiry / handshakes failed",
                f"{during['failures']} / {first.not_valid_after_utc.timestamp() - renewed_at:.0f} / "
                f"{len(clients.failures)}")
    finally:
        clients.stop()
        pebble.stop()


def test_a_wildcard_over_dns_01_and_an_address_over_http_01_in_one_certificate(
        certproxy_factory: Callable[..., CertproxyProcess], tmp_path: Path, ca: trustme.CA) -> None:
    from support.bind import KEY_NAME, start_bind
    bind = start_bind(tmp_path)
    http_port, tls_port = free_port(), free_port()
    pebble = start_pebble(tmp_path, ca, http_port, dns_server=bind.server)
    try:
        env = {"CERTPROXY_CHALLENGE": "dns-01", "CERTPROXY_DOMAINS": "example.test,*.example.test,127.0.0.1",
               "CERTPROXY_EMAIL": "ops@example.test", "CERTPROXY_ACME_DIRECTORY": pebble.directory,
               "CERTPROXY_ACME_CA_BUNDLE": str(pebble.ca_bundle), "CERTPROXY_ACME_RETRY_MIN": "1",
               "CERTPROXY_DNS_SERVER": bind.server, "CERTPROXY_DNS_TSIG_KEY": KEY_NAME,
               "CERTPROXY_DNS_TSIG_SECRET": bind.secret}
        cp = certproxy_factory({tls_port: "http://127.0.0.1:9"}, tmp_path / "store", http_port=http_port,
                               extra_env=env)
        roots = pebble.roots_pem()
        wait_for(lambda: verifies_address("127.0.0.1", tls_port, roots), 90,
                 "one certificate for the wildcard and the address", cp.proc, cp.log)
        names, ips = sans(_served("127.0.0.1", tls_port, None))
        assert sorted(names) == ["*.example.test", "example.test"] and ips == ["127.0.0.1"]
        out = cp.output()
        assert "challenge *.example.test: dns-01 answered" in out
        assert "challenge 127.0.0.1: http-01 answered" in out
    finally:
        pebble.stop()
        bind.stop()


def test_without_a_plain_http_listener_dns_01_lends_an_address_tls_alpn_01_on_port_443(
        certproxy_factory: Callable[..., CertproxyProcess], tmp_path: Path, ca: trustme.CA) -> None:
    """A wildcard over dns-01 and an address over tls-alpn-01 in one certificate, with no
    plain-HTTP listener: the CA validates the address on its port 443 (certproxy's TLS
    route of 443, here on 127.0.0.3 so that no other test's port is in the way)."""
    from support.bind import KEY_NAME, start_bind
    address = "127.0.0.3"
    bind = start_bind(tmp_path)
    pebble = start_pebble(tmp_path, ca, free_port(), dns_server=bind.server, extra_config={"tlsPort": 443})
    try:
        env = {"CERTPROXY_CHALLENGE": "dns-01", "CERTPROXY_HTTP_PORT": "off", "CERTPROXY_BIND": address,
               "CERTPROXY_DOMAINS": f"example.test,*.example.test,{address}",
               "CERTPROXY_EMAIL": "ops@example.test", "CERTPROXY_ACME_DIRECTORY": pebble.directory,
               "CERTPROXY_ACME_CA_BUNDLE": str(pebble.ca_bundle), "CERTPROXY_ACME_RETRY_MIN": "1",
               "CERTPROXY_DNS_SERVER": bind.server, "CERTPROXY_DNS_TSIG_KEY": KEY_NAME,
               "CERTPROXY_DNS_TSIG_SECRET": bind.secret}
        cp = certproxy_factory({443: "http://127.0.0.1:9"}, tmp_path / "store", extra_env=env, wait=False)
        roots = pebble.roots_pem()
        wait_for(lambda: verifies_address(address, 443, roots), 90,
                 "one certificate for the wildcard and the address", cp.proc, cp.log)
        names, ips = sans(_served(address, 443, None))
        assert sorted(names) == ["*.example.test", "example.test"] and ips == [address]
        out = cp.output()
        assert "challenge *.example.test: dns-01 answered" in out
        assert f"challenge {address}: tls-alpn-01 answered" in out
    finally:
        pebble.stop()
        bind.stop()


def test_renew_proves_a_wildcard_over_dns_01_and_an_address_over_http_01(tmp_path: Path, ca: trustme.CA) -> None:
    """``certproxy renew`` alone (no running certproxy): the wildcard through BIND, the
    address through its own http-01 listener on the HTTP port."""
    import os
    import subprocess
    import sys

    from support.bind import KEY_NAME, start_bind
    bind = start_bind(tmp_path)
    http_port = free_port()
    pebble = start_pebble(tmp_path, ca, http_port, dns_server=bind.server)
    try:
        base = {k: v for k, v in os.environ.items() if not k.startswith("CERTPROXY_")}
        env = {**base, "CERTPROXY_BIND": "127.0.0.1", "CERTPROXY_CHALLENGE": "dns-01",
               "CERTPROXY_DNS_SERVER": bind.server, "CERTPROXY_DNS_TSIG_KEY": KEY_NAME,
               "CERTPROXY_DNS_TSIG_SECRET": bind.secret}
        done = subprocess.run(
            [sys.executable, "-m", "certproxy", "renew", "--directory", pebble.directory,
             "--ca-bundle", str(pebble.ca_bundle), "--store", str(tmp_path / "store"),
             "--http-port", str(http_port), "--email", "ops@example.test",
             "--domain", "*.example.test", "--domain", "127.0.0.1"],
            env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        out = done.stdout
        for step in ("dns-01: TXT records through", "http-01 for the addresses 127.0.0.1",
                     "for http-01 challenges", "challenge *.example.test: dns-01 answered",
                     "challenge 127.0.0.1: http-01 answered"):
            assert step in out, (step, out)
        leaf = x509.load_pem_x509_certificate(
            (tmp_path / "store" / "live" / "example.test" / "fullchain.pem").read_bytes())
        assert sans(leaf) == (["*.example.test"], ["127.0.0.1"])
    finally:
        pebble.stop()
        bind.stop()
