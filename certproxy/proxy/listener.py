"""aiohttp's server pieces, adapted for a front that faces the internet.

``Server`` makes ``_RequestHandler`` connection handlers (limits, graceful
body feed, one-line answers to malformed requests); ``TCPSite`` adds the TLS
handshake timeout that aiohttp does not pass to the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("certproxy")

# Request heads larger than this are refused (431/414) by aiohttp's parser;
# registry bearer tokens fit with room to spare.
MAX_FIELD_SIZE = 16384
MAX_LINE_SIZE = 16384
SERVER_READ_BUFSIZE = 1 << 18


class _RequestHandler(RequestHandler):
    """aiohttp's connection handler, with certproxy's limits and answers.

    - A connection past the listener's cap gets a 503 and is closed.
    - A request head must be complete within ``header_timeout`` of its first
      byte (slowloris).
    - While shutting down, the body of the request in flight keeps flowing
      (aiohttp drops incoming bytes once a connection is closing).
    - Malformed requests: aiohttp's parser (llhttp) already refuses ambiguous
      framing (Content-Length with Transfer-Encoding, duplicate lengths,
      obsolete folding, bare CR/LF, NUL, bad chunk sizes); the answer becomes
      one line without echoing the request, 414/431 for over-long lines and
      over-large or too many headers, and a log line without a traceback.
    """

    __slots__ = ("_cp_head_timer",)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._cp_head_timer: asyncio.TimerHandle | None = None
        server = self._manager
        limit = getattr(server, "max_connections", 0)
        if limit and server is not None and len(server.connections) >= limit:
            # Past the cap: a clean refusal, not a hang and not a reset.
            body = b"certproxy: too many connections, try again\n"
            transport.write(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                            b"Retry-After: 1\r\nContent-Type: text/plain\r\n"
                            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            transport.close()
            log.warning("refused a connection: %d connections open on this listener", limit)
            return
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if getattr(self, "_cp_head_timer", None) is not None:
            self._cp_head_timer.cancel()
        if self.transport is None and self._manager is not None and self not in self._manager.connections:
            return  # refused in connection_made: aiohttp never saw it
        super().connection_lost(exc)

    def _watch_head(self) -> None:
        """Bound the time between the first byte of a request head and its end (slowloris)."""
        if self._request_in_progress or self._messages:
            if self._cp_head_timer is not None:
                self._cp_head_timer.cancel()
                self._cp_head_timer = None
        elif self._cp_head_timer is None and self.transport is not None:
            timeout = getattr(self._manager, "header_timeout", 0)
            if timeout:
                self._cp_head_timer = self._loop.call_later(timeout, self._head_timed_out, timeout)

    def _head_timed_out(self, timeout: float) -> None:
        self._cp_head_timer = None
        if not (self._request_in_progress or self._messages) and self.transport is not None:
            peer = self.transport.get_extra_info("peername")
            log.info("closed a connection from %s: no complete request head within %g s",
                     peer[0] if peer else "-", timeout)
            self.force_close()

    def data_received(self, data: bytes) -> None:
        self._data_received(data)
        self._watch_head()

    def _data_received(self, data: bytes) -> None:
        """Keep feeding the body of the request in flight while shutting down.

        aiohttp drops every incoming byte once a connection is marked closing,
        which would stall an upload caught by SIGTERM until the grace period
        ends; the request in flight must be able to finish.
        """
        if (self._close or self._force_close) and self._request_in_progress \
                and self.transport is not None:
            closing, forced = self._close, self._force_close
            self._close = self._force_close = False
            try:
                super().data_received(data)
            finally:
                self._close = self._close or closing
                self._force_close = self._force_close or forced
            return
        super().data_received(data)

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError) or status == 500:
            return super().handle_error(request, status, exc, message)
        reason = (getattr(exc, "message", "") or str(exc) or "bad request").splitlines()[0].rstrip(":")
        if isinstance(exc, LineTooLong):
            # aiohttp's C parser reports the URL of a long request line as a
            # bytearray, the value of a long header as bytes.
            line = exc.args[0] if exc.args else b""
            header = isinstance(line, bytes) and not line.startswith(b"/")
            status = 431 if header else 414
            reason = "request header too large" if header else "request line too long"
        elif reason.lower().startswith("too many headers"):
            status, reason = 431, "too many request headers"
        log.info("refused a malformed request from %s: %s", request.remote, reason)
        resp = web.Response(status=status, text=f"certproxy: {reason}\n")
        resp.force_close()
        return resp


class Server(web.Server):
    """``web.Server`` making certproxy's connection handlers, with their limits."""

    def __init__(self, handler: Any, *, header_timeout: float = 0, max_connections: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.header_timeout = header_timeout
        self.max_connections = max_connections

    def __call__(self) -> RequestHandler:
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


class TCPSite(web.TCPSite):
    """``TCPSite`` with a bound on the TLS handshake (aiohttp does not pass one)."""

    def __init__(self, *args: Any, tls_handshake_timeout: float = 10.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tls_handshake_timeout = tls_handshake_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        if server is None:
            raise RuntimeError("runner not set up")
        extra = {"ssl_handshake_timeout": self._tls_handshake_timeout} if self._ssl_context else {}
        self._server = await asyncio.get_running_loop().create_server(
            server, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port, **extra)
