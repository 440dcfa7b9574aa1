"""The client side of the data plane: connections, listeners, the timeout sweep.

How this works: each client connection is an asyncio protocol whose bytes go
through llhttp (``httptools``). Each parsed request head becomes an
``Exchange`` in the connection's queue; only the first one runs, so answers
leave in request order (pipelining). While a request waits for its upstream
connection, or a later request waits its turn, the connection stops reading,
so a client cannot make certproxy buffer more than one read.

Back-pressure is ``flow.py``'s: each connection has a ``FlowControl`` that
pauses this connection's reading while its request's upstream connection
cannot take more (or a request waits), and the upstream's while this
connection cannot take more. A multi-GB layer moves at the pace of the slower
side with flat memory.

What one read produces goes out in as few writes as possible: towards the
upstream, request bytes are buffered in the upstream connection and flushed
once at the end of the read; towards the client, the connection is corked
while one upstream read is parsed.

Timeouts are checked by ``sweep(now)`` a few times a second rather than by a
timer per request: request-head time (slowloris), idle keep-alive, client
silence in the middle of a request body (never while certproxy holds the
client back); the pool's sweep covers upstream silence. ``now`` and the
connection's clock come from the listener, so tests drive them directly.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import ssl
import stat
from collections.abc import Callable, Sequence
from typing import cast

import httptools
from mypy_extensions import mypyc_attr

from .exchange import Exchange, Flushable
from .flow import FlowControl
from .headers import Headers, framing
from .phases import RequestPhase
from .routes import AnyRoute, Limits
from .tlsconn import AlpnChallenge, TLSConnection, TLSServer, tls_server
from .upstream import WRITE_BUFFER_HIGH
from .wire import (
    MAX_FIELD_SIZE,
    MAX_HEAD_SIZE,
    MAX_HEADERS,
    MAX_LINE_SIZE,
    TOO_MANY,
    HeadRefused,
    error_body,
    own_response,
)

log = logging.getLogger("certproxy.proxy")

SWEEP_INTERVAL = 0.25
# A connection whose handshake completes after SIGTERM gets this long to send its first
# request (served, then closed) before the drain counts it as done.
FIRST_REQUEST_GRACE = 2.0
# Request bodies of at least this many bytes are read past llhttp once their head is parsed.
BODY_PAST_PARSER = 65536


class _Closed(Exception):
    """Stops the parser at a request that follows the connection's last answer."""


def _not_waiting() -> bool:
    return False


class _NoCallbacks:
    """A parser's protocol with no callbacks."""


# A closed connection's parser: one shared parser that refers to no connection.
_SPENT_PARSER = httptools.HttpRequestParser(_NoCallbacks())


# The fuzz harness counts what the parser hands over in a subclass (tests/test_protocol_fuzz.py).
@mypyc_attr(allow_interpreted_subclasses=True)
class ClientConnection(asyncio.Protocol):
    """One client connection of a listener."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.route = listener.route
        self.clock = listener.clock
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: collections.deque[Exchange] = collections.deque()
        self.parsing: Exchange | None = None
        self.client_ip = "-"
        self.client_ip_b = b"-"
        self._url = b""
        self._headers: Headers = []
        self._head_size = 0  # bytes read since the head began, while it has not ended
        self._fields_size = 0
        self._length = 0  # the current request's Content-Length
        self.body_left = 0  # body bytes of the current request still to come past the parser
        self.in_head = False
        self.head_started = 0.0
        self.idle_since = 0.0
        self.last_data = 0.0
        self.flow = FlowControl(self._waiting)
        self.closing = False
        self.stopped = False
        self.first_request_by = 0.0  # while stopping: its first request is still awaited until then
        self.used = False  # a request has begun on it
        self.corked = False
        self.out: list[bytes] = []
        self.to_flush: list[Flushable] = []

    # asyncio callbacks
    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's transports are not subclasses
        listener = self.listener
        if listener.at_capacity():
            # Past the cap: a clean refusal, not a hang and not a reset.
            transport.write(TOO_MANY)
            transport.close()
            log.warning(
                "refused a connection: %d connections open on this listener", listener.limits.max_connections
            )
            self.stopped = True
            self._let_go()
            return
        self.transport = transport
        listener.connections.add(self)
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip = peer[0]
            self.client_ip_b = peer[0].encode()
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self.flow.transport = transport
        self.idle_since = self.clock()
        if listener.stopping:
            # Its handshake began before the listener closed: the client is about to send
            # its request, which is served (then the connection closes), not cut off.
            self.stop()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.transport is None:
            return  # refused in connection_made
        self.transport = None
        self.stopped = True
        self.listener.connections.discard(self)
        queue, self.queue = self.queue, collections.deque()
        for ex in queue:
            ex.client_lost()
        self._let_go()

    def _let_go(self) -> None:
        """Once closed, drop what refers back to this connection: it and its transport are
        freed when their last reference goes, not by a run of the cyclic garbage collector
        (which a busy listener would pay for every few dozen connections)."""
        self.parsing = None
        self.to_flush = []
        self.parser = _SPENT_PARSER
        self.flow.transport = None
        self.flow.waiting = _not_waiting

    def pause_writing(self) -> None:
        self.flow.client_writable(False)

    def resume_writing(self) -> None:
        self.flow.client_writable(True)

    def data_received(self, data: bytes) -> None:
        if self.stopped:
            return
        self.last_data = self.clock()
        try:
            if self.body_left:
                data = self._body_past_parser(data)
            if data:
                self._feed(data)
        finally:
            if self.to_flush:
                self._flush_targets()

    def parts_received(self, parts: Sequence[bytes]) -> None:
        """What one read brought, in pieces (certproxy's TLS transport hands over one
        piece per TLS record rather than joining them). Request bytes for the upstream
        are flushed once, after the last piece."""
        if self.stopped:
            return
        self.last_data = self.clock()
        try:
            for data in parts:
                if self.body_left:
                    data = self._body_past_parser(data)
                    if not data:
                        continue
                if not self._feed(data):
                    break
        finally:
            if self.to_flush:
                self._flush_targets()

    def _flush_targets(self) -> None:
        pending, self.to_flush = self.to_flush, []
        for target in pending:
            target.flush()

    def _feed(self, data: bytes) -> bool:
        """Parse ``data``; False when the connection reads no more (refused, upgraded)."""
        if self.in_head:
            self._head_size += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if isinstance(refused, _Closed):
                return False
            if not isinstance(refused, HeadRefused):
                raise (refused or exc) from None  # a defect in certproxy, not in the request
            self.refuse(refused.status, str(refused))
            return False
        except httptools.HttpParserUpgrade:
            # CONNECT or an Upgrade request: answered as a plain request; nothing
            # after it on this connection is HTTP/1.1 any more.
            self.closing = True
            if self.queue:
                self.stopped = True
            else:
                self.close()
            return False
        except httptools.HttpParserError as exc:
            reason = (str(exc) or "malformed request").splitlines()[0].rstrip(":")
            self.refuse(400, f"bad request: {reason}")
            return False
        if self.in_head and self._head_size > MAX_HEAD_SIZE:
            # Counted after parsing: a read that ends a head may carry a long body too.
            self.refuse(431, "request header too large")
            return False
        ex = self.parsing
        if ex is not None and not self.in_head and self._length >= BODY_PAST_PARSER and ex.keep_alive:
            # A long body of known length, partly in: llhttp took all of this read as body,
            # so the rest of the body is exactly the next ``_length - bytes_in`` bytes.
            # They go to the exchange as they come, without llhttp's copy of each piece.
            self.body_left = self._length - ex.bytes_in
        return not self.stopped

    def _body_past_parser(self, data: bytes) -> bytes:
        """Hand body bytes to the request being read; what follows its body is returned."""
        ex = self.parsing
        left = self.body_left
        if ex is None:  # refused meanwhile
            self.body_left = 0
            return data
        if len(data) < left:
            self.body_left = left - len(data)
            ex.body(data)
            return b""
        self.body_left = 0
        ex.body(data if len(data) == left else data[:left])
        # The body is complete. llhttp still counts it as owed, so the next request
        # starts on a new parser (this request is keep-alive: nothing else carries over).
        self.parser = httptools.HttpRequestParser(self)
        self.on_message_complete()
        return data[left:]

    # parser callbacks
    def on_message_begin(self) -> None:
        if self.stopped:  # an answer closed the connection while this read was parsed
            raise _Closed
        self.in_head = True
        self.used = True
        self.first_request_by = 0.0
        self.head_started = self.clock()
        self._url = b""
        self._headers = []
        self._head_size = 0
        self._fields_size = 0  # what the head's fields hold
        self._length = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_LINE_SIZE:
            raise HeadRefused(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        self._fields_size += size
        if size > MAX_FIELD_SIZE or self._fields_size > MAX_HEAD_SIZE:
            raise HeadRefused(431, "request header too large")
        headers = self._headers
        headers.append((name, value))
        if len(headers) > MAX_HEADERS:
            raise HeadRefused(431, "too many request headers")

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        length, chunked = framing(self._headers)
        self._length = int(length) if length else 0  # llhttp has checked it: digits, one value
        ex = Exchange(
            self,
            parser.get_method(),
            self._url,
            self._headers,
            parser.should_keep_alive(),
            parser.get_http_version() == "1.0",
            chunked,
            chunked or self._length > 0,
            parser.should_upgrade(),
        )
        self.parsing = ex
        self.queue.append(ex)
        if len(self.queue) == 1:
            ex.begin()
        else:
            self.flow.update()

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            self.parsing.body(body)

    def on_message_complete(self) -> None:
        ex, self.parsing = self.parsing, None
        if ex is not None:
            ex.request_complete()

    # used by exchanges
    def is_current(self, ex: Exchange) -> bool:
        """Whether ``ex`` is the request being answered now."""
        return bool(self.queue) and self.queue[0] is ex

    def last_answer(self, ex: Exchange) -> bool:
        """Whether ``ex``'s answer is the connection's last: it is closing, and ``ex`` is
        the last request in flight (the ones queued before the close are answered)."""
        return self.closing and bool(self.queue) and self.queue[-1] is ex

    def write(self, data: bytes) -> None:
        if self.corked:
            self.out.append(data)
        elif self.transport is not None:
            self.transport.write(data)

    def writelines(self, data: tuple[bytes, ...]) -> None:
        if self.corked:
            self.out.extend(data)
        elif self.transport is not None:
            self.transport.write(b"".join(data))

    def cork(self) -> None:
        self.corked = True

    def _take_corked(self) -> bytes:
        """What was written while corked, in one piece; the connection is uncorked."""
        out, self.out, self.corked = self.out, [], False
        return out[0] if len(out) == 1 else b"".join(out)

    def uncork(self) -> None:
        """Send what was written while corked: one TLS record and one send for a small response."""
        data = self._take_corked()
        if data and self.transport is not None:
            self.transport.write(data)

    def flush_after_read(self, target: Flushable) -> None:
        """``target.flush()`` once the current client read has been parsed."""
        self.to_flush.append(target)

    def close(self, lingering: bool = False) -> None:
        """Close after everything written has gone out; nothing more is read.
        ``lingering``: the client may still be sending a request (an answer before its
        body was in, a refusal): its bytes are drained a moment rather than reset
        (certproxy's TLS transport, which also sends what is corked and the TLS close
        together; other transports close as usual)."""
        self.stopped = True
        tls: object = self.transport  # uvloop's and asyncio's transports are not TLSConnections
        if isinstance(tls, TLSConnection):
            (tls.close_lingering if lingering else tls.close)(self._take_corked())
            return
        self.uncork()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.stopped = True
        if self.transport is not None:
            self.transport.abort()

    def _waiting(self) -> bool:
        """A request waits: for an upstream connection to take its body, or its turn."""
        queue = self.queue
        return len(queue) > 1 or (bool(queue) and queue[0].waiting_for_upstream())

    def exchange_finished(self, ex: Exchange) -> None:
        queue = self.queue
        if queue and queue[0] is ex:
            queue.popleft()
        if ex.close_after or (self.closing and not queue):
            self.close(lingering=ex.request is not RequestPhase.COMPLETE)
            return
        self.idle_since = self.clock()
        if queue:
            queue[0].begin()
        self.flow.update()

    def refuse(self, status: int, reason: str) -> None:
        """A malformed or over-large request: one line, then the connection closes."""
        self.stopped = True
        log.info("refused a malformed request from %s: %s", self.client_ip, reason)
        ex, self.parsing = self.parsing, None
        if ex is not None and not ex.done:  # broken body of a request under way
            ex.refused(status, reason)
            return
        if self.queue:  # requests in flight finish first, then the connection closes
            self.closing = True
        else:
            self.write(own_response(status, error_body(status, reason), close=True))
            self.close(lingering=True)

    # used by the listener
    def stop(self) -> None:
        """Finish what is in flight, then close; close now if idle. A connection that has
        not carried a request yet is new: its first request may be on the wire already, so
        it is awaited a moment (then served, and the connection closed)."""
        self.closing = True
        if self.queue or self.in_head:
            return
        if not self.used:
            self.first_request_by = max(self.first_request_by, self.clock() + FIRST_REQUEST_GRACE)
            return
        self.close()

    def owed(self) -> bool:
        """Still owes the client something: a request in flight or being read, or
        response bytes not yet handed to the socket. A connection that has sent
        everything and only waits for the peer's TLS close_notify owes nothing."""
        transport = self.transport
        if transport is None:
            return False
        if self.queue or self.in_head or self.clock() < self.first_request_by:
            return True
        try:
            return transport.get_write_buffer_size() > 0
        except RuntimeError:  # a transport already torn down
            return False

    def sweep(self, now: float) -> None:
        if self.transport is None:
            return
        limits = self.listener.limits
        if self.queue:
            ex = self.queue[0]
            if (
                ex.request is RequestPhase.BODY
                and not self.flow.reading_paused
                and now - self.last_data > limits.body_timeout
            ):
                log.info(
                    "closed a connection from %s: request body silent for %g s after %d bytes",
                    self.client_ip,
                    limits.body_timeout,
                    ex.bytes_in,
                )
                self.abort()
            return
        if self.in_head:
            if limits.header_timeout and now - self.head_started > limits.header_timeout:
                log.info(
                    "closed a connection from %s: no complete request head within %g s",
                    self.client_ip,
                    limits.header_timeout,
                )
                self.abort()
        elif now - self.idle_since > limits.keepalive_timeout or (
            self.closing and now >= self.first_request_by
        ):
            self.close()


class Listener:
    """One listener: its server socket, its connections and their limits."""

    def __init__(self, route: AnyRoute, limits: Limits, *, clock: Callable[[], float] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.route = route
        self.limits = limits
        self.clock = clock or self.loop.time
        self.connections: set[ClientConnection] = set()
        self.server: asyncio.base_events.Server | TLSServer | None = None
        self.stopping = False

    def __call__(self) -> ClientConnection:
        return ClientConnection(self)

    def handshakes_under_way(self) -> bool:
        """TLS handshakes under way (the sweep ends those past the handshake timeout)."""
        return isinstance(self.server, TLSServer) and bool(self.server.handshaking)

    def at_capacity(self) -> bool:
        cap = self.limits.max_connections
        return bool(cap) and len(self.connections) >= cap

    async def start(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        *,
        reuse_port: bool = False,
        alpn_challenge: AlpnChallenge | None = None,
        on_handshake_failure: Callable[[], None] | None = None,
    ) -> None:
        """``reuse_port``: several processes listen on the port and the kernel spreads
        new connections over them (``SO_REUSEPORT``). With ``ssl_context``, connections
        run on certproxy's TLS transport (``tlsconn.py``); ``alpn_challenge``: the context
        for a ClientHello that offers ``acme-tls/1`` for a name (None: no such challenge);
        ``on_handshake_failure`` is called for each handshake that does not complete."""
        if ssl_context is not None:
            self.server = await tls_server(
                host,
                port,
                ssl_context,
                self,
                reuse_port=reuse_port,
                handshake_timeout=self.limits.handshake_timeout,
                on_failure=on_handshake_failure or _nothing,
                alpn_challenge=alpn_challenge,
            )
            return
        self.server = await self.loop.create_server(
            self, host, port, backlog=1024, reuse_address=True, reuse_port=reuse_port or None
        )

    async def start_unix(self, path: str) -> None:
        """Listen on a unix socket at ``path`` (one left by an earlier run is replaced)."""
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
            os.unlink(path)
        self.server = await self.loop.create_unix_server(self, path, backlog=128)
        os.chmod(path, 0o660)

    def stop_accepting(self) -> None:
        self.stopping = True
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.stop()

    async def drain(self, grace: float) -> None:
        """Let requests in flight finish within ``grace`` seconds, then cut the rest."""
        deadline = self.loop.time() + grace
        while self.loop.time() < deadline:
            if not (any(conn.owed() for conn in self.connections) or self.handshakes_under_way()):
                break
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()

    def sweep(self, now: float) -> None:
        if isinstance(self.server, TLSServer):
            self.server.sweep(self.loop.time())
        for conn in list(self.connections):
            conn.sweep(now)
        if self.route.pool is not None:
            self.route.pool.sweep(now)


def _nothing() -> None:
    pass
