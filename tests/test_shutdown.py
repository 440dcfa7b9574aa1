"""SIGTERM during a push: the upload either completes within the grace period
and is in the registry, or fails visibly for the client and is not."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import aiohttp
import pytest

from support.procs import CertproxyProcess, free_port
from support.registry import Registry

pytestmark = pytest.mark.integration

MiB = 1 << 20


def in_registry(registry: Registry, repo: str, digest: str) -> bool:
    req = urllib.request.Request(f"{registry.url}/v2/{repo}/blobs/{digest}", method="HEAD")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status == 200
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise


async def under_way(pushes: list[asyncio.Task[tuple[str, int | str]]], sending: list[asyncio.Event],
                    limit: float = 30) -> None:
    """Wait until every upload's body has begun; stop waiting once a push has ended (the
    assertions on its outcome then say what went wrong) or after ``limit`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not all(event.is_set() for event in sending):
        if any(push.done() for push in pushes) or loop.time() > end:
            return
        await asyncio.sleep(0.02)


async def slow_push(port: int, ctx: ssl.SSLContext, repo: str, chunks: int, pause: float,
                    sending: asyncio.Event | None = None) -> tuple[str, int | str]:
    """A monolithic blob upload of ``chunks`` MiB, one MiB every ``pause`` s; ``sending``
    is set once the PUT's body has begun (its connection is open and in use)."""
    chunk = os.urandom(MiB)
    digest = "sha256:" + hashlib.sha256(chunk * chunks).hexdigest()

    async def body():  # type: ignore[no-untyped-def]
        for _ in range(chunks):
            yield chunk
            if sending is not None:
                sending.set()
            await asyncio.sleep(pause)

    base = f"https://localhost:{port}/v2/{repo}/blobs/uploads/"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        async with s.post(base, ssl=ctx, data=b"") as r:
            location = r.headers["Location"]
        sep = "&" if "?" in location else "?"
        try:
            async with s.put(f"{location}{sep}digest={digest}", ssl=ctx, data=body(),
                             headers={"Content-Length": str(chunks * MiB),
                                      "Content-Type": "application/octet-stream"}) as r:
                return digest, r.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return digest, type(exc).__name__


@pytest.mark.parametrize("grace, chunks, pause, completes", [
    ("10", 32, 0.03, True),    # ~1 s of upload left when SIGTERM comes: it finishes
    ("1", 40, 0.1, False),     # ~4 s left, 1 s of grace: it is cut off
])
async def test_sigterm_during_a_push(grace: str, chunks: int, pause: float, completes: bool,
                                     certproxy_factory: Callable[..., CertproxyProcess],
                                     registry: Registry, store: Path, client_ssl: ssl.SSLContext) -> None:
    port = free_port()
    cp = await asyncio.to_thread(certproxy_factory, {port: registry.url}, store,
                                 extra_env={"CERTPROXY_SHUTDOWN_GRACE": grace})
    repo = f"shutdown/g{grace}"
    sending = asyncio.Event()
    push = asyncio.create_task(slow_push(port, client_ssl, repo, chunks, pause, sending))
    await under_way([push], [sending])  # the upload is under way, however busy the machine
    cp.proc.send_signal(signal.SIGTERM)
    digest, outcome = await push
    assert await asyncio.to_thread(cp.proc.wait, 30) == 0
    stored = await asyncio.to_thread(in_registry, registry, repo, digest)
    if completes:
        assert outcome == 201 and stored
    else:
        assert outcome != 201 and not stored  # visible to the client, nothing half-done upstream


async def test_sigterm_does_not_wait_for_a_silent_client(
        certproxy_factory: Callable[..., CertproxyProcess], registry: Registry, store: Path,
        client_ssl: ssl.SSLContext) -> None:
    """A client that got its answer and then neither reads nor closes (it never sends
    TLS close_notify) owes nothing: SIGTERM exits at once, not after the grace period."""
    port = free_port()
    cp = await asyncio.to_thread(certproxy_factory, {port: registry.url}, store,
                                 extra_env={"CERTPROXY_SHUTDOWN_GRACE": "20"})
    reader, writer = await asyncio.open_connection("localhost", port, ssl=client_ssl)
    writer.write(f"GET /v2/ HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    writer.transport.pause_reading()  # silent from here: certproxy's close_notify is never answered
    loop = asyncio.get_running_loop()
    started = loop.time()
    cp.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(cp.proc.wait, 30) == 0
    took = loop.time() - started
    writer.transport.abort()
    assert took < 5, f"exit took {took:.1f} s with nothing in flight"


async def test_a_handshake_under_way_at_sigterm_is_finished_and_its_request_served(
        certproxy_factory: Callable[..., CertproxyProcess], registry: Registry, store: Path,
        client_ssl: ssl.SSLContext) -> None:
    """The connection was accepted (it sits in no accept queue any more) but its TLS
    handshake had not begun when SIGTERM came: the handshake completes, its first request
    is answered with Connection: close, then certproxy exits. A replica being replaced in
    a rolling update sees exactly this for the connections of its last moment."""
    port = free_port()
    cp = await asyncio.to_thread(certproxy_factory, {port: registry.url}, store)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    await asyncio.sleep(0.3)  # accepted by certproxy; no ClientHello sent yet
    cp.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(cp.wait_output, "stopping: draining", 10)
    await asyncio.sleep(1.5)  # the listeners are closed; an idle process would be gone by now
    assert cp.proc.poll() is None

    def request() -> bytes:
        with client_ssl.wrap_socket(raw, server_hostname="localhost") as conn:
            conn.sendall(f"GET /v2/ HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
        return data

    answer = await asyncio.to_thread(request)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert b"\r\nconnection: close\r\n" in answer.lower()
    assert await asyncio.to_thread(cp.proc.wait, 30) == 0
