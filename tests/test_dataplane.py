"""HTTP/1.1 corners of the data plane that registry clients reach: interim
responses, HTTP/1.0 clients, bodies delimited by the upstream's close, an
upstream that answers before the request body is in, and a client that reuses
its connection across them. Real certproxy process, real TLS, raw upstreams."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Callable

import pytest

from support.procs import CertproxyProcess, free_port
from support.rawhttp import exchange, open_conn, read_response
from support.upstreams import RawUpstream, Recorded

pytestmark = pytest.mark.integration

Factory = Callable[..., CertproxyProcess]


async def start(factory: Factory, upstream_url: str, store: Path) -> tuple[CertproxyProcess, int]:
    port = free_port()
    cp = await asyncio.to_thread(factory, {port: upstream_url}, store)
    return cp, port


async def test_interim_100_continue_reaches_the_client_then_the_answer(
        certproxy_factory: Factory, store: Path, client_ssl: ssl.SSLContext) -> None:
    async def respond(rec: Recorded, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await w.drain()
        await asyncio.sleep(0.1)
        w.write(b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%s" % (len(rec.body), rec.body))

    up = await RawUpstream(respond).start()
    cp, port = await start(certproxy_factory, up.url, store)
    reader, writer = await open_conn(port, client_ssl)
    writer.write(f"PUT /v2/x/blobs/uploads/u HTTP/1.1\r\nHost: localhost:{port}\r\n"
                 "Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello".encode())
    interim = await asyncio.wait_for(read_response(reader), 10)
    final = await asyncio.wait_for(read_response(reader), 10)
    assert interim.status == 100 and final.status == 201 and final.body == b"hello"
    assert up.forwarded[0].header("Expect") == ["100-continue"]
    # The connection is still good for the next request: its interim and final answers, whole.
    writer.write(f"PUT /v2/x/blobs/uploads/v HTTP/1.1\r\nHost: localhost:{port}\r\n"
                 "Content-Length: 5\r\n\r\nagain".encode())
    interim = await asyncio.wait_for(read_response(reader), 10)
    final = await asyncio.wait_for(read_response(reader), 10)
    assert interim.status == 100 and final.status == 201 and final.body == b"again" and final.complete
    assert [r.request_line.split()[1] for r in up.forwarded] == ["/v2/x/blobs/uploads/u", "/v2/x/blobs/uploads/v"]
    writer.close()
    await up.close()


async def test_http10_client_and_a_body_delimited_by_the_upstreams_close(
        certproxy_factory: Factory, store: Path, client_ssl: ssl.SSLContext) -> None:
    async def respond(rec: Recorded, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"until-close " * 1000)
        await w.drain()
        w.close()
        raise ConnectionResetError  # end this upstream connection

    up = await RawUpstream(respond).start()
    cp, port = await start(certproxy_factory, up.url, store)
    # HTTP/1.1 client: the body goes out chunked, the connection stays usable.
    resp = await exchange(port, f"GET /a HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode(), client_ssl)
    assert resp.complete and resp.header("Transfer-Encoding") == ["chunked"]
    assert resp.body == b"until-close " * 1000
    # HTTP/1.0 client without Host: delimited by the close, and the upstream still gets a Host.
    resp = await exchange(port, b"GET /b HTTP/1.0\r\n\r\n", client_ssl)
    assert resp.status == 200 and resp.body == b"until-close " * 1000
    assert resp.header("Transfer-Encoding") == [] and resp.header("Connection") == ["close"]
    assert up.forwarded[-1].request_line == "GET /b HTTP/1.1"
    assert up.forwarded[-1].header("Host") == [up.url.removeprefix("http://")]
    assert "Traceback" not in cp.output()
    await up.close()


async def test_an_upstream_answer_before_the_body_closes_the_client_connection_cleanly(
        certproxy_factory: Factory, store: Path, client_ssl: ssl.SSLContext) -> None:
    heads: list[bytes] = []
    done = asyncio.Event()

    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n\r\ntoo large")
        await writer.drain()
        await done.wait()  # reads nothing more
        writer.close()

    server = await asyncio.start_server(early, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    cp, port = await start(certproxy_factory, url, store)
    reader, writer = await open_conn(port, client_ssl)
    writer.write(f"PUT /v2/x/blobs/uploads/u HTTP/1.1\r\nHost: localhost:{port}\r\n"
                 f"Content-Length: {8 << 20}\r\n\r\n".encode() + b"x" * 65536)
    resp = await asyncio.wait_for(read_response(reader), 10)
    assert resp.status == 413 and resp.body == b"too large"
    assert resp.header("Connection") == ["close"]  # the rest of the body is not read
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    assert len([h for h in heads if b"X-Forwarded-Proto" in h]) == 1
    ok = await exchange(port, f"GET /healthz HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode(), client_ssl)
    assert ok.status == 200
    assert "Traceback" not in cp.output()
    done.set()
    server.close()


async def test_pipelined_requests_mixing_own_answers_and_proxied_ones_keep_their_order(
        certproxy_factory: Factory, store: Path, client_ssl: ssl.SSLContext) -> None:
    async def respond(rec: Recorded, w: asyncio.StreamWriter) -> None:
        path = rec.request_line.split()[1].encode()
        await asyncio.sleep(0.05)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path))

    up = await RawUpstream(respond).start()
    cp, port = await start(certproxy_factory, up.url, store)
    host = f"Host: localhost:{port}\r\n"
    reader, writer = await open_conn(port, client_ssl)
    writer.write((f"GET /one HTTP/1.1\r\n{host}\r\n"
                  f"TRACE / HTTP/1.1\r\n{host}\r\n"
                  f"GET /healthz HTTP/1.1\r\n{host}\r\n"
                  f"PUT /two HTTP/1.1\r\n{host}Content-Length: 3\r\n\r\nabc"
                  f"GET /three HTTP/1.1\r\n{host}\r\n").encode())
    got = [await asyncio.wait_for(read_response(reader), 10) for _ in range(5)]
    assert [r.status for r in got] == [200, 405, 200, 200, 200]
    assert got[0].body == b"/one" and got[3].body == b"/two" and got[4].body == b"/three"
    assert b'"certificates"' in got[2].body
    writer.close()
    assert [r.request_line.split()[1] for r in up.forwarded] == ["/one", "/two", "/three"]
    await up.close()


async def test_a_client_silent_mid_upload_is_disconnected_after_the_read_timeout(
        certproxy_factory: Factory, store: Path, client_ssl: ssl.SSLContext) -> None:
    up = await RawUpstream().start()
    port = free_port()
    cp = await asyncio.to_thread(certproxy_factory, {port: up.url}, store,
                                 extra_env={"CERTPROXY_UPSTREAM_READ_TIMEOUT": "1"})
    reader, writer = await open_conn(port, client_ssl)
    writer.write(f"PUT /v2/x/blobs/uploads/u HTTP/1.1\r\nHost: localhost:{port}\r\n"
                 "Content-Length: 1000\r\n\r\n".encode() + b"x" * 100)
    await writer.drain()
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, no answer
    assert asyncio.get_running_loop().time() - started < 5
    writer.close()
    await asyncio.wait_for(up.aborted.wait(), 10)
    assert up.forwarded == []
    assert await asyncio.to_thread(cp.wait_output, "request body silent")
    await up.close()
