"""Hostile and ambiguous requests: refused with a clear status, the connection
closed, nothing forwarded (a recording upstream proves it), no crash."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Callable

import pytest

from support.procs import CertproxyProcess, free_port
from support.rawhttp import exchange, open_conn, read_response
from support.upstreams import RawUpstream

pytestmark = pytest.mark.integration

Factory = Callable[..., CertproxyProcess]

SMUGGLING = {
    "content-length and transfer-encoding": "POST / HTTP/1.1\r\n{H}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "conflicting content-length": "POST / HTTP/1.1\r\n{H}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "duplicate content-length": "POST / HTTP/1.1\r\n{H}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "transfer-encoding not chunked": "POST / HTTP/1.1\r\n{H}Transfer-Encoding: gzip\r\n\r\nxx",
    "chunked not last": "POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "obsolete line folding": "GET / HTTP/1.1\r\n{H}X-A: a\r\n b\r\n\r\n",
    "bare LF": "GET / HTTP/1.1\n{H}\n",
    "bare CR in a header": "GET / HTTP/1.1\r\n{H}X-A: a\rb\r\n\r\n",
    "NUL in the target": "GET /a\x00b HTTP/1.1\r\n{H}\r\n",
    "NUL in a header": "GET / HTTP/1.1\r\n{H}X-A: a\x00b\r\n\r\n",
    "invalid chunk size": "POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "whitespace before the colon": "GET / HTTP/1.1\r\n{H}X-A : a\r\n\r\n",
    # Connection never removes what frames the request (the body would become a request)
    "connection names content-length": "POST /v2/a HTTP/1.1\r\n{H}Connection: Content-Length\r\n"
                                       "Content-Length: 43\r\n\r\nGET /SMUGGLED HTTP/1.1\r\nHost: x\r\n"
                                       "X-A: 1\r\n\r\n",
    "connection names the start of a request": "POST /v2/a HTTP/1.1\r\n{H}Connection: keep-alive, content-length"
                                               "\r\nContent-Length: 27\r\n\r\nGET /SMUGGLED HTTP/1.1\r\nX: ",
    "connection names host": "GET /v2/ HTTP/1.1\r\n{H}Connection: keep-alive, Host\r\n\r\n",
    "connection names transfer-encoding": "POST / HTTP/1.1\r\n{H}Connection: Transfer-Encoding\r\n"
                                          "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "upgrade with a body": "POST / HTTP/1.1\r\n{H}Connection: Upgrade\r\nUpgrade: h2c\r\n"
                           "Content-Length: 5\r\n\r\nhello",
}


@pytest.fixture(params=["1", "2"], ids=["1-worker", "2-workers"])
async def front(request: pytest.FixtureRequest, certproxy_factory: Factory, store: Path):  # type: ignore[no-untyped-def]
    """certproxy alone, and as two workers on the same port (CERTPROXY_WORKERS)."""
    up = await RawUpstream().start()
    port = free_port()
    cp = await asyncio.to_thread(certproxy_factory, {port: up.url}, store,
                                 extra_env={"CERTPROXY_WORKERS": request.param})
    yield cp, port, up
    await up.close()


async def test_ambiguous_requests_get_400_and_nothing_is_forwarded(front, client_ssl: ssl.SSLContext) -> None:  # type: ignore[no-untyped-def]
    cp, port, up = front
    host = f"Host: localhost:{port}\r\n"
    for name, template in SMUGGLING.items():
        reader, writer = await open_conn(port, client_ssl)
        writer.write(template.replace("{H}", host).encode("latin-1"))
        await writer.drain()
        resp = await asyncio.wait_for(read_response(reader), 10)
        assert resp.status == 400, name
        body = resp.body.decode()
        assert body.startswith("certproxy: ") and body.count("\n") == 1, (name, body)
        assert await asyncio.wait_for(reader.read(), 5) == b"", name  # connection closed
        writer.close()
    assert up.forwarded == []
    assert "Traceback" not in cp.output()


async def test_pipelined_requests_stay_in_step(front, client_ssl: ssl.SSLContext) -> None:  # type: ignore[no-untyped-def]
    cp, port, up = front
    host = f"Host: localhost:{port}\r\n"
    reader, writer = await open_conn(port, client_ssl)
    writer.write((f"POST /one HTTP/1.1\r\n{host}Content-Length: 3\r\n\r\nabc"
                  f"GET /two HTTP/1.1\r\n{host}\r\n"
                  f"GET /three HTTP/1.1\r\n{host}\r\n").encode())
    await writer.drain()
    for _ in range(3):
        assert (await asyncio.wait_for(read_response(reader), 10)).status == 200
    writer.close()
    assert [r.request_line.split()[1] for r in up.forwarded] == ["/one", "/two", "/three"]
    assert up.forwarded[0].body == b"abc"


async def test_limits_connect_trace_and_absolute_form(front, client_ssl: ssl.SSLContext) -> None:  # type: ignore[no-untyped-def]
    cp, port, up = front
    host = f"Host: localhost:{port}\r\n"
    long_line = await exchange(port, f"GET /{'a' * 20000} HTTP/1.1\r\n{host}\r\n".encode(), client_ssl)
    assert long_line.status == 414 and long_line.body == b"certproxy: 414 Request-URI Too Long: request line too long\n"
    big_header = await exchange(port, f"GET / HTTP/1.1\r\n{host}X-A: {'a' * 20000}\r\n\r\n".encode(),
                                client_ssl)
    assert big_header.status == 431
    many = "".join(f"X-H{i}: v\r\n" for i in range(200))
    too_many = await exchange(port, f"GET / HTTP/1.1\r\n{host}{many}\r\n".encode(), client_ssl)
    assert too_many.status == 431, too_many.body
    for method in ("CONNECT", "TRACE"):
        target = "example.com:443" if method == "CONNECT" else "/"
        resp = await exchange(port, f"{method} {target} HTTP/1.1\r\nHost: example.com\r\n\r\n".encode(),
                              client_ssl)
        assert resp.status == 405 and resp.header("Allow"), method
    # Absolute-form naming a foreign site still goes to this route's upstream only.
    resp = await exchange(port, b"GET http://example.com/v2/x?y=1 HTTP/1.1\r\nHost: example.com\r\n\r\n",
                          client_ssl)
    assert resp.status == 200
    assert up.forwarded[-1].request_line == "GET /v2/x?y=1 HTTP/1.1"
    assert up.forwarded[-1].header("Host") == ["example.com"]
    star = await exchange(port, f"OPTIONS * HTTP/1.1\r\n{host}\r\n".encode(), client_ssl)
    assert star.status == 400
    assert len(up.forwarded) == 1
    assert "Traceback" not in cp.output()


async def test_hsts_on_tls_responses_and_its_off_switch(
        certproxy_factory: Factory, store: Path, client_ssl: ssl.SSLContext) -> None:
    up = await RawUpstream().start()
    on, off = free_port(), free_port()
    await asyncio.to_thread(certproxy_factory, {on: up.url}, store)
    await asyncio.to_thread(certproxy_factory, {off: up.url}, store,
                            extra_env={"CERTPROXY_HSTS_MAX_AGE": "off"})
    resp = await exchange(on, f"GET / HTTP/1.1\r\nHost: localhost:{on}\r\n\r\n".encode(), client_ssl)
    assert resp.header("Strict-Transport-Security") == ["max-age=31536000"]
    resp = await exchange(off, f"GET / HTTP/1.1\r\nHost: localhost:{off}\r\n\r\n".encode(), client_ssl)
    assert resp.header("Strict-Transport-Security") == []
    await up.close()


async def test_connection_bounds(certproxy_factory: Factory, store: Path, client_ssl: ssl.SSLContext) -> None:
    up = await RawUpstream().start()
    port = free_port()
    cp = await asyncio.to_thread(certproxy_factory, {port: up.url}, store, extra_env={
        "CERTPROXY_HEADER_TIMEOUT": "1", "CERTPROXY_TLS_HANDSHAKE_TIMEOUT": "1",
        "CERTPROXY_KEEPALIVE_TIMEOUT": "1", "CERTPROXY_MAX_CONNECTIONS": "2"})
    loop = asyncio.get_running_loop()

    async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
        start = loop.time()
        while await asyncio.wait_for(reader.read(65536), seconds + 2):
            pass
        return loop.time() - start

    # Slowloris: a request head dribbled a byte at a time is cut off.
    reader, writer = await open_conn(port, client_ssl)
    writer.write(f"GET / HTTP/1.1\r\nHost: localhost:{port}\r\n".encode())

    async def dribble() -> None:
        for b in b"X-Slow: " + b"a" * 30:
            writer.write(bytes([b]))
            await asyncio.sleep(0.25)

    dribbler = asyncio.create_task(dribble())
    assert await closed_within(reader, 1) < 3
    dribbler.cancel()
    writer.close()
    # A TCP connection that never starts its TLS handshake is closed.
    raw_reader, raw_writer = await asyncio.open_connection("127.0.0.1", port)
    assert await closed_within(raw_reader, 1) < 3
    raw_writer.close()
    # An idle keep-alive connection is closed after its timeout.
    reader, writer = await open_conn(port, client_ssl)
    writer.write(f"GET / HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
    assert (await read_response(reader)).status == 200
    assert await closed_within(reader, 1) < 3
    writer.close()
    # Past the connection cap, a clean 503 instead of a hang.
    held = [await open_conn(port, client_ssl) for _ in range(2)]
    for r, w in held:
        w.write(f"GET / HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
        assert (await read_response(r)).status == 200
    r3, w3 = await open_conn(port, client_ssl)
    refused = await asyncio.wait_for(read_response(r3), 5)
    assert refused.status == 503 and refused.header("Retry-After") == ["1"]
    w3.close()
    for _, w in held:
        w.close()
    await asyncio.sleep(0.3)
    resp = await exchange(port, f"GET / HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode(), client_ssl)
    assert resp.status == 200
    assert "Traceback" not in cp.output()
    await up.close()


async def test_plain_http_on_a_tls_port_gets_a_readable_answer(front, client_ssl: ssl.SSLContext) -> None:  # type: ignore[no-untyped-def]
    cp, port, up = front
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /v2/_catalog?n=5 HTTP/1.1\r\nHost: reg.example.com:{port}\r\nUser-Agent: docker\r\n\r\n"
                 .encode())
    await writer.drain()
    resp = await asyncio.wait_for(read_response(reader), 5)
    assert resp.status == 400
    assert resp.body == (f"certproxy: 400 Bad Request: this port speaks HTTPS, not plain HTTP: "
                         f"use https://reg.example.com:{port}/v2/_catalog?n=5\n").encode()
    assert resp.header("Connection") == ["close"]  # the client closes; the handshake timeout bounds the rest
    writer.close()
    # TLS garbage: a clean close, no hang.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x16\x03\x01\x00\x05hello-not-tls" * 3)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)  # closed within 5 s, at most a TLS alert
    assert data == b"" or data[:1] == b"\x15"
    writer.close()
    assert up.forwarded == []
    # The listener still serves TLS.
    ok = await exchange(port, f"GET / HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode(), client_ssl)
    assert ok.status == 200
