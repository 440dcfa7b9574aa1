"""The data plane: the TLS listeners' HTTP/1.1 reverse proxy on asyncio protocols.

How this works: each client connection is a protocol whose bytes go through
llhttp (``httptools``); each upstream connection is a protocol with a response
parser of its own (``upstream.UpstreamConnection``, pooled per route). A request is an ``Exchange``: when its head is parsed it
takes an idle upstream connection from the route's pool (or opens one in a
task) and writes the request head; body bytes are written to the upstream
connection from the parser's callbacks as they arrive, and response bytes are
written to the client from the upstream parser's callbacks. No task and no
timer is made per request on this path, and nothing is decoded.

Back-pressure: when the upstream connection's write buffer fills, the client
connection stops reading (and the other way round for responses), so a
multi-GB layer moves at the pace of the slower side with flat memory.

Framing: a request body with ``Content-Length`` goes upstream as it came; a
chunked one is re-chunked piece by piece. A response without a length goes
to an HTTP/1.1 client chunked, to an HTTP/1.0 client delimited by the close.

Failures before the response head reaches the client become certproxy's own
one-line answers (502 refused or broken upstream, 504 silent upstream); after
it, the client connection is cut, so a short body never looks whole. A pooled
connection the upstream closed before answering is replaced once for an
idempotent request that has sent no body bytes (RFC 9112, 9.3.1). A client
that goes away mid-upload gets its upstream request aborted.

Timeouts are checked by a sweep a few times a second (``sweep``) rather than
by a timer per request: request-head time (slowloris), idle keep-alive,
upstream silence (never while the client is the slow side), and client
silence in the middle of a request body (never while certproxy holds the
client back).
"""

from __future__ import annotations

import asyncio
import collections
import http
import logging
import ssl
import time
from typing import Awaitable, Callable, Optional

import httptools

from . import logs
from .auth import BasicAuth
from .config import Config, Route
from .headers import Answer, Headers, client_response_headers, upstream_request_headers
from .health import Health
from .hostname import origin, parse_host
from .metrics import RouteMetrics
from .upstream import WRITE_BUFFER_HIGH, UpstreamConnection, UpstreamPool, describe_os_error

log = logging.getLogger("certproxy.proxy")

# Request heads larger than these are refused (414/431); registry bearer
# tokens fit with room to spare.
MAX_LINE_SIZE = 16384
MAX_FIELD_SIZE = 16384
MAX_HEADERS = 100
MAX_HEAD_SIZE = 65536
SWEEP_INTERVAL = 0.25

REGISTRY_API_HEADER = (b"Docker-Distribution-Api-Version", b"registry/2.0")
# Not for a registry front: CONNECT would make it an open tunnel, TRACE echoes credentials.
REFUSED_METHODS = frozenset({b"CONNECT", b"TRACE", b"TRACK"})
ALLOWED = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
# Resent once on a fresh connection when a pooled one turns out closed.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"PUT"})
TOO_MANY = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 44\r\n\r\n"
            b"certproxy: too many connections, try again\n")
_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}


def origin_form(raw_target: bytes) -> tuple[bytes, bytes | None] | None:
    """``(path?query, authority)`` for a request target; None when unusable.

    Absolute-form targets (``http://host/path``) become origin-form: whatever
    host they name, the request goes to this route's upstream only.
    """
    if raw_target.startswith(b"/"):
        return raw_target, None
    scheme, sep, rest = raw_target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return None
    authority, slash, path = rest.partition(b"/")
    return b"/" + path if slash else b"/", authority or None


def own_response(status: int, body: bytes, headers: Headers = (), *,  # type: ignore[assignment]
                 content_type: bytes = b"text/plain; charset=utf-8", close: bool = False,
                 keep_alive_10: bool = False, head_only: bool = False) -> bytes:
    """A complete response of certproxy's own."""
    parts = [b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
             % (status, _REASONS.get(status, b"Unknown"), content_type, len(body))]
    parts.extend(b"%s: %s\r\n" % h for h in headers)
    if close:
        parts.append(b"Connection: close\r\n")
    elif keep_alive_10:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)


def error_headers(target: bytes) -> Headers:
    """certproxy's own errors are not cached; registry clients see the API header."""
    headers = [(b"Cache-Control", b"no-store")]
    if target.startswith(b"/v2/") or target == b"/v2":
        headers.append(REGISTRY_API_HEADER)
    return headers


class HeadRefused(Exception):
    """A request head over certproxy's limits."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


# --------------------------------------------------------------------------- routes


class ControlRoute:
    """A listener that answers by itself: plain HTTP, admin, ``renew``'s challenges.

    It gets the same connection handling as the proxy (limits, timeouts,
    one-line refusals); request bodies are not read.
    """

    pool: UpstreamPool | None = None
    auth: BasicAuth | None = None
    hsts: bytes | None = None
    base = "-"

    def __init__(self, port: int, answer: Callable[[Exchange], Awaitable[Answer]],
                 metrics: RouteMetrics | None = None, access_log: bool = True) -> None:
        self.port = port
        self.answer: Callable[[Exchange], Awaitable[Answer]] | None = answer
        self.metrics = metrics
        self.access_log = access_log


class ProxyRoute:
    """What every connection of one TLS listener shares: upstream, pool, policy."""

    answer: Callable[[Exchange], Awaitable[Answer]] | None = None
    access_log = True

    def __init__(self, route: Route, pool: UpstreamPool, health: Health, metrics: RouteMetrics,
                 auth: BasicAuth | None, hsts_max_age: int) -> None:
        self.route = route
        self.port = route.port
        self.pool = pool
        self.health = health
        self.metrics = metrics
        self.auth = auth
        self.base = route.url
        self.base_b = route.url.encode()
        netloc = route.url.partition("://")[2]
        self.upstream_host = netloc.encode()
        self.hsts = b"max-age=%d" % hsts_max_age if hsts_max_age > 0 else None
        self.unreachable = f"upstream {self.base} of port {self.port}"


# --------------------------------------------------------------------------- one request


class Exchange:
    """One request and its response, from the parsed head to the last byte."""

    __slots__ = (
        "conn", "route", "method", "target", "headers", "keep_alive", "http10", "started",
        "bytes_in", "bytes_out", "status", "upstream", "head", "pending", "req_done",
        "resp_started", "resp_done", "chunked_in", "chunk_out", "close_after", "own",
        "body_started", "retried", "done", "task", "host", "answer", "check_auth", "creds",
        "sent_at", "discard", "expects_body",
    )

    def __init__(self, conn: ClientConnection, method: bytes, target: bytes, headers: Headers,
                 keep_alive: bool, http10: bool, chunked_in: bool, expects_body: bool) -> None:
        self.conn = conn
        self.route = conn.route
        self.method = method
        self.target = target
        self.headers = headers
        self.keep_alive = keep_alive
        self.http10 = http10
        self.chunked_in = chunked_in
        self.expects_body = expects_body
        self.started = time.monotonic()
        self.bytes_in = self.bytes_out = self.status = 0
        self.upstream: UpstreamConnection | None = None
        self.head = b""
        self.pending: list[bytes] = []
        self.req_done = self.resp_started = self.resp_done = self.chunk_out = False
        self.body_started = self.retried = self.done = self.discard = False
        self.close_after = not keep_alive
        self.own: tuple[int, bytes, Headers] | None = None
        self.task: asyncio.Task[None] | None = None
        self.host: bytes | None = None
        # Set when the answer is certproxy's own (a control listener, /healthz).
        self.answer: Callable[[Exchange], Awaitable[Answer]] | None = None
        self.check_auth = False  # credentials not seen recently: bcrypt in a thread first
        self.creds: bytes | None = None
        self.sent_at = 0.0
        self.prepare()

    # deciding what to do with the request
    def prepare(self) -> None:
        route = self.route
        method, target = self.method, self.target
        if method in REFUSED_METHODS:
            self.own_error(405, f"{method.decode('latin-1')} is not allowed", [(b"Allow", ALLOWED)])
            return
        if route.answer is not None:
            self.answer = route.answer
            return
        if target == b"/healthz":
            self.answer = route.health.answer
            return
        parsed = origin_form(target)
        if parsed is None:
            self.own_error(400, "request target must be a path")
            return
        path, authority = parsed
        headers = self.headers
        host = authority
        if host is None:
            for name, value in headers:
                if len(name) == 4 and name.lower() == b"host":
                    host = value
                    break
        self.host = host
        if route.auth is not None:
            for name, value in headers:
                if name.lower() == b"authorization":
                    self.creds = value
                    break
            self.check_auth = not route.auth.known(self.creds)
            headers = [(n, v) for n, v in headers if n.lower() != b"authorization"]
        out = upstream_request_headers(headers, client_ip=self.conn.client_ip_b, host=host,
                                       listener_port=route.port)
        if authority:  # absolute-form: its authority is the Host (RFC 9112, 3.2.2)
            out = [(n, authority if n.lower() == b"host" else v) for n, v in out]
        parts = [b"%s %s HTTP/1.1\r\n" % (method, path)]
        if host is None:
            parts.append(b"Host: %s\r\n" % route.upstream_host)
        parts.extend([b"%s: %s\r\n" % h for h in out])
        if self.chunked_in:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        parts.append(b"\r\n")
        self.head = b"".join(parts)

    def own_error(self, status: int, reason: str, extra: Headers = ()) -> None:  # type: ignore[assignment]
        """Answer with certproxy's own one-line error (now, or when this exchange's turn comes)."""
        self.own = (status, f"certproxy: {reason}\n".encode(), [*error_headers(self.target), *extra])
        if self.conn.queue and self.conn.queue[0] is self and not self.done:
            self.send_own(*self.own)

    def send_own(self, status: int, body: bytes, headers: Headers,
                 content_type: bytes = b"text/plain; charset=utf-8") -> None:
        # A request body still on its way is not read: the connection closes after the answer.
        if self.close_after or self.conn.closing or (self.expects_body and not self.req_done):
            self.close_after = True
        head_only = self.method == b"HEAD"
        self.status = status
        self.resp_started = self.resp_done = self.discard = True
        self.bytes_out = 0 if head_only else len(body)
        if self.route.hsts is not None:
            headers = [*headers, (b"Strict-Transport-Security", self.route.hsts)]
        self.conn.write(own_response(status, body, headers, content_type=content_type,
                                     close=self.close_after, keep_alive_10=self.http10,
                                     head_only=head_only))
        self.finish()

    # running it
    def begin(self) -> None:
        """Called when this exchange is first in its connection's queue."""
        if self.own is not None:
            self.send_own(*self.own)
        elif self.answer is not None or self.check_auth:
            self.task = asyncio.ensure_future(self._slow_begin())
        else:
            up = self.route.pool.take()
            if up is not None:
                self.attach(up, reused=True)
            else:
                self.task = asyncio.ensure_future(self._slow_begin())
        self.conn.update_reading()

    async def _slow_begin(self) -> None:
        route = self.route
        try:
            if self.answer is not None:
                code, headers, body, content_type = await self.answer(self)
                if not self.done:
                    self.send_own(code, body, headers, content_type)
                return
            if self.check_auth:
                assert route.auth is not None
                creds = self.creds.decode("latin-1") if self.creds else None
                if not await route.auth.allowed(creds):
                    if not self.done:
                        self.send_own(401, b"certproxy: authentication required\n",
                                      [(b"WWW-Authenticate", route.auth.challenge.encode())])
                    return
                self.check_auth = False
                up = route.pool.take()
                if up is not None:
                    self._attach_unless_done(up, reused=True)
                    return
            try:
                up = await route.pool.connect()
            except asyncio.TimeoutError:
                if not self.done:
                    self.own_error(504, f"{route.unreachable} did not answer in time")
                return
            except OSError as exc:
                if not self.done:
                    self.own_error(502, f"{route.unreachable}: {describe_os_error(exc)}")
                return
            self._attach_unless_done(up, reused=False)
        except asyncio.CancelledError:
            raise
        except Exception:  # a defect: never leave a client hanging
            log.exception("request %s %s failed", self.method.decode("latin-1"),
                          self.target.decode("latin-1"))
            self.conn.abort()
        finally:
            self.task = None

    def _attach_unless_done(self, up: UpstreamConnection, reused: bool) -> None:
        """After a wait: use the connection, or give it back if the client has gone."""
        if self.done:
            self.route.pool.release(up, True)
        else:
            self.attach(up, reused)

    def attach(self, up: UpstreamConnection, reused: bool) -> None:
        self.upstream = up
        up.bind(self, self.method == b"HEAD")
        transport = up.transport
        assert transport is not None
        up.reused = reused
        if self.pending:
            self.body_started = True
            transport.writelines([self.head, *self.pending])
            self.pending = []
        else:
            transport.write(self.head)
        self.sent_at = time.monotonic()
        if self.req_done:
            up.start_waiting()
        if self.conn.write_paused:
            up.pause_reading(True)
        self.conn.update_reading()

    # request body, from the client parser
    def body(self, chunk: bytes) -> None:
        self.bytes_in += len(chunk)
        if self.discard:
            return
        up = self.upstream
        if up is not None and up.transport is not None:
            self.body_started = True
            out = up.corked_out(self.conn)
            if self.chunked_in:
                out.extend((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            else:
                out.append(chunk)
        elif self.chunked_in:
            self.pending.extend((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            self.pending.append(chunk)

    def request_complete(self) -> None:
        self.req_done = True
        if self.discard:
            if self.resp_done:
                self.finish()
            return
        up = self.upstream
        if up is not None and up.transport is not None:
            if self.chunked_in:
                up.corked_out(self.conn).append(b"0\r\n\r\n")
            up.start_waiting()
        elif self.chunked_in:
            self.pending.append(b"0\r\n\r\n")
        if self.resp_done:
            self.finish()

    # response, from the upstream parser
    def interim_response(self, status: int, reason: bytes, headers: Headers) -> None:
        if status == 101 or self.http10:
            return
        out = client_response_headers(headers, upstream_url=self.route.base_b,
                                      public_origin=self.public_origin)
        self.conn.write(b"".join([b"HTTP/1.1 %d %s\r\n" % (status, reason),
                                  *[b"%s: %s\r\n" % h for h in out], b"\r\n"]))

    def public_origin(self) -> bytes | None:
        parsed = parse_host(self.host.decode("latin-1")) if self.host else None
        return origin("https", parsed[0], parsed[1]).encode() if parsed else None

    def response_head(self, status: int, reason: bytes, headers: Headers, up: UpstreamConnection) -> None:
        route = self.route
        if self.sent_at:
            route.metrics.latency.observe(time.monotonic() - self.sent_at)
        self.status = status
        length = chunked = hsts = False
        for name, value in headers:
            low = name.lower()
            if low == b"content-length":
                length = True
            elif low == b"transfer-encoding":
                chunked = True
            elif low == b"strict-transport-security":
                hsts = True
        out = client_response_headers(headers, upstream_url=route.base_b,
                                      public_origin=self.public_origin)
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        parts.extend([b"%s: %s\r\n" % h for h in out])
        if route.hsts is not None and not hsts:
            parts.append(b"Strict-Transport-Security: %s\r\n" % route.hsts)
        no_body = self.method == b"HEAD" or status in (204, 304)
        if not no_body and (chunked or not length):
            up.until_eof = not chunked and not length
            if self.http10:
                self.close_after = True
            else:
                self.chunk_out = True
                parts.append(b"Transfer-Encoding: chunked\r\n")
        if (self.expects_body and not self.req_done) or self.conn.closing:
            self.close_after = True
        if self.close_after:
            parts.append(b"Connection: close\r\n")
        elif self.http10:
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        self.resp_started = True
        self.conn.write(b"".join(parts))

    def response_body(self, chunk: bytes) -> None:
        self.bytes_out += len(chunk)
        if self.chunk_out:
            self.conn.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            self.conn.write(chunk)

    def response_complete(self, reusable: bool) -> None:
        if self.chunk_out:
            self.conn.write(b"0\r\n\r\n")
        self.resp_done = True
        up, self.upstream = self.upstream, None
        if up is not None:
            self.route.pool.release(up, reusable and self.req_done)
            self.conn.pause_for_upstream(False)
        if not self.req_done:
            self.discard = True  # early answer: the rest of the body is not wanted
        self.finish()

    def upstream_failed(self, reason: str, timeout: bool = False, retry: bool = False) -> None:
        up, self.upstream = self.upstream, None
        if up is not None:
            up.abandon()
            self.conn.pause_for_upstream(False)
        if self.done:
            return
        if (retry and not self.resp_started and not self.retried and not self.body_started
                and self.method in IDEMPOTENT and up is not None and up.reused):
            self.retried = True
            self.task = asyncio.ensure_future(self._slow_begin())
            return
        if self.resp_started:
            log.warning("upstream %s failed mid-response: %s", self.route.base, reason)
            self.conn.abort()
            return
        what = f"{self.route.unreachable} {reason}" if timeout else f"{self.route.unreachable}: {reason}"
        self.own_error(504 if timeout else 502, what)

    # the end
    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        self._record(self.status)
        self.conn.exchange_finished(self)

    def client_lost(self) -> None:
        """The client connection closed with this exchange unfinished."""
        if self.done:
            return
        self.done = True
        if self.task is not None:
            self.task.cancel()
        up, self.upstream = self.upstream, None
        if up is not None:
            up.abandon()
        if not self.req_done:
            log.info("client %s went away mid-upload after %d bytes", self.conn.client_ip,
                     self.bytes_in)
        self._record(self.status if self.resp_started else 499)

    def header(self, name: bytes) -> list[bytes]:
        """The values of one request header (``name`` in lower case)."""
        return [v for n, v in self.headers if n.lower() == name]

    def _record(self, status: int) -> None:
        route = self.route
        if route.metrics is not None:
            route.metrics.request(status, self.bytes_in, self.bytes_out)
        if route.access_log:
            logs.access(self.conn.client_ip, self.method.decode("latin-1"), self.target.decode("latin-1"),
                    status, self.bytes_in, self.bytes_out, time.monotonic() - self.started,
                    route.base, route.port)


# --------------------------------------------------------------------------- client side


class ClientConnection(asyncio.Protocol):
    """One client connection of a TLS listener."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.route = listener.route
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: collections.deque[Exchange] = collections.deque()
        self.parsing: Exchange | None = None
        self.client_ip = "-"
        self.client_ip_b = b"-"
        self._url = b""
        self._headers: Headers = []
        self._head_size = 0
        self.in_head = False
        self.head_started = 0.0
        self.idle_since = 0.0
        self.paused_up = False
        self.reading_paused = False
        self.write_paused = False
        self.closing = False
        self.stopped = False
        self.corked = False
        self.out: list[bytes] = []
        self.corked_ups: list[UpstreamConnection] = []
        self.last_data = 0.0

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        listener = self.listener
        if listener.max_connections and len(listener.connections) >= listener.max_connections:
            # Past the cap: a clean refusal, not a hang and not a reset.
            transport.write(TOO_MANY)
            transport.close()
            log.warning("refused a connection: %d connections open on this listener",
                        listener.max_connections)
            return
        self.transport = transport  # type: ignore[assignment]
        listener.connections.add(self)
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip = peer[0]
            self.client_ip_b = peer[0].encode()
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self.idle_since = listener.loop.time()
        self.closing = listener.stopping

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        if self.transport is None:
            return  # refused in connection_made
        self.transport = None
        self.stopped = True
        self.listener.connections.discard(self)
        queue, self.queue = self.queue, collections.deque()
        for ex in queue:
            ex.client_lost()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.queue and self.queue[0].upstream is not None:
            self.queue[0].upstream.pause_reading(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.queue and self.queue[0].upstream is not None:
            self.queue[0].upstream.pause_reading(False)

    def data_received(self, data: bytes) -> None:
        if self.stopped:
            return
        self.last_data = self.listener.loop.time()
        if self.in_head:
            self._head_size += len(data)
            if self._head_size > MAX_HEAD_SIZE:
                self.refuse(431, "request header too large")
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if not isinstance(refused, HeadRefused):
                raise refused or exc  # a defect in certproxy, not in the request
            self.refuse(refused.status, str(refused))
        except httptools.HttpParserUpgrade:
            # CONNECT or an Upgrade request: answered as a plain request; nothing
            # after it on this connection is HTTP/1.1 any more.
            self.closing = True
            if self.queue:
                self.stopped = True
            else:
                self.close()
        except httptools.HttpParserError as exc:
            reason = (str(exc) or "malformed request").splitlines()[0].rstrip(":")
            self.refuse(400, f"bad request: {reason}")
        finally:
            if self.corked_ups:
                ups, self.corked_ups = self.corked_ups, []
                for up in ups:
                    up.uncork()

    # parser callbacks
    def on_message_begin(self) -> None:
        self.in_head = True
        self.head_started = self.listener.loop.time()
        self._url = b""
        self._headers = []
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_LINE_SIZE:
            raise HeadRefused(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_FIELD_SIZE:
            raise HeadRefused(431, "request header too large")
        headers = self._headers
        headers.append((name, value))
        if len(headers) > MAX_HEADERS:
            raise HeadRefused(431, "too many request headers")

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        chunked = length = False
        for name, value in self._headers:
            if len(name) == 17 and name.lower() == b"transfer-encoding":
                chunked = True
            elif len(name) == 14 and name.lower() == b"content-length":
                length = value.strip() != b"0"
        ex = Exchange(self, parser.get_method(), self._url, self._headers,
                      parser.should_keep_alive(), parser.get_http_version() == "1.0", chunked,
                      chunked or length)
        self.parsing = ex
        self.queue.append(ex)
        if len(self.queue) == 1:
            ex.begin()
        else:
            self.update_reading()

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            self.parsing.body(body)

    def on_message_complete(self) -> None:
        ex, self.parsing = self.parsing, None
        if ex is not None:
            ex.request_complete()

    # used by exchanges
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

    def uncork(self) -> None:
        """Send what was written while corked: one TLS record and one send for a small response."""
        self.corked = False
        out = self.out
        if out:
            self.out = []
            if self.transport is not None:
                self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def close(self) -> None:
        """Close after everything written has gone out; nothing more is read."""
        self.stopped = True
        self.uncork()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.stopped = True
        if self.transport is not None:
            self.transport.abort()

    def pause_for_upstream(self, paused: bool) -> None:
        if paused != self.paused_up:
            self.paused_up = paused
            self.update_reading()

    def update_reading(self) -> None:
        queue = self.queue
        want = self.paused_up or len(queue) > 1 or (
            bool(queue) and queue[0].upstream is None and not queue[0].discard
            and not queue[0].req_done)
        if want != self.reading_paused and self.transport is not None:
            self.reading_paused = want
            if want:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def exchange_finished(self, ex: Exchange) -> None:
        queue = self.queue
        if queue and queue[0] is ex:
            queue.popleft()
        if self.paused_up:
            self.paused_up = False
        if ex.close_after or (self.closing and not queue):
            self.close()
            return
        self.idle_since = self.listener.loop.time()
        if queue:
            queue[0].begin()
        self.update_reading()

    def refuse(self, status: int, reason: str) -> None:
        """A malformed or over-large request: one line, then the connection closes."""
        self.stopped = True
        log.info("refused a malformed request from %s: %s", self.client_ip, reason)
        ex, self.parsing = self.parsing, None
        if ex is not None and not ex.done:  # broken body of a request under way
            if ex.resp_started:
                self.abort()
                return
            up, ex.upstream = ex.upstream, None
            if up is not None:
                up.abandon()
            if ex.task is not None:
                ex.task.cancel()
            ex.close_after = True
            ex.discard = True
            if self.queue and self.queue[0] is ex:
                ex.own_error(status, reason)
            else:
                self.abort()
            return
        if self.queue:  # requests in flight finish first, then the connection closes
            self.closing = True
        else:
            self.write(own_response(status, f"certproxy: {reason}\n".encode(), close=True))
            self.close()

    def sweep(self, now: float) -> None:
        if self.transport is None:
            return
        listener = self.listener
        if self.queue:
            ex = self.queue[0]
            if (not ex.req_done and not ex.discard and not self.reading_paused
                    and now - self.last_data > listener.body_timeout):
                log.info("closed a connection from %s: request body silent for %g s after %d bytes",
                         self.client_ip, listener.body_timeout, ex.bytes_in)
                self.abort()
            return
        if self.in_head:
            if listener.header_timeout and now - self.head_started > listener.header_timeout:
                log.info("closed a connection from %s: no complete request head within %g s",
                         self.client_ip, listener.header_timeout)
                self.abort()
        elif now - self.idle_since > listener.keepalive_timeout or self.closing:
            self.close()


class Listener:
    """One TLS listener: its server socket, its connections and their limits."""

    def __init__(self, route: ProxyRoute | ControlRoute, config: Config) -> None:
        self.loop = asyncio.get_running_loop()
        self.route = route
        self.connections: set[ClientConnection] = set()
        self.max_connections = config.max_connections
        self.header_timeout = config.header_timeout
        self.keepalive_timeout = config.keepalive_timeout
        # A client silent mid-upload is held to the same bound as a silent upstream.
        self.body_timeout = config.upstream_read_timeout
        self.handshake_timeout = config.tls_handshake_timeout
        self.server: asyncio.base_events.Server | None = None
        self.stopping = False

    def __call__(self) -> ClientConnection:
        return ClientConnection(self)

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        extra = {"ssl_handshake_timeout": self.handshake_timeout} if ssl_context else {}
        self.server = await self.loop.create_server(
            self, host, port, ssl=ssl_context, backlog=1024, reuse_address=True, **extra)

    def stop_accepting(self) -> None:
        self.stopping = True
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.closing = True
            if not conn.queue and not conn.in_head:
                conn.close()

    async def drain(self, grace: float) -> None:
        """Let requests in flight finish within ``grace`` seconds, then cut the rest."""
        deadline = self.loop.time() + grace
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()

    def sweep(self, now: float) -> None:
        for conn in list(self.connections):
            conn.sweep(now)
        if self.route.pool is not None:
            self.route.pool.sweep(now)
