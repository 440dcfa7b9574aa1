"""The plain-HTTP listener: ACME challenges, ``/healthz``, and redirects.

- ``GET /.well-known/acme-challenge/<token>`` answers the file
  ``STORE/challenges/<token>``; the token is taken from the raw (undecoded)
  path and must match ``[A-Za-z0-9_-]+``, so ``..``, ``%2e%2e``, ``/`` or NUL
  can never name another file. Any replica sharing the store can answer.
- ``/healthz`` as on every listener.
- Everything else: a redirect to ``https://<host>[:port]<path>?<query>``,
  301 for GET and HEAD, 308 for other methods (which keeps the method and
  body). A missing or malformed Host gets 400.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from ..certs import FileStore, is_valid_token
from . import logs
from .health import Health
from .hostname import origin, parse_host
from .metrics import RouteMetrics

CHALLENGE_PREFIX = "/.well-known/acme-challenge/"


def redirect_target(host_header: str | None, raw_path: str, https_port: int) -> str | None:
    parsed = parse_host(host_header)
    if parsed is None:
        return None
    path = raw_path if raw_path.startswith("/") else "/" + raw_path
    return origin("https", parsed[0], https_port) + path


class PlainHandler:
    def __init__(self, store: FileStore, health: Health, https_port: int, port: int,
                 metrics: RouteMetrics) -> None:
        self.store = store
        self.health = health
        self.https_port = https_port
        self.port = port
        self.metrics = metrics

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        resp = await self._answer(request)
        self.metrics.request(resp.status, 0, resp.content_length or 0)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        logs.access(peer[0] if peer else "-", request.method, request.raw_path, resp.status,
                    0, resp.content_length or 0, time.monotonic() - started, "-", self.port)
        return resp

    async def _answer(self, request: web.BaseRequest) -> web.StreamResponse:
        raw_path = request.raw_path
        path_only = raw_path.partition("?")[0]
        if path_only.startswith(CHALLENGE_PREFIX):
            return await self._challenge(request, path_only[len(CHALLENGE_PREFIX):])
        if path_only == "/healthz":
            return await self.health.response()
        target = redirect_target(request.headers.get("Host"), raw_path, self.https_port)
        if target is None or len(request.headers.getall("Host", [])) > 1:
            return web.Response(status=400, text="certproxy: missing or malformed Host header\n")
        status = 301 if request.method in ("GET", "HEAD") else 308
        return web.Response(status=status, headers={"Location": target},
                            text=f"Moved to {target}\n")

    async def _challenge(self, request: web.BaseRequest, token: str) -> web.Response:
        if request.method not in ("GET", "HEAD") or not is_valid_token(token):
            return web.Response(status=404, text="certproxy: no such challenge\n")
        data = await asyncio.to_thread(self.store.read_challenge, token)
        if data is None:
            return web.Response(status=404, text="certproxy: no such challenge\n")
        return web.Response(status=200, body=data, content_type="application/octet-stream",
                            headers={"Cache-Control": "no-store"})
