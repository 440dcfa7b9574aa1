"""TLS: SNI selection, the no-SNI primary, the protocol policy, swapping one reference."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
import trustme
from conftest import write_live
from cryptography import x509

from certproxy.certs import FileStore
from certproxy.certs.pair import serial_hex
from certproxy.proxy.tls import CertificateSet, TLSState


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
