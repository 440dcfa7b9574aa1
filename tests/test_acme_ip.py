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
        assert "Traceback" not in cp.output()
    finally:
        pebble.stop()
