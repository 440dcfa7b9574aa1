"""DNS-01 through RFC 2136: BIND 9 is authoritative for ``example.test`` and takes
TSIG-signed updates; Pebble resolves through it, so it validates the TXT records
certproxy writes there. A certificate for ``example.test`` and ``*.example.test``
is issued and served by SNI; the records are gone afterwards; a wrong secret is
a clear error that leaves the certificate in service alone; no secret is shown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest
import trustme
from cryptography import x509

from support.bind import KEY_NAME, Bind, start_bind
from support.pebble import Pebble, start_pebble
from support.powerdns import start_powerdns
from support.procs import CertproxyProcess, free_port, start_certproxy, stop_process, wait_for
from support.registry import Registry
from support.tlsprobe import peer_certificate, verifies

pytestmark = pytest.mark.integration

DOMAINS = "example.test,*.example.test"


@pytest.fixture
def bind(tmp_path: Path) -> Bind:
    server = start_bind(tmp_path)
    yield server  # type: ignore[misc]
    server.stop()


@pytest.fixture
def pebble(tmp_path: Path, bind: Bind) -> Pebble:
    server = start_pebble(tmp_path, trustme.CA(), free_port(), dns_server=bind.server)
    yield server  # type: ignore[misc]
    server.stop()


def dns_env(bind: Bind, pebble: Pebble, secret: str | None = None, **extra: str) -> dict[str, str]:
    return {"CERTPROXY_CHALLENGE": "dns-01", "CERTPROXY_DOMAINS": DOMAINS,
            "CERTPROXY_EMAIL": "ops@example.test", "CERTPROXY_ACME_DIRECTORY": pebble.directory,
            "CERTPROXY_ACME_CA_BUNDLE": str(pebble.ca_bundle), "CERTPROXY_ACME_RETRY_MIN": "1",
            "CERTPROXY_DNS_SERVER": bind.server, "CERTPROXY_DNS_TSIG_KEY": KEY_NAME,
            "CERTPROXY_DNS_TSIG_SECRET": secret or bind.secret, **extra}


def healthz(cp: CertproxyProcess) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(cp.healthz, timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def test_wildcard_certificate_through_bind_then_a_wrong_secret_keeps_it(
        bind: Bind, pebble: Pebble, registry: Registry, tmp_path: Path) -> None:
    store, port = tmp_path / "store", free_port()
    roots = pebble.roots_pem()
    cp = start_certproxy(tmp_path, {port: registry.url}, store, extra_env=dns_env(bind, pebble))
    try:
        wait_for(lambda: verifies(port, "anything.example.test", roots=roots), 60, "a wildcard certificate from Pebble",
                 cp.proc, cp.log)
        cert = peer_certificate(port, "anything.example.test", roots=roots)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)
        assert sorted(sans) == ["*.example.test", "example.test"]
        assert verifies(port, "example.test", roots=roots)
        # One record name for both authorizations (a wildcard's is its base name's), found in
        # the zone the server's SOA named; gone once the order is done.
        out = cp.output()
        assert out.count("TXT _acme-challenge.example.test. added") == 2, out
        assert cp.wait_output("written to")
        assert bind.txt("_acme-challenge.example.test") == []
        # The TSIG secret is never shown: not in the log, /healthz or status.
        status = subprocess.run([sys.executable, "-m", "certproxy", "status", "--json"], capture_output=True,
                                text=True, timeout=30, env=cp.env)
        for text in (cp.output(), json.dumps(healthz(cp)), status.stdout + status.stderr):
            assert bind.secret not in text
        serial = cert.serial_number
        # certproxy renew works with dns-01 too, beside the running proxy.
        renew = subprocess.run([sys.executable, "-m", "certproxy", "renew", "--force"], capture_output=True,
                               text=True, timeout=120, env=cp.env)
        assert renew.returncode == 0, renew.stdout + renew.stderr
        assert "dns-01: TXT records through" in renew.stdout
        wait_for(lambda: peer_certificate(port, "anything.example.test", roots=roots).serial_number != serial, 10,
                 "the renewed certificate served", cp.proc, cp.log)
        serial = peer_certificate(port, "anything.example.test", roots=roots).serial_number
        assert bind.txt("_acme-challenge.example.test") == []
    finally:
        stop_process(cp.proc)

    # A wrong secret: one more name makes an order due at once; the update is refused,
    # /healthz and the log say why in one line, and the certificate in service stays.
    wrong = "A" * 43 + "="
    env = dns_env(bind, pebble, secret=wrong, CERTPROXY_DOMAINS=DOMAINS + ",deeper.a.example.test")  # *. covers one label
    cp = start_certproxy(tmp_path, {port: registry.url}, store, extra_env=env)
    try:
        def failed() -> str | None:
            renewals = healthz(cp)["renewals"]
            return renewals[0].get("last_error") if renewals else None

        wait_for(failed, 30, "the renewal failing", cp.proc, cp.log)
        error = failed()
        assert error is not None
        assert "refused the TSIG signature of key 'certproxy-key'" in error and "CERTPROXY_DNS_TSIG_SECRET" in error
        assert any("refused the TSIG signature" in line for line in cp.output().splitlines() if "ERROR" in line)
        assert healthz(cp)["status"] == "degraded"
        assert peer_certificate(port, "anything.example.test", roots=roots).serial_number == serial
        assert wrong not in cp.output()
        assert bind.txt("_acme-challenge.example.test") == []
    finally:
        stop_process(cp.proc)


@pytest.mark.parametrize("env, setting, message", [
    ({"CERTPROXY_DOMAINS": "*.example.test"}, "CERTPROXY_CHALLENGE",
     "*.example.test needs CERTPROXY_CHALLENGE=dns-01 (http-01 cannot prove a wildcard)"),
    ({"CERTPROXY_DOMAINS": "example.test", "CERTPROXY_CHALLENGE": "dns-01"}, "CERTPROXY_DNS_SERVER",
     "dns-01 needs the DNS server to update (host[:port])"),
    ({"CERTPROXY_DOMAINS": "example.test", "CERTPROXY_CHALLENGE": "dns-01", "CERTPROXY_DNS_SERVER": "ns1:53",
      "CERTPROXY_DNS_TSIG_KEY": "k"}, "CERTPROXY_DNS_TSIG_SECRET", "a TSIG key needs both its name and its secret"),
    ({"CERTPROXY_DOMAINS": "example.test", "CERTPROXY_CHALLENGE": "dns-01", "CERTPROXY_DNS_SERVER": "ns1:53",
      "CERTPROXY_DNS_TSIG_KEY": "k", "CERTPROXY_DNS_TSIG_SECRET": "not base64!"}, "CERTPROXY_DNS_TSIG_SECRET",
     "not base64"),
    ({"CERTPROXY_DOMAINS": "example.test", "CERTPROXY_CHALLENGE": "dns-1"}, "CERTPROXY_CHALLENGE",
     "'dns-1' is not one of http-01, dns-01"),
    ({"CERTPROXY_DNS_SERVER": "ns1:99999"}, "CERTPROXY_DNS_SERVER", "99999"),
])
def test_dns01_settings_mistakes_are_refused_in_one_line(env: dict[str, str], setting: str, message: str,
                                                          tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CERTPROXY_")}
    out = subprocess.run([sys.executable, "-m", "certproxy", "serve"], capture_output=True, text=True, timeout=30,
                         env={**base, "CERTPROXY_STORE": str(tmp_path / "s"), **env})
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"certproxy: {setting}: ") and message in lines[0], lines
    assert "not base64!" not in out.stderr  # a secret, even a malformed one, is never echoed


def test_wildcard_certificate_through_a_lexicon_provider_powerdns(registry: Registry, tmp_path: Path) -> None:
    """The dns-lexicon path: its ``powerdns`` provider writes the records through PowerDNS's
    HTTP API; Pebble resolves through PowerDNS, which certproxy also asks before validation."""
    pdns = start_powerdns(tmp_path, "example.com")
    pebble = start_pebble(tmp_path, trustme.CA(), free_port(), dns_server=pdns.server)
    port = free_port()
    env = {"CERTPROXY_CHALLENGE": "dns-01", "CERTPROXY_DOMAINS": "example.com,*.example.com",
           "CERTPROXY_EMAIL": "ops@example.com", "CERTPROXY_ACME_DIRECTORY": pebble.directory,
           "CERTPROXY_ACME_CA_BUNDLE": str(pebble.ca_bundle), "CERTPROXY_ACME_RETRY_MIN": "1",
           "CERTPROXY_DNS_PROVIDER": "powerdns", "CERTPROXY_DNS_SERVER": pdns.server,
           "LEXICON_POWERDNS_AUTH_TOKEN": pdns.api_key, "LEXICON_POWERDNS_PDNS_SERVER": pdns.api_url}
    cp = start_certproxy(tmp_path, {port: registry.url}, tmp_path / "store", extra_env=env)
    try:
        roots = pebble.roots_pem()
        wait_for(lambda: verifies(port, "anything.example.com", roots=roots), 60, "a wildcard certificate via lexicon",
                 cp.proc, cp.log)
        assert verifies(port, "example.com", roots=roots)
        assert cp.output().count("TXT _acme-challenge.example.com. added") == 2
        assert cp.wait_output("written to")
        answer = dns.query.tcp(dns.message.make_query("_acme-challenge.example.com", "TXT"), "127.0.0.1",
                               port=pdns.dns_port, timeout=5)
        assert not [r for r in answer.answer if r.rdtype == dns.rdatatype.TXT]  # removed again
        assert pdns.api_key not in cp.output() and pdns.api_key not in json.dumps(healthz(cp))
    finally:
        stop_process(cp.proc)
        pebble.stop()
        pdns.stop()


def test_records_are_removed_when_the_ca_cannot_validate(bind: Bind, registry: Registry, tmp_path: Path) -> None:
    """Pebble resolving elsewhere (its own challtestsrv) never sees the TXT records: the
    order fails, and the values certproxy added to BIND are removed all the same."""
    blind = start_pebble(tmp_path, trustme.CA(), free_port())
    cp = start_certproxy(tmp_path, {free_port(): registry.url}, tmp_path / "store",
                         extra_env=dns_env(bind, blind))
    try:
        def failed() -> str | None:
            renewals = healthz(cp)["renewals"]
            return renewals[0].get("last_error") if renewals else None

        wait_for(failed, 60, "the order failing", cp.proc, cp.log)
        assert cp.output().count("TXT _acme-challenge.example.test. added") == 2
        assert bind.txt("_acme-challenge.example.test") == []
        assert healthz(cp)["certificates"][0]["kind"] == "bootstrap"  # nothing half-issued is served
    finally:
        stop_process(cp.proc)
        blind.stop()
