"""TLS-ALPN-01 (RFC 8737) against Pebble validating on certproxy's TLS port, with no
plain-HTTP listener at all, while ordinary HTTPS requests go on through that port."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trustme

from support.pebble import start_pebble
from support.procs import free_port, start_certproxy, stop_process, tcp_open, wait_for
from support.registry import Registry
from support.tlsprobe import peer_certificate, verifies

pytestmark = pytest.mark.integration


def test_tls_alpn_01_issues_without_port_80_and_traffic_goes_on(registry: Registry, tmp_path: Path,
                                                                 measure) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    pebble = start_pebble(tmp_path, trustme.CA(), free_port(), extra_config={"tlsPort": port})
    store = tmp_path / "store"
    env = {"CERTPROXY_CHALLENGE": "tls-alpn-01", "CERTPROXY_HTTP_PORT": "off", "CERTPROXY_DOMAINS": "localhost",
           "CERTPROXY_EMAIL": "ops@certproxy.test", "CERTPROXY_ACME_DIRECTORY": pebble.directory,
           "CERTPROXY_ACME_CA_BUNDLE": str(pebble.ca_bundle), "CERTPROXY_ACME_RETRY_MIN": "1"}
    # Requests through the port from its first second: bootstrap, validation, then Pebble's.
    ok, failures = [0], []
    done = threading.Event()

    def traffic() -> None:
        ctx = ssl._create_unverified_context()
        ctx.set_alpn_protocols(["h2", "http/1.1"])  # what browsers and Go clients offer
        request = b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        while not done.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                        ctx.wrap_socket(raw, server_hostname="localhost") as conn:
                    conn.sendall(request)
                    data = b""
                    while chunk := conn.recv(65536):
                        data += chunk
                if data.startswith(b"HTTP/1.1 200 "):
                    ok[0] += 1
                else:
                    failures.append(repr(data[:100]))
            except ConnectionRefusedError:
                time.sleep(0.01)  # not listening yet
            except (OSError, ssl.SSLError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

    cp = start_certproxy(tmp_path, {port: registry.url}, store, extra_env=env, wait=False)
    loop = threading.Thread(target=traffic)
    loop.start()
    try:
        wait_for(lambda: tcp_open(port), 20, "the TLS listener", cp.proc, cp.log)
        started = time.monotonic()
        roots = pebble.roots_pem()
        wait_for(lambda: verifies(port, roots=roots), 60, "a certificate validated over tls-alpn-01", cp.proc, cp.log)
        took = time.monotonic() - started
        assert cp.wait_output("challenge localhost: tls-alpn-01 answered")
        assert "listening on" in cp.output() and "(http)" not in cp.output()  # no plain listener at all
        time.sleep(0.5)
        pending = store / "challenges" / "tls-alpn-01"
        assert not pending.exists() or not list(pending.iterdir())  # the validation certificate is gone
        # certproxy renew with tls-alpn-01: the running proxy answers for it.
        serial = peer_certificate(port, roots=roots).serial_number
        renew = subprocess.run([sys.executable, "-m", "certproxy", "renew", "--force"], capture_output=True,
                               text=True, timeout=120, env=cp.env)
        assert renew.returncode == 0, renew.stdout + renew.stderr
        wait_for(lambda: peer_certificate(port, roots=roots).serial_number != serial, 10,
                 "the renewed certificate", cp.proc, cp.log)
    finally:
        done.set()
        loop.join(30)
        stop_process(cp.proc)
        pebble.stop()
    assert not failures, failures[:5]
    assert ok[0] >= 20, ok
    measure("tls-alpn-01: start to a Pebble certificate, no port 80; requests meanwhile ok / failed",
            f"{took:.1f} s; {ok[0]} / {len(failures)}")


def client_hello(server_name: str, alpn: list[str]) -> bytes:
    """The first flight of Python's own TLS client (OpenSSL), as it goes on the wire."""
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_client_hello_reader_sees_sni_and_alpn_and_never_crashes() -> None:
    from certproxy.proxy.hello import Hello, NeedMore, parse_client_hello

    data = client_hello("Registry.Example.Test", ["acme-tls/1"])
    assert parse_client_hello(data) == Hello("registry.example.test", ("acme-tls/1",))
    data = client_hello("localhost", ["h2", "http/1.1"])
    assert parse_client_hello(data) == Hello("localhost", ("h2", "http/1.1"))
    for cut in range(len(data)):  # every prefix: more is needed, never an exception
        with pytest.raises(NeedMore):
            parse_client_hello(data[:cut])
    assert parse_client_hello(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") is None  # plain HTTP: TLS refuses it
    # Damaged lengths inside a complete record: None (TLS then fails on its own), never a crash.
    for i in range(5, len(data)):
        damaged = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
        result = parse_client_hello(damaged) if damaged[:5] == data[:5] else None
        assert result is None or isinstance(result, Hello)
