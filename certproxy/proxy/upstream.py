"""The upstream side of a route: its connection pool and its reachability probe.

``UpstreamPool`` keeps idle keep-alive connections to one upstream, most
recently used first; ``UpstreamConnection`` is one of them, serving one
``dataplane.Exchange`` at a time with a response parser of its own (llhttp
through ``httptools``). The probe behind ``/healthz`` opens a connection of
its own, asks for ``/`` and accepts any HTTP status line as an answer, at most
every few seconds (the result is cached, and concurrent checks share one
probe). For an ``https`` upstream, pool and probe share one TLS context,
built off the event loop.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from typing import TYPE_CHECKING, Optional

import httptools

from .config import Config, Route
from .headers import Headers

if TYPE_CHECKING:
    from .dataplane import ClientConnection, Exchange

WRITE_BUFFER_HIGH = 1 << 19


class _HeadDone(Exception):
    """Stops the upstream parser after the head of a response to HEAD."""

PROBE_TTL = 5.0
PROBE_TIMEOUT = 2.0


class Upstream:
    def __init__(self, route: Route, config: Config) -> None:
        self.route = route
        self._config = config
        self._probe: tuple[float, bool, str | None] | None = None
        self._probe_task: asyncio.Task[tuple[bool, str | None]] | None = None
        self._ssl: ssl.SSLContext | None = None
        self._pool: UpstreamPool | None = None

    @property
    def pool(self) -> UpstreamPool:
        if self._pool is None:
            raise RuntimeError("upstream not started")
        return self._pool

    async def start(self) -> None:
        if self.route.scheme == "https":  # loads the system CA store: not on the event loop
            self._ssl = await asyncio.to_thread(ssl.create_default_context)
        self._pool = UpstreamPool(self.route, self._config, self._ssl)

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
        if self._pool is not None:
            self._pool.close()

    async def reachable(self) -> tuple[bool, str | None]:
        """Whether the upstream answers HTTP at all (any status counts), cached."""
        now = time.monotonic()
        if self._probe is not None and now - self._probe[0] < PROBE_TTL:
            return self._probe[1], self._probe[2]
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = asyncio.create_task(self._run_probe())
        return await asyncio.shield(self._probe_task)

    async def _run_probe(self) -> tuple[bool, str | None]:
        result: tuple[bool, str | None]
        try:
            result = await asyncio.wait_for(self._ask(), PROBE_TIMEOUT)
        except asyncio.TimeoutError:
            result = (False, f"no answer within {PROBE_TIMEOUT:g} s")
        except OSError as exc:
            result = (False, describe_os_error(exc))
        self._probe = (time.monotonic(), *result)
        return result

    async def _ask(self) -> tuple[bool, str | None]:
        route = self.route
        reader, writer = await asyncio.open_connection(
            route.host, route.upstream_port, ssl=self._ssl,
            server_hostname=route.host if self._ssl else None)
        try:
            host = route.url.partition("://")[2]
            writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: certproxy-healthcheck\r\n"
                         "Connection: close\r\n\r\n".encode())
            line = await reader.readline()
        finally:
            writer.close()
        if line.startswith(b"HTTP/1.") and line[8:9] == b" " and line[9:12].isdigit():
            return True, None
        return False, "answered something that is not HTTP/1.1" if line else \
            "closed the connection without an answer"


def describe_os_error(exc: OSError) -> str:
    """One line for a failed connection, without a traceback."""
    if exc.errno:
        return f"cannot connect: {os.strerror(exc.errno)}"
    return f"cannot connect: {exc.strerror or str(exc) or type(exc).__name__}"


class UpstreamConnection(asyncio.Protocol):
    """One connection to the upstream; serves one exchange at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.reason = b""
        self.headers: Headers = []
        self.interim = False
        self.complete = False
        self.extra = False
        self.head_only = False
        self.keep_alive = False
        self.until_eof = False
        self.waiting = False
        self.reading_paused = False
        self.last = 0.0
        self.idle_since = 0.0
        self.reused = False
        self.out: list[bytes] = []

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.transport = None
        self.pool.forget(self)
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            if self.until_eof and not self.complete and ex.resp_started:
                ex.response_complete(False)
            else:
                ex.upstream_failed("closed the connection without an answer"
                                   if not ex.resp_started else "closed the connection mid-response",
                                   retry=True)

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.conn.pause_for_upstream(True)

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.conn.pause_for_upstream(False)

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None or self.parser is None:  # unasked-for bytes: not a connection to reuse
            if self.transport is not None:
                self.transport.abort()
            return
        self.last = self.pool.loop.time()
        client = ex.conn
        client.corked = True  # what this data makes for the client goes out in one write
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _HeadDone):
                raise exc.__context__ or exc  # a defect in certproxy, not in the upstream
            self.complete = True
            self.extra = not data.endswith(b"\r\n\r\n")
        except httptools.HttpParserError as exc:
            if not self.complete:
                reason = str(exc) or type(exc).__name__
                self.exchange = None
                client.uncork()
                ex.upstream_failed(f"sent a malformed response: {reason}")
                return
            self.extra = True
        finally:
            if self.complete and self.exchange is ex:
                ex.response_complete(self.keep_alive and not self.extra)
            client.uncork()

    # parser callbacks
    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True
        self.headers = []

    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None and self.exchange is not None
        status = parser.get_status_code()
        if 100 <= status < 200:
            self.interim = True
            self.exchange.interim_response(status, self.reason, self.headers)
            return
        self.keep_alive = parser.should_keep_alive()
        self.exchange.response_head(status, self.reason, self.headers, self)
        if self.head_only:
            raise _HeadDone

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange.response_body(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.complete = True

    # used by the exchange
    def bind(self, exchange: Exchange, head_only: bool) -> None:
        self.exchange = exchange
        self.parser = httptools.HttpResponseParser(self)
        self.complete = self.extra = self.interim = self.until_eof = self.waiting = False
        self.head_only = head_only
        self.reason = b""

    def pause_reading(self, paused: bool) -> None:
        if paused == self.reading_paused or self.transport is None:
            return
        self.reading_paused = paused
        if paused:
            self.transport.pause_reading()
        else:
            self.last = self.pool.loop.time()
            self.transport.resume_reading()

    def corked_out(self, client: ClientConnection) -> list[bytes]:
        """Where request bytes go while the client's data is being parsed: everything
        one client read produces for this upstream leaves in one write at the end."""
        if not self.out:
            client.corked_ups.append(self)
        return self.out

    def uncork(self) -> None:
        out, self.out = self.out, []
        if out and self.transport is not None and not self.transport.is_closing():
            if len(out) == 1:
                self.transport.write(out[0])
            else:
                self.transport.writelines(out)

    def start_waiting(self) -> None:
        self.waiting = True
        self.last = self.pool.loop.time()

    def abandon(self) -> None:
        """Drop the connection (mid-request: the upstream sees the request cut)."""
        self.exchange = None
        self.out = []
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.abort()


class UpstreamPool:
    """Idle keep-alive connections to one upstream, most recently used first."""

    def __init__(self, route: Route, config: Config, ssl_context: ssl.SSLContext | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.host = route.host
        self.port = route.upstream_port
        self.ssl = ssl_context
        self.connect_timeout = config.upstream_connect_timeout
        self.read_timeout = config.upstream_read_timeout
        self.keepalive = config.upstream_keepalive
        self.idle: list[UpstreamConnection] = []
        self.busy: set[UpstreamConnection] = set()

    def take(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            up = idle.pop()
            if up.transport is not None and not up.transport.is_closing():
                self.busy.add(up)
                return up
        return None

    async def connect(self) -> UpstreamConnection:
        _, up = await asyncio.wait_for(self.loop.create_connection(
            lambda: UpstreamConnection(self), self.host, self.port, ssl=self.ssl,
            server_hostname=self.host if self.ssl else None), self.connect_timeout)
        self.busy.add(up)
        return up

    def release(self, up: UpstreamConnection, reusable: bool) -> None:
        self.busy.discard(up)
        up.exchange = None
        up.parser = None
        up.waiting = False
        if reusable and up.transport is not None and not up.transport.is_closing():
            up.pause_reading(False)
            up.idle_since = self.loop.time()
            self.idle.append(up)
        elif up.transport is not None:
            up.transport.close()

    def forget(self, up: UpstreamConnection) -> None:
        self.busy.discard(up)
        if up in self.idle:
            self.idle.remove(up)

    def sweep(self, now: float) -> None:
        timeout = self.read_timeout
        for up in [u for u in self.busy if u.waiting and not u.reading_paused
                   and now - u.last > timeout]:
            ex = up.exchange
            if ex is not None:
                up.exchange = None
                ex.upstream_failed("did not answer in time", timeout=True)
        if self.idle and now - self.idle[0].idle_since > self.keepalive:
            stale = [u for u in self.idle if now - u.idle_since > self.keepalive]
            self.idle = [u for u in self.idle if now - u.idle_since <= self.keepalive]
            for up in stale:
                if up.transport is not None:
                    up.transport.close()

    def close(self) -> None:
        for up in [*self.idle, *self.busy]:
            if up.transport is not None:
                up.transport.abort()
        self.idle.clear()
        self.busy.clear()
