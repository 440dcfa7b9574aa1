"""The streaming proxy, end to end: a real certproxy process, real TLS with a
trustme CA, and raw upstreams that record exactly what arrives."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import aiohttp
import pytest

from support.procs import CertproxyProcess
from support.rawhttp import exchange, open_conn
from support.upstreams import Recorded, RawUpstream

pytestmark = pytest.mark.integration

Factory = Callable[..., CertproxyProcess]


async def start(factory: Factory, upstream_url: str, store: Path, **kw: object) -> tuple[CertproxyProcess, int]:
    from support.procs import free_port
    port = free_port()
    cp = await asyncio.to_thread(factory, {port: upstream_url}, store, **kw)
    return cp, port


async def test_request_passes_unchanged_with_forwarded_headers(
        certproxy_factory: Factory, store: Path, client_ssl: ssl.SSLContext) -> None:
    async def respond(rec: Recorded, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Up-Hop\r\n"
                b"X-Up-Hop: 1\r\nKeep-Alive: timeout=5\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
                b"Docker-Content-Digest: sha256:abc\r\nDocker-Distribution-Api-Version: registry/2.0\r\n"
                b"WWW-Authenticate: Bearer realm=\"https://auth\",service=\"reg\"\r\n"
                b"Location: " + f"http://127.0.0.1:{up.port}/v2/next".encode() + b"\r\n\r\nok")

    up = await RawUpstream(respond).start()
    cp, port = await start(certproxy_factory, up.url, store)
    target = "/v2/library%2Fx/manifests/sha256:abc?n=1&last=a%2Fb&q=%7E"
    request = (
        f"GET {target} HTTP/1.1\r\nHost: localhost:{port}\r\n"
        "Accept: application/vnd.oci.image.index.v1+json\r\n"
        "Accept: application/vnd.docker.distribution.manifest.v2+json\r\n"
        "Authorization: Bearer secret-token\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
        "Keep-Alive: timeout=5\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n"
        "X-Forwarded-Proto: http\r\nRange: bytes=0-10\r\nDocker-Upload-UUID: u1\r\n\r\n"
    ).encode()
    resp = await exchange(port, request, client_ssl)
    await up.close()

    rec = up.forwarded[0]
    assert rec.request_line == f"GET {target} HTTP/1.1"
    assert rec.header("Accept") == ["application/vnd.oci.image.index.v1+json",
                                    "application/vnd.docker.distribution.manifest.v2+json"]
    assert rec.header("Host") == [f"localhost:{port}"]
    assert rec.header("Authorization") == ["Bearer secret-token"]
    assert rec.header("Range") == ["bytes=0-10"] and rec.header("Docker-Upload-UUID") == ["u1"]
    for hop in ("X-Hop", "Keep-Alive"):
        assert rec.header(hop) == []
    assert rec.header("X-Forwarded-For") == ["127.0.0.1"] and rec.header("X-Real-IP") == ["127.0.0.1"]
    assert rec.header("X-Forwarded-Proto") == ["https"]
    assert rec.header("X-Forwarded-Host") == [f"localhost:{port}"]
    assert rec.header("X-Forwarded-Port") == [str(port)]
    assert rec.header("User-Agent") == [] and rec.header("Accept-Encoding") == []

    assert resp.status == 200 and resp.body == b"ok"
    assert resp.header("Set-Cookie") == ["a=1", "b=2"]
    assert resp.header("X-Up-Hop") == [] and resp.header("Keep-Alive") == []
    assert resp.header("Docker-Content-Digest") == ["sha256:abc"]
    assert resp.header("WWW-Authenticate") == ['Bearer realm="https://auth",service="reg"']
    assert resp.header("Location") == [f"https://localhost:{port}/v2/next"]
    assert await asyncio.to_thread(cp.wait_output, f'"GET {target}" 200')


async def test_bodies_keep_their_framing_and_head_keeps_content_length(
        certproxy_factory: Factory, store: Path, client_ssl: ssl.SSLContext) -> None:
    async def respond(rec: Recorded, w: asyncio.StreamWriter) -> None:
        method = rec.request_line.split()[0]
        if method == "HEAD":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n"
                    b"Docker-Content-Digest: sha256:m\r\n\r\n")
        elif rec.request_line.split()[1] == "/chunked":
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        else:
            w.write(b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%s" % (len(rec.body), rec.body))

    up = await RawUpstream(respond).start()
    cp, port = await start(certproxy_factory, up.url, store)
    host = f"Host: localhost:{port}\r\n"
    head = await exchange(port, f"HEAD /v2/x/manifests/latest HTTP/1.1\r\n{host}\r\n".encode(),
                          client_ssl, method="HEAD")
    assert head.status == 200 and head.header("Content-Length") == ["1234"]
    assert head.header("Docker-Content-Digest") == ["sha256:m"]

    chunked = await exchange(port, f"GET /chunked HTTP/1.1\r\n{host}\r\n".encode(), client_ssl)
    assert chunked.header("Transfer-Encoding") == ["chunked"] and chunked.body == b"hello world"

    put = await exchange(port, (f"PATCH /v2/x/blobs/uploads/u HTTP/1.1\r\n{host}"
                                "Transfer-Encoding: chunked\r\n\r\n"
                                "3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n").encode(), client_ssl)
    assert put.status == 201 and put.body == b"abcdefg"
    assert up.forwarded[-1].header("Transfer-Encoding") == ["chunked"]
    assert up.forwarded[-1].header("Content-Length") == []

    put = await exchange(port, (f"PUT /v2/x/blobs/uploads/u?digest=sha256%3A1 HTTP/1.1\r\n{host}"
                                "Content-Length: 7\r\n\r\nabcdefg").encode(), client_ssl)
    assert put.status == 201 and put.header("Content-Length") == ["7"]
    assert up.forwarded[-1].header("Content-Length") == ["7"]
    assert up.forwarded[-1].header("Transfer-Encoding") == []
    assert up.forwarded[-1].request_line == "PUT /v2/x/blobs/uploads/u?digest=sha256%3A1 HTTP/1.1"
    await up.close()


async def test_upstream_refused_gives_502_with_one_line(
        certproxy_factory: Factory, store: Path, client_ssl: ssl.SSLContext) -> None:
    from support.procs import free_port
    dead = f"http://127.0.0.1:{free_port()}"
    cp, port = await start(certproxy_factory, dead, store)
    resp = await exchange(port, f"GET /v2/ HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode(),
                          client_ssl)
    assert resp.status == 502
    # One line with the status and reason phrase; the upstream's address and the
    # system error go to the log, never to the client.
    assert resp.body == b"certproxy: 502 Bad Gateway: the upstream is not reachable or did not answer properly\n"
    assert await asyncio.to_thread(cp.wait_output, f"upstream {dead} of port {port} /v2/: cannot connect: "
                                   "Connection refused")
    assert resp.header("Docker-Distribution-Api-Version") == ["registry/2.0"]
    assert "Traceback" not in cp.output()


async def test_silent_upstream_gives_504(
        certproxy_factory: Factory, store: Path, client_ssl: ssl.SSLContext) -> None:
    async def never(rec: Recorded, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    up = await RawUpstream(never).start()
    cp, port = await start(certproxy_factory, up.url, store,
                           extra_env={"CERTPROXY_UPSTREAM_READ_TIMEOUT": "1"})
    started = time.monotonic()
    resp = await exchange(port, f"GET /v2/ HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode(),
                          client_ssl)
    assert resp.status == 504 and b"did not answer in time" in resp.body
    assert time.monotonic() - started < 10
    await up.close()


async def test_a_slow_finalize_is_waited_for_within_the_read_timeout(
        certproxy_factory: Factory, store: Path, client_ssl: ssl.SSLContext) -> None:
    """The final PUT of a layer: the registry answers only once it has moved and verified
    the blob. Scaled down (1 s for the old 300 s default, 6 s for the new 900 s), an upstream
    silent for 2.5 s gets its answer through; with the old bound it was a 504."""
    async def finalize(rec: Recorded, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(2.5)
        w.write(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")

    up = await RawUpstream(finalize).start()
    put = b"PUT /v2/r/blobs/uploads/u?digest=sha256:00 HTTP/1.1\r\nHost: localhost:%d\r\nContent-Length: 4\r\n\r\nlast"
    for timeout, status in (("6", 201), ("1", 504)):
        cp, port = await start(certproxy_factory, up.url, store,
                               extra_env={"CERTPROXY_UPSTREAM_READ_TIMEOUT": timeout})
        resp = await exchange(port, put % port, client_ssl)
        assert resp.status == status, (timeout, resp.body)
    assert [r.body for r in up.forwarded] == [b"last", b"last"]
    await up.close()


async def test_client_gone_mid_upload_aborts_the_upstream_request(
        certproxy_factory: Factory, store: Path, client_ssl: ssl.SSLContext) -> None:
    up = await RawUpstream().start()
    cp, port = await start(certproxy_factory, up.url, store)
    reader, writer = await open_conn(port, client_ssl)
    writer.write(f"PUT /v2/x/blobs/uploads/u HTTP/1.1\r\nHost: localhost:{port}\r\n"
                 f"Content-Length: {10 << 20}\r\n\r\n".encode() + b"x" * (1 << 20))
    await writer.drain()
    await asyncio.sleep(0.5)
    writer.transport.abort()
    await asyncio.wait_for(up.aborted.wait(), 10)
    assert up.forwarded == []  # the upstream never saw a complete request
    # The proxy is fine afterwards.
    resp = await exchange(port, f"GET / HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode(), client_ssl)
    assert resp.status == 200
    assert await asyncio.to_thread(cp.wait_output, "went away mid-upload")
    assert "Traceback" not in cp.output()
    await up.close()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_upstream_gone_mid_response_cuts_the_client_off(
        framing: str, certproxy_factory: Factory, store: Path, client_ssl: ssl.SSLContext) -> None:
    async def die(rec: Recorded, w: asyncio.StreamWriter) -> None:
        if framing == "chunked":
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + b"10000\r\n" + b"y" * 0x10000 + b"\r\n")
        else:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n" + b"y" * 65536)
        await w.drain()
        await asyncio.sleep(0.2)
        w.transport.abort()
        raise ConnectionResetError

    up = await RawUpstream(die).start()
    cp, port = await start(certproxy_factory, up.url, store)
    resp = await exchange(port, f"GET /v2/x/blobs/b HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode(),
                          client_ssl)
    assert resp.status == 200 and not resp.complete
    assert "Traceback" not in cp.output()
    await up.close()


async def test_healthz_and_healthcheck_follow_the_served_certificate(
        certproxy_factory: Factory, tmp_path: Path, ca: object, client_ssl: ssl.SSLContext) -> None:
    import datetime as dt
    import trustme
    assert isinstance(ca, trustme.CA)
    now = dt.datetime.now(dt.timezone.utc)
    leaf = ca.issue_cert("localhost", not_before=now - dt.timedelta(hours=1),
                         not_after=now + dt.timedelta(seconds=8))
    live = tmp_path / "s" / "live" / "localhost"
    live.mkdir(parents=True)
    (live / "fullchain.pem").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    (live / "privkey.pem").write_bytes(leaf.private_key_pem.bytes())
    up = await RawUpstream().start()
    cp, port = await start(certproxy_factory, up.url, tmp_path / "s")
    env = {**os.environ, "CERTPROXY_HTTP_PORT": str(cp.http_port)}

    def healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "certproxy", "healthcheck", *args],
                              env=env, capture_output=True, text=True, timeout=30)

    async with aiohttp.ClientSession() as s:
        async with s.get(cp.healthz) as r:
            body = await r.json()
            assert r.status == 200 and body["status"] == "ok"
        async with s.get(f"https://localhost:{port}/healthz", ssl=client_ssl) as r:
            assert r.status == 200 and (await r.json())["upstreams"][0]["reachable"] is True
    cert = body["certificates"][0]
    assert cert["name"] == "localhost" and cert["self_signed"] is False and cert["days_left"] < 1
    assert cert["issuer"] == "certproxy test CA" and cert["domains"] == ["localhost"]
    assert (await asyncio.to_thread(healthcheck)).returncode == 0
    expired = now + dt.timedelta(seconds=8.5)
    await asyncio.sleep(max(0.0, expired.timestamp() - time.time()))
    async with aiohttp.ClientSession() as s:
        async with s.get(cp.healthz) as r:
            assert r.status == 503 and (await r.json())["status"] == "failing"
        # What a Kubernetes probe asks: the process answers, so the pod stays in the
        # Service and the CA's HTTP-01 request for the renewal can still reach it.
        async with s.get(cp.healthz + "?probe=live") as r:
            assert r.status == 200 and await r.json() == {"status": "live"}
    result = await asyncio.to_thread(healthcheck)
    assert result.returncode == 1 and "503" in result.stderr
    from support.procs import free_port
    nothing = await asyncio.to_thread(healthcheck, "--url", f"http://127.0.0.1:{free_port()}/healthz")
    assert nothing.returncode == 1 and "unhealthy" in nothing.stderr
    await up.close()


async def test_bootstrap_certificate_is_served_and_reported(
        certproxy_factory: Factory, tmp_path: Path) -> None:
    up = await RawUpstream().start()
    cp, port = await start(certproxy_factory, up.url, tmp_path / "empty-store",
                           extra_env={"CERTPROXY_DOMAINS": "reg.example.test",
                                      "CERTPROXY_ACME": "off"})
    async with aiohttp.ClientSession() as s:
        async with s.get(cp.healthz) as r:
            body = await r.json()
    assert r.status == 200 and body["status"] == "degraded"
    assert "serving the self-signed bootstrap certificate" in body["problems"]
    assert body["certificates"][0]["self_signed"] is True
    assert body["certificates"][0]["domains"] == ["reg.example.test"]
    assert "self-signed bootstrap certificate" in cp.output()
    assert not any((tmp_path / "empty-store" / "live").iterdir())
    key = tmp_path / "empty-store" / "bootstrap" / "reg.example.test" / "privkey.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    await up.close()


async def test_sigterm_lets_the_request_in_flight_finish(
        certproxy_factory: Factory, store: Path, client_ssl: ssl.SSLContext) -> None:
    async def slow(rec: Recorded, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(1.5)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")

    up = await RawUpstream(slow).start()
    cp, port = await start(certproxy_factory, up.url, store)
    pending = asyncio.create_task(exchange(
        port, f"GET /slow HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode(), client_ssl))
    await asyncio.sleep(0.5)
    cp.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    with pytest.raises(OSError):
        await open_conn(port, client_ssl)   # no longer accepting
    resp = await pending
    assert resp.status == 200 and resp.body == b"done" and resp.complete
    assert await asyncio.to_thread(cp.proc.wait, 15) == 0
    await up.close()


async def test_json_access_log(certproxy_factory: Factory, store: Path, client_ssl: ssl.SSLContext) -> None:
    up = await RawUpstream().start()
    cp, port = await start(certproxy_factory, up.url, store, args=("--log-format", "json"))
    resp = await exchange(port, (f"POST /v2/x/blobs/uploads/?a=1 HTTP/1.1\r\nHost: localhost:{port}\r\n"
                                 "Content-Length: 3\r\n\r\nabc").encode(), client_ssl)
    assert resp.status == 200
    assert await asyncio.to_thread(cp.wait_output, '"method":"POST"')
    lines = [json.loads(line) for line in cp.output().splitlines() if line.startswith("{")]
    access = [e for e in lines if e["logger"] == "certproxy.access" and e["method"] == "POST"]
    assert access and access[0]["target"] == "/v2/x/blobs/uploads/?a=1"
    assert access[0]["status"] == 200 and access[0]["bytes_in"] == 3
    assert access[0]["bytes_out"] == len(b"hello from upstream\n") and access[0]["client"] == "127.0.0.1"
    assert access[0]["upstream"] == up.url
    await up.close()


async def test_stale_pooled_connection_is_retried_once_for_idempotent_requests_only(
        certproxy_factory: Factory, store: Path, client_ssl: ssl.SSLContext) -> None:
    # The upstream answers the first request of each connection, then closes the
    # connection when it is reused: an idle-timeout race with certproxy's pool.
    per_connection: dict[object, int] = {}

    async def respond(rec: Recorded, w: asyncio.StreamWriter) -> None:
        key = w.get_extra_info("peername")  # unique per connection (an id() can be reused)
        per_connection[key] = per_connection.get(key, 0) + 1
        if per_connection[key] > 1:
            w.transport.abort()
            raise ConnectionResetError
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    up = await RawUpstream(respond).start()
    cp, port = await start(certproxy_factory, up.url, store)
    host = f"Host: localhost:{port}\r\n"
    for _ in range(3):
        resp = await exchange(port, f"GET /v2/ HTTP/1.1\r\n{host}\r\n".encode(), client_ssl)
        assert resp.status == 200 and resp.body == b"ok"
    gets = [r for r in up.forwarded if r.request_line.startswith("GET")]
    # Every request after the first use of a connection hit a closed pooled
    # connection and was retried once on a new one: never more than twice each.
    assert 3 < len(gets) <= 6
    posts_before = len(up.forwarded)
    resp = await exchange(port, f"POST /v2/x/blobs/uploads/ HTTP/1.1\r\n{host}Content-Length: 3\r\n\r\nabc"
                          .encode(), client_ssl)
    assert resp.status == 502 and resp.body.startswith(b"certproxy: 502 Bad Gateway: ")
    assert await asyncio.to_thread(cp.wait_output, "/v2/x/blobs/uploads/: closed the connection without an answer")
    assert len(up.forwarded) == posts_before + 1  # never sent twice
    await up.close()


@pytest.mark.parametrize("fault", ["garbage", "hang-mid-body", "trickle"])
async def test_upstream_faults(fault: str, certproxy_factory: Factory, store: Path,
                               client_ssl: ssl.SSLContext) -> None:
    async def respond(rec: Recorded, w: asyncio.StreamWriter) -> None:
        if fault == "garbage":
            w.write(b"SPDY/9 what is this\r\n\r\n")
        elif fault == "hang-mid-body":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
            await w.drain()
            await asyncio.sleep(30)
        else:  # 20 bytes over ~2 s: slow, but never silent past the read timeout
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n")
            for _ in range(20):
                await w.drain()
                await asyncio.sleep(0.1)
                w.write(b"t")

    up = await RawUpstream(respond).start()
    cp, port = await start(certproxy_factory, up.url, store,
                           extra_env={"CERTPROXY_UPSTREAM_READ_TIMEOUT": "1"})
    started = time.monotonic()
    resp = await exchange(port, f"GET /v2/x HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode(),
                          client_ssl, timeout=20)
    if fault == "garbage":
        assert resp.status == 502 and resp.body.startswith(b"certproxy: 502 Bad Gateway: ")
        assert await asyncio.to_thread(cp.wait_output, "sent a malformed response")
    elif fault == "hang-mid-body":
        assert resp.status == 200 and not resp.complete  # cut, never a short body that looks whole
        assert time.monotonic() - started < 10
    else:
        assert resp.status == 200 and resp.complete and resp.body == b"t" * 20
    # Later requests still work.
    ok = await exchange(port, f"GET /healthz HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode(), client_ssl)
    assert ok.status == 200
    assert "Traceback" not in cp.output()
    await up.close()


async def test_a_slow_reader_is_not_disconnected(certproxy_factory: Factory, store: Path,
                                                 client_ssl: ssl.SSLContext) -> None:
    size = 16 << 20

    async def big(rec: Recorded, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size >> 16):
            w.write(b"z" * 65536)
            await w.drain()

    up = await RawUpstream(big).start()
    cp, port = await start(certproxy_factory, up.url, store,
                           extra_env={"CERTPROXY_UPSTREAM_READ_TIMEOUT": "1"})
    reader, writer = await open_conn(port, client_ssl)
    writer.write(f"GET /big HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    got = 0
    while got < size:  # about 3 s of reading, with pauses longer than the upstream read timeout
        chunk = await asyncio.wait_for(reader.read(1 << 20), 10)
        assert chunk, f"cut off after {got} bytes"
        got += len(chunk)
        if got % (4 << 20) < len(chunk):
            await asyncio.sleep(1.5)
    writer.close()
    assert got == size
    await up.close()
