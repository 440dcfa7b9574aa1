"""A byte-exact HTTP/1.1 client over TLS or plain TCP, for tests that must see
(or send) exactly what goes over the wire."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass


def parse_headers(head: bytes) -> list[tuple[str, str]]:
    """The header lines of a raw message head, in order, repeated ones repeated."""
    out = []
    for line in head.decode("latin-1").split("\r\n")[1:]:
        if line:
            name, _, value = line.partition(":")
            out.append((name, value.strip()))
    return out


@dataclass
class RawResponse:
    status: int
    head: bytes
    body: bytes
    complete: bool  # the body ended where its framing said it would

    @property
    def headers(self) -> list[tuple[str, str]]:
        return parse_headers(self.head)

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> RawResponse:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    resp = RawResponse(status, head, b"", True)
    te = resp.header("Transfer-Encoding")
    cl = resp.header("Content-Length")
    try:
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return resp
        if te and te[-1].lower() == "chunked":
            body = bytearray()
            while True:
                size = int((await reader.readline()).strip().split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                body += await reader.readexactly(size)
                await reader.readexactly(2)
            resp.body = bytes(body)
        elif cl:
            resp.body = await reader.readexactly(int(cl[0]))
        else:
            resp.body = await reader.read()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, ssl.SSLError) as exc:
        resp.complete = False
        resp.body = getattr(exc, "partial", b"")
    return resp


async def open_conn(port: int, tls: ssl.SSLContext | None, host: str = "localhost"
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=tls, server_hostname=host if tls else None), 10)


async def exchange(port: int, request: bytes, tls: ssl.SSLContext | None = None,
                   method: str = "GET", timeout: float = 15) -> RawResponse:
    reader, writer = await open_conn(port, tls)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(read_response(reader, method), timeout)
    finally:
        writer.close()
