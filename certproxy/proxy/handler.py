"""The streaming reverse-proxy handler of one TLS listener.

How this works: for each client request the handler opens (or reuses) a
pooled connection to the route's upstream and sends the method, the raw
target and the end-to-end headers unchanged, plus ``X-Forwarded-*`` taken from
the connection. The request body is handed to the client library as an async
generator that reads whatever the client has sent so far; aiohttp pauses the
client's socket while its buffer is full, so an upload moves at the pace of
the slower side and memory stays flat. The response body flows back the same
way (``write`` waits for the client's socket to drain).

Failures: an upstream that refuses or cannot be resolved gives 502, one that
stays silent past its read timeout gives 504, each with a one-line plain-text
reason. Once the response has started, an upstream failure closes the client
connection abruptly, so a client never mistakes a cut body for a whole one.
A client that goes away mid-upload makes the generator raise, and aiohttp
then drops the upstream connection instead of returning it to the pool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

import aiohttp
from aiohttp import web
from yarl import URL

from . import logs
from .config import Route
from .headers import client_response_headers, decode_raw, upstream_request_headers
from .auth import BasicAuth
from .health import Health
from .hostname import origin, parse_host
from .metrics import RouteMetrics
from .upstream import Upstream, describe_client_error

log = logging.getLogger("certproxy.proxy")

REGISTRY_API_HEADER = ("Docker-Distribution-Api-Version", "registry/2.0")
# Not for a registry front: CONNECT would make it an open tunnel, TRACE echoes credentials.
REFUSED_METHODS = frozenset({"CONNECT", "TRACE", "TRACK"})


def origin_form(raw_target: str) -> tuple[str, str | None] | None:
    """``(path?query, authority)`` for a request target; None when unusable.

    Absolute-form targets (``http://host/path``) become origin-form: whatever
    host they name, the request goes to this route's upstream only.
    """
    if raw_target.startswith("/"):
        return raw_target, None
    scheme, sep, rest = raw_target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return None
    authority, slash, path = rest.partition("/")
    return "/" + path if slash else "/", authority or None


class ClientGone(Exception):
    """The client closed its connection before its request body was complete."""


class _Counter:
    __slots__ = ("bytes_in", "bytes_out")

    def __init__(self) -> None:
        self.bytes_in = 0
        self.bytes_out = 0


def error_response(status: int, reason: str, raw_path: str) -> web.Response:
    """certproxy's own error: one line of plain text; registry clients see the API header."""
    headers = {"Cache-Control": "no-store"}
    if raw_path.startswith("/v2/") or raw_path == "/v2":
        headers[REGISTRY_API_HEADER[0]] = REGISTRY_API_HEADER[1]
    return web.Response(status=status, text=f"certproxy: {reason}\n", headers=headers)


class ProxyHandler:
    def __init__(self, route: Route, upstream: Upstream, health: Health,
                 metrics: RouteMetrics, auth: BasicAuth | None = None,
                 hsts_max_age: int = 0) -> None:
        self.route = route
        self.hsts = f"max-age={hsts_max_age}" if hsts_max_age > 0 else None
        self.upstream = upstream
        self.health = health
        self.metrics = metrics
        self.auth = auth
        self._base = route.url

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        count = _Counter()
        status = 0
        raw_path = request.raw_path
        peer = request.transport.get_extra_info("peername") if request.transport else None
        client_ip = peer[0] if peer else "-"
        try:
            if request.method in REFUSED_METHODS:
                resp = error_response(405, f"{request.method} is not allowed", raw_path)
                resp.headers["Allow"] = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
            elif raw_path == "/healthz":
                resp = await self.health.response()
            elif self.auth is not None and not await self.auth.allowed(
                    request.headers.get("Authorization")):
                resp = web.Response(status=401, text="certproxy: authentication required\n",
                                    headers={"WWW-Authenticate": self.auth.challenge})
            else:
                resp = await self._proxy(request, raw_path, client_ip, count)
            status = resp.status
            if isinstance(resp, web.Response):  # certproxy's own answer, not streamed
                count.bytes_out = resp.content_length or 0
                if self.hsts and not resp.prepared:
                    resp.headers.setdefault("Strict-Transport-Security", self.hsts)
            return resp
        finally:
            self.metrics.request(status, count.bytes_in, count.bytes_out)
            logs.access(client_ip, request.method, raw_path, status, count.bytes_in,
                        count.bytes_out, time.monotonic() - started, self._base, self.route.port)

    async def _body(self, request: web.BaseRequest, count: _Counter) -> AsyncIterator[bytes]:
        content = request.content
        expected = request.content_length
        while True:
            try:
                chunk = await content.readany()
            except (aiohttp.ClientError, ConnectionError, asyncio.IncompleteReadError) as exc:
                raise ClientGone(str(exc)) from None
            if not chunk:
                break
            count.bytes_in += len(chunk)
            yield chunk
        if expected is not None and count.bytes_in < expected:
            raise ClientGone(f"client sent {count.bytes_in} of {expected} bytes")

    async def _proxy(self, request: web.BaseRequest, raw_path: str, client_ip: str,
                     count: _Counter) -> web.StreamResponse:
        target = origin_form(raw_path)
        if target is None:
            return error_response(400, "request target must be a path", raw_path)
        raw_path, authority = target
        host_header = authority or request.headers.get("Host")
        headers = upstream_request_headers(
            decode_raw(request.raw_headers), client_ip=client_ip, host=host_header,
            listener_port=self.route.port,
        )
        if self.auth is not None:  # certproxy consumed these credentials
            headers = [(n, v) for n, v in headers if n.lower() != "authorization"]
        if authority:  # absolute-form: its authority is the Host (RFC 9112, 3.2.2)
            headers = [(n, authority if n.lower() == "host" else v) for n, v in headers]
        parsed = parse_host(host_header)
        public = origin("https", parsed[0], parsed[1]) if parsed else None
        data = self._body(request, count) if request.body_exists else None
        # aiohttp's client retries an idempotent request once when a pooled
        # connection turns out closed (RFC 9112, 9.3.1), and never resends a body
        # it has started to send; POST and PATCH are never retried.
        sent = time.monotonic()
        try:
            upstream = await self.upstream.session.request(
                request.method,
                URL(self._base + raw_path, encoded=True),
                headers=headers,
                data=data,
                allow_redirects=False,
                compress=None,
            )
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            return error_response(
                504, f"upstream {self._base} of port {self.route.port} did not answer in time", raw_path)
        except aiohttp.ClientError as exc:
            if isinstance(exc.__cause__, ClientGone):
                # The upstream connection is closed by now; so is the client's.
                log.info("client %s went away mid-upload: %s", client_ip, exc.__cause__)
                self._abort(request)
                return web.Response(status=499)
            return error_response(
                502, f"upstream {self._base} of port {self.route.port}: {describe_client_error(exc)}",
                raw_path)
        self.metrics.latency.observe(time.monotonic() - sent)
        return await self._relay(request, upstream, public, count)

    async def _relay(self, request: web.BaseRequest, upstream: aiohttp.ClientResponse,
                     public: str | None, count: _Counter) -> web.StreamResponse:
        resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        resp.headers.extend(client_response_headers(
            decode_raw(upstream.raw_headers), upstream_url=self._base, public_origin=public))
        if self.hsts and "Strict-Transport-Security" not in resp.headers:
            resp.headers["Strict-Transport-Security"] = self.hsts
        try:
            await resp.prepare(request)
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)
                count.bytes_out += len(chunk)
            await resp.write_eof()
        except (aiohttp.ClientPayloadError, aiohttp.ServerTimeoutError, asyncio.TimeoutError,
                aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
            # Upstream failed mid-body: cut the client off so the body cannot look whole.
            log.warning("upstream %s failed mid-response: %s", self._base, describe_client_error(exc))
            upstream.close()
            self._abort(request)
        except ConnectionError:
            # The client went away mid-download: drop the upstream connection too.
            upstream.close()
            self._abort(request)
        else:
            upstream.release()
        return resp

    @staticmethod
    def _abort(request: web.BaseRequest) -> None:
        transport = request.transport
        if transport is not None:
            transport.abort()
