"""TLS: SNI selection, the no-SNI primary, the protocol policy, swapping one reference."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st
from conftest import write_live
from cryptography import x509

from certproxy.certs import FileStore, canonical_ip
from certproxy.certs.pair import serial_hex
from certproxy.proxy.tls import CertificateSet, TLSState, normalize_server_name


def _set(tmp_path: Path, ca: trustme.CA) -> CertificateSet:
    write_live(tmp_path, "reg.example.com", ca, "reg.example.com")
    write_live(tmp_path, "ui.example.com", ca, "ui.example.com", "*.apps.example.com")
    inv = FileStore(tmp_path).inventory(("reg.example.com",))
    return CertificateSet(inv.primary, inv.pairs)


@pytest.mark.parametrize("sni, name", [
    ("reg.example.com", "reg.example.com"),
    ("REG.example.com.", "reg.example.com"),
    ("ui.example.com", "ui.example.com"),
    ("x.apps.example.com", "ui.example.com"),       # one-label wildcard
    ("y.x.apps.example.com", "reg.example.com"),    # two labels: not the wildcard
    ("apps.example.com", "reg.example.com"),
    ("unknown.test", "reg.example.com"),            # falls back to the primary
    (None, "reg.example.com"),                      # no SNI: the primary
    ("", "reg.example.com"),
])
def test_sni_selection(sni: str | None, name: str, tmp_path: Path, ca: trustme.CA) -> None:
    assert _set(tmp_path, ca).select_pair(sni).name == name


async def _handshake(port: int, sni: str | None, *, tls_max: ssl.TLSVersion | None = None,
                     ) -> tuple[str, str | None, str]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    if tls_max is not None:
        ctx.maximum_version = tls_max
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname=sni or ""), 5)
    sslobj = writer.get_extra_info("ssl_object")
    der = sslobj.getpeercert(binary_form=True)
    serial = serial_hex(x509.load_der_x509_certificate(der).serial_number)
    result = (serial, sslobj.selected_alpn_protocol(), sslobj.version())
    writer.close()
    return result


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_listener_serves_by_sni_and_swaps_one_reference(no_blocking: None, tmp_path: Path, ca: trustme.CA) -> None:
    certs = await asyncio.to_thread(_set, tmp_path, ca)  # the test's set-up, off the loop
    state = TLSState(certs)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=state.listener_context())
    port = server.sockets[0].getsockname()[1]
    try:
        reg = certs.select_pair("reg.example.com").serial
        ui = certs.select_pair("ui.example.com").serial
        assert (await _handshake(port, "ui.example.com"))[0] == ui
        serial, alpn, version = await _handshake(port, "reg.example.com")
        assert serial == reg and alpn == "http/1.1" and version == "TLSv1.3"
        assert (await _handshake(port, None))[0] == reg
        assert (await _handshake(port, None, tls_max=ssl.TLSVersion.TLSv1_2))[2] == "TLSv1.2"
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await _handshake(port, "reg.example.com", tls_max=ssl.TLSVersion.TLSv1_1)

        # A new primary pair swapped in reaches the very next handshake, SNI or not.
        def renewed() -> CertificateSet:  # built off the loop, as the reloader builds it
            write_live(tmp_path, "reg.example.com", ca, "reg.example.com")
            inv = FileStore(tmp_path).inventory(("reg.example.com",))
            return CertificateSet(inv.primary, inv.pairs)

        renewal = await asyncio.to_thread(renewed)
        state.swap(renewal)
        new = renewal.primary.serial
        assert new != reg
        assert (await _handshake(port, "reg.example.com"))[0] == new
        assert (await _handshake(port, None))[0] == new
    finally:
        server.close()
        await server.wait_closed()


def test_tls12_offers_only_forward_secret_aead_ciphers(tmp_path: Path, ca: trustme.CA) -> None:
    state = TLSState(_set(tmp_path, ca))
    names = [c["name"] for c in state.listener_context().get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert names and all(n.startswith("ECDHE-") and ("GCM" in n or "CHACHA20" in n) for n in names)


# --- serving by address (RFC 8738 certificates): no SNI, or SNI naming the address ---------

def _by_address_set(tmp_path: Path, ca: trustme.CA) -> CertificateSet:
    write_live(tmp_path, "registry.test", ca, "registry.test")
    write_live(tmp_path, "127.0.0.1", ca, "127.0.0.1")
    write_live(tmp_path, "::1", ca, "::1", "ip.registry.test")
    inv = FileStore(tmp_path).inventory(("registry.test",))
    return CertificateSet(inv.primary, inv.pairs)


@pytest.mark.parametrize("sni, local, name", [
    (None, "127.0.0.1", "127.0.0.1"),            # no SNI: the address the client connected to
    (None, "::1", "::1"),
    (None, "10.1.2.3", "registry.test"),         # an address no certificate names: the primary
    (None, None, "registry.test"),
    ("127.0.0.1", None, "127.0.0.1"),            # SNI naming the address (some clients send it)
    ("0:0::1", None, "::1"),                      # ... in any of its spellings
    ("[::1]", None, "::1"),
    ("registry.test", "127.0.0.1", "registry.test"),  # a named host keeps its certificate
    ("ip.registry.test", "127.0.0.1", "::1"),
])
def test_selection_by_address(sni: str | None, local: str | None, name: str, tmp_path: Path,
                              ca: trustme.CA) -> None:
    certs = _by_address_set(tmp_path, ca)
    assert certs.by_address
    assert certs.select_pair(sni, local).name == name


def test_local_addresses_name_their_canonical_address() -> None:
    from certproxy.proxy.tls import address_name
    assert address_name("::ffff:127.0.0.1") == "127.0.0.1"  # a dual-stack socket's IPv4 client
    assert address_name("0:0:0:0:0:0:0:1") == "::1"
    assert address_name("fe80::1%eth0") == "fe80::1"
    assert address_name(None) is None and address_name("") is None
    assert not _set_without_addresses().by_address


def _set_without_addresses() -> CertificateSet:
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        ca = trustme.CA()
        write_live(Path(tmp), "reg.example.com", ca, "reg.example.com")
        inv = FileStore(Path(tmp)).inventory(("reg.example.com",))
        return CertificateSet(inv.primary, inv.pairs)


def _served(address: str, port: int, sni: str | None) -> x509.Certificate:
    """The leaf OpenSSL's own client gets from ``address:port``: no SNI at all, or SNI
    naming ``sni`` (Python's ssl never sends an IP address as SNI; s_client does)."""
    import subprocess
    target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    args = ["openssl", "s_client", "-connect", target, "-showcerts"]
    args += ["-servername", sni] if sni else ["-noservername"]
    run = subprocess.run(args, input=b"", capture_output=True, timeout=30)
    pem = run.stdout.split(b"-----BEGIN CERTIFICATE-----", 1)[1].split(b"-----END CERTIFICATE-----")[0]
    return x509.load_pem_x509_certificate(b"-----BEGIN CERTIFICATE-----" + pem + b"-----END CERTIFICATE-----\n")


@pytest.mark.integration
@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_a_listener_serves_the_certificate_of_the_address_dialled(
        address: str, certproxy_factory, tmp_path: Path, ca: trustme.CA) -> None:  # type: ignore[no-untyped-def]
    from support.procs import free_port, wait_for
    store = tmp_path / "store"
    named = write_live(store, "registry.test", ca, "registry.test")
    by_ip = write_live(store, address, ca, address)  # as certbot names the folder
    port = free_port()
    cp = certproxy_factory({port: "http://127.0.0.1:9"}, store,
                           extra_env={"CERTPROXY_DOMAINS": "registry.test", "CERTPROXY_ACME": "off",
                                      "CERTPROXY_BIND": address}, wait=False)

    def serial(leaf: trustme.LeafCert) -> int:
        return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number

    wait_for(lambda: "certproxy ready" in cp.output(), 30, "certproxy", cp.proc, cp.log)
    assert _served(address, port, None).serial_number == serial(by_ip)
    assert _served(address, port, address).serial_number == serial(by_ip)
    assert _served(address, port, "registry.test").serial_number == serial(named)
    assert _served(address, port, "other.test").serial_number == serial(named)  # the primary
    # A client verifying the address (as docker does for https://IP:PORT) accepts it.
    ctx = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    import socket
    with socket.create_connection((address, port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=address) as conn:
        assert conn.version() in ("TLSv1.3", "TLSv1.2")


_NAME_CHARS = "abcdefABCDEFxyz0123456789.:-%[]_ \u00e9"


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.text(alphabet=_NAME_CHARS, max_size=45),
    st.ip_addresses().map(str),
    st.ip_addresses().map(lambda ip: f"[{ip}]"),
    st.ip_addresses().map(lambda ip: str(ip).upper() + "."),
    st.ip_addresses(v=6).map(lambda ip: ip.exploded),
    st.builds(lambda a, b: f"{a}.{b}", st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True),
              st.from_regex(r"[a-z0-9-]{1,12}\.?", fullmatch=True)),
))
def test_server_name_normalized_as_an_address_where_it_is_one(name: str) -> None:
    """The fast path for ordinary names (no parse as an address) names the same
    certificate key as parsing every name would: addresses in canonical form, all
    else lower case without the trailing dot."""
    plain = name.lower().rstrip(".")
    assert normalize_server_name(name) == ((canonical_ip(plain) or plain) if name else None)
