"""The upstream side of a route: a pool of keep-alive connections to one upstream.

How this works: ``UpstreamPool`` keeps idle connections, most recently used
first, and opens new ones; ``UpstreamConnection`` is one of them, serving one
request at a time with a response parser of its own (llhttp through
``httptools``). The request it serves is seen only through ``ResponseSink``,
the small interface the exchange implements: the connection reports the
response (interim heads, the head, body pieces, the end), failures, and its
own write buffer filling and draining; it never reads or writes a field of
the exchange. Pooling state (which exchange a connection serves, whether it
was used before, whether it waits for an answer) changes only through
methods of the pool and the connection.

Framing of the response is the connection's business: it tells the sink
whether the body needs framing towards the client (no ``Content-Length``),
and ends a body delimited by the upstream's close itself. Bytes past the end
of a response (an upstream that sends more than it announced) are never
parsed as another response: the connection is not reused.

A malformed or unexpected answer (llhttp's errors, a head over
``MAX_HEAD_SIZE``, more than ``MAX_INTERIM`` interim answers, a ``101`` that
nothing asked for: certproxy never switches protocols) ends the connection
and is reported to the sink as a failure that is never retried: the request
reached the upstream, and sending it again would repeat it. No exception
leaves ``data_received``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, cast

import httptools

from .headers import Headers, framing
from .wire import MAX_HEAD_SIZE

log = logging.getLogger("certproxy.proxy")

WRITE_BUFFER_HIGH = 1 << 19
# Interim (1xx) answers relayed for one request at most; more is a malformed answer.
MAX_INTERIM = 10


@dataclass(frozen=True)
class PoolSettings:
    connect_timeout: float = 10.0
    # An upstream silent while it owes an answer. A registry may be silent for minutes
    # before it answers the final PUT of a large layer (it moves and verifies the blob).
    read_timeout: float = 900.0
    keepalive: float = 30.0  # an idle pooled connection is closed after this


class ResponseSink(Protocol):
    """What an upstream connection tells the request it serves (``Exchange``)."""

    def interim_response(self, status: int, reason: bytes, headers: Headers) -> None: ...

    def response_head(self, status: int, reason: bytes, headers: Headers, needs_framing: bool) -> None:
        """``needs_framing``: a body follows without ``Content-Length``."""

    def response_body(self, chunk: bytes) -> None: ...

    def response_complete(self, reusable: bool) -> None: ...

    def upstream_failed(self, reason: str, *, timeout: bool = False, retry: bool = False) -> None:
        """The connection failed and serves this request no more (the sink gives it up);
        ``retry``: it closed before any answer, so an idempotent request may be sent
        again on a fresh one."""

    def upstream_writable(self, writable: bool) -> None:
        """The connection's write buffer drained (True) or filled up (False)."""

    def batch(self, begin: bool) -> None:
        """One read from the upstream begins/ends: what it yields may go out as one write."""


class _HeadDone(Exception):
    """Stops the upstream parser after the head of a response to HEAD."""


class _Extra(Exception):
    """Stops the upstream parser at bytes past the end of a response."""


class _Malformed(Exception):
    """Stops the upstream parser at an answer certproxy does not relay (why: the message)."""


_RESOLVER_ERRORS = {
    socket.EAI_NONAME: "name does not resolve",
    socket.EAI_AGAIN: "name resolution failed for now (try again)",
    socket.EAI_FAIL: "name resolution failed",
}


def describe_os_error(exc: OSError) -> str:
    """One line for a failed connection, without a traceback (for the log)."""
    if isinstance(exc, socket.gaierror):
        return f"cannot connect: {_RESOLVER_ERRORS.get(exc.errno or 0, 'name does not resolve')}"
    if exc.errno:
        return f"cannot connect: {os.strerror(exc.errno)}"
    return f"cannot connect: {exc.strerror or str(exc) or type(exc).__name__}"


class UpstreamConnection(asyncio.Protocol):
    """One connection to the upstream; serves one request at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.sink: ResponseSink | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.reason = b""
        self.headers: Headers = []
        self.interim = False
        self.head_seen = False
        self.complete = False
        self.extra = False
        self.head_only = False
        self.keep_alive = False
        self.until_eof = False
        self.waiting = False
        self.reading_paused = False
        self.head_size = 0  # bytes of the fields of the head being parsed
        self.before_head = 0  # bytes received before the final head (interim answers included)
        self.interims = 0
        self.served = 0
        self.reused = False
        self.last = 0.0
        self.idle_since = 0.0
        self.out: list[bytes] = []

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self.pool.forget(self)
        sink, self.sink = self.sink, None
        if sink is None:
            return
        if self.until_eof and not self.complete:
            sink.response_complete(False)  # the close ends the body
        elif self.head_seen:
            sink.upstream_failed("closed the connection mid-response")
        else:
            sink.upstream_failed("closed the connection without an answer", retry=True)

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_writable(False)

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_writable(True)

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is None or self.parser is None:  # unasked-for bytes: not a connection to reuse
            if self.transport is not None:
                self.transport.abort()
            return
        self.last = self.pool.clock()
        if not self.head_seen:
            self.before_head += len(data)
        sink.batch(True)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            stop = exc.__context__
            if isinstance(stop, _HeadDone):
                self.complete = True
                self.extra = not data.endswith(b"\r\n\r\n")
            elif isinstance(stop, _Extra):
                self.extra = True
            elif isinstance(stop, _Malformed):
                self._malformed(sink, str(stop))
            else:  # a defect in certproxy, not in the upstream: logged, and the request fails
                log.error("relaying an upstream answer failed", exc_info=stop or exc)
                self._malformed(sink, "certproxy could not relay it")
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if not self.complete:
                self._malformed(sink, (str(exc) or type(exc).__name__).splitlines()[0])
            else:
                self.extra = True
        else:
            # llhttp keeps a field's pieces until the field ends: a head that does not end
            # is bounded by what has come in, not only by the fields that ended.
            if not self.head_seen and self.before_head > MAX_HEAD_SIZE:
                self._malformed(sink, f"head larger than {MAX_HEAD_SIZE} bytes")
        finally:
            if self.complete and self.sink is sink:
                self.sink = None
                sink.response_complete(self.keep_alive and not self.extra)
            sink.batch(False)

    def _malformed(self, sink: ResponseSink, reason: str) -> None:
        """The answer cannot be relayed: the request fails (never retried) and the
        connection ends."""
        self.complete = False
        if self.sink is not sink:
            return
        self.sink = None
        sink.batch(False)
        sink.upstream_failed(f"sent a malformed response: {reason}")
        if self.transport is not None:
            self.transport.abort()

    # parser callbacks
    def on_message_begin(self) -> None:
        if self.complete:  # bytes past the end of the response: never a second answer
            raise _Extra
        self.headers = []
        self.reason = b""
        self.head_size = 0

    def on_status(self, reason: bytes) -> None:
        self.reason += reason
        self.head_size += len(reason)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        self.head_size += len(name) + len(value) + 4
        if self.head_size > MAX_HEAD_SIZE:
            raise _Malformed(f"head larger than {MAX_HEAD_SIZE} bytes")

    def on_headers_complete(self) -> None:
        parser, sink = self.parser, self.sink
        assert parser is not None and sink is not None
        status = parser.get_status_code()
        if status == 101:  # certproxy forwards no Upgrade: nothing asked to switch protocols
            raise _Malformed("101 Switching Protocols, which nothing asked for")
        if 100 <= status < 200:
            self.interims += 1
            if self.interims > MAX_INTERIM:
                raise _Malformed(f"more than {MAX_INTERIM} interim (1xx) answers")
            self.interim = True
            sink.interim_response(status, self.reason, self.headers)
            return
        self.head_seen = True
        self.keep_alive = parser.should_keep_alive()
        length, chunked = framing(self.headers)
        has_body = not self.head_only and status not in (204, 304)
        needs_framing = has_body and (chunked or length is None)
        self.until_eof = has_body and not chunked and length is None
        sink.response_head(status, self.reason, self.headers, needs_framing)
        if self.head_only:
            raise _HeadDone

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink.response_body(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.complete = True

    # used by the exchange
    def bind(self, sink: ResponseSink, head_only: bool) -> None:
        """Serve ``sink``'s request next."""
        self.sink = sink
        self.parser = httptools.HttpResponseParser(self)
        self.complete = self.extra = self.interim = self.until_eof = self.head_seen = False
        self.waiting = False
        self.head_only = head_only
        self.reason = b""
        self.interims = self.before_head = 0
        self.reused = self.served > 0
        self.served += 1

    def send(self, parts: list[bytes]) -> None:
        """Write the request head (and any body bytes already in) now."""
        if self.transport is not None:
            self.transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def buffer(self, *parts: bytes) -> bool:
        """Keep request bytes for ``flush()``; True when the buffer was empty before."""
        first = not self.out
        self.out.extend(parts)
        return first

    def flush(self) -> None:
        """Write what ``buffer`` kept: everything one client read produced, in one write."""
        out, self.out = self.out, []
        if out and self.transport is not None and not self.transport.is_closing():
            if len(out) == 1:
                self.transport.write(out[0])
            else:
                self.transport.writelines(out)

    def pause_reading(self, paused: bool) -> None:
        if paused == self.reading_paused or self.transport is None:
            return
        self.reading_paused = paused
        if paused:
            self.transport.pause_reading()
        else:
            self.last = self.pool.clock()
            self.transport.resume_reading()

    def start_waiting(self) -> None:
        """The request is complete: from now on the upstream owes an answer."""
        self.waiting = True
        self.last = self.pool.clock()

    def abandon(self) -> None:
        """Drop the connection (mid-request: the upstream sees the request cut)."""
        self.sink = None
        self.out = []
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.abort()

    # used by the pool
    def unbind(self) -> None:
        """The request is over: back to the pool (idle from now) or to be closed."""
        self.idle_since = self.pool.clock()
        self.sink = None
        self.parser = None
        self.waiting = False
        self.pause_reading(False)

    def time_out(self) -> None:
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.upstream_failed("did not answer in time", timeout=True)

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()


# What ``UpstreamPool`` opens connections with: ``loop.create_connection``, or a test's stand-in.
Connector = Callable[..., Awaitable[tuple[asyncio.BaseTransport, UpstreamConnection]]]


class UpstreamPool:
    """Idle keep-alive connections to one upstream, most recently used first."""

    def __init__(
        self,
        host: str,
        port: int,
        settings: PoolSettings,
        ssl_context: ssl.SSLContext | None,
        *,
        connector: Connector | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.host = host
        self.port = port
        self.ssl = ssl_context
        self.settings = settings
        self.clock = clock or loop.time
        self._connector: Connector = connector or loop.create_connection
        self.idle: list[UpstreamConnection] = []
        self.busy: set[UpstreamConnection] = set()

    def take(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            up = idle.pop()
            if up.usable:
                self.busy.add(up)
                return up
        return None

    async def connect(self) -> UpstreamConnection:
        _, up = await asyncio.wait_for(
            self._connector(
                lambda: UpstreamConnection(self),
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=self.host if self.ssl else None,
            ),
            self.settings.connect_timeout,
        )
        self.busy.add(up)
        return up

    def release(self, up: UpstreamConnection, reusable: bool) -> None:
        self.busy.discard(up)
        up.unbind()
        if reusable and up.usable:
            self.idle.append(up)
        elif up.transport is not None:
            up.transport.close()

    def forget(self, up: UpstreamConnection) -> None:
        self.busy.discard(up)
        if up in self.idle:
            self.idle.remove(up)

    def sweep(self, now: float) -> None:
        timeout = self.settings.read_timeout
        for up in [u for u in self.busy if u.waiting and not u.reading_paused and now - u.last > timeout]:
            up.time_out()
        keepalive = self.settings.keepalive
        if self.idle and now - self.idle[0].idle_since > keepalive:
            stale = [u for u in self.idle if now - u.idle_since > keepalive]
            self.idle = [u for u in self.idle if now - u.idle_since <= keepalive]
            for up in stale:
                if up.transport is not None:
                    up.transport.close()

    def close(self) -> None:
        for up in [*self.idle, *self.busy]:
            if up.transport is not None:
                up.transport.abort()
        self.idle.clear()
        self.busy.clear()
