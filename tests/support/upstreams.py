"""Small raw-socket upstreams for proxy tests.

They speak just enough HTTP/1.1 to record exactly what certproxy sends (the
raw request head, byte for byte, and the body) and to misbehave on purpose:
never answer, die mid-body, trickle. They run on the test's event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from .rawhttp import parse_headers


@dataclass
class Recorded:
    head: bytes
    body: bytes

    @property
    def request_line(self) -> str:
        return self.head.split(b"\r\n", 1)[0].decode("latin-1")

    @property
    def headers(self) -> list[tuple[str, str]]:
        return parse_headers(self.head)

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


Responder = Callable[[Recorded, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> Recorded | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    rec = Recorded(head, b"")
    length = rec.header("Content-Length")
    if rec.header("Transfer-Encoding"):
        body = bytearray()
        while True:
            size = int((await reader.readline()).strip().split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                break
            body += await reader.readexactly(size)
            await reader.readline()
        rec.body = bytes(body)
    elif length:
        rec.body = await reader.readexactly(int(length[0]))
    return rec


async def ok_text(rec: Recorded, writer: asyncio.StreamWriter) -> None:
    body = b"hello from upstream\n"
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


@dataclass
class RawUpstream:
    respond: Responder = ok_text
    requests: list[Recorded] = field(default_factory=list)
    connections: int = 0
    closed: int = 0
    server: asyncio.Server | None = None
    # Set when a connection's request body was cut short (the proxy aborted it).
    aborted: asyncio.Event = field(default_factory=asyncio.Event)
    bytes_received: int = 0

    @property
    def forwarded(self) -> list[Recorded]:
        """Requests that certproxy forwarded for a client (not its health probes)."""
        return [r for r in self.requests if r.header("X-Forwarded-Proto")]

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> "RawUpstream":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                rec = await read_request(reader)
                if rec is None:
                    break
                self.requests.append(rec)
                await self.respond(rec, writer)
                await writer.drain()
        except asyncio.IncompleteReadError as exc:
            self.bytes_received += len(exc.partial)
            self.aborted.set()
        except (ConnectionError, asyncio.CancelledError):
            self.aborted.set()
        finally:
            self.closed += 1
            writer.close()
