"""The plain-HTTP listener: ACME challenges, ``/healthz``, and redirects.

- ``GET /.well-known/acme-challenge/<token>`` answers the file
  ``STORE/challenges/<token>``; the token is taken from the raw (undecoded)
  path and must match ``[A-Za-z0-9_-]+``, so ``..``, ``%2e%2e``, ``/`` or NUL
  can never name another file. Any replica sharing the store can answer.
- ``/healthz`` as on every listener.
- ``GET /ca.crt`` with the local CA on: its certificate (PEM), for clients to
  trust; 404 until it exists. Plain HTTP on purpose: a client that does not
  trust the CA yet cannot check a TLS answer either (the log and ``certproxy
  status`` give the fingerprint to compare).
- Everything else: a redirect to ``https://<host>[:port]<path>?<query>``,
  301 for GET and HEAD, 308 for other methods (which keeps the method and
  body). A missing or malformed Host gets 400.
"""

from __future__ import annotations

import asyncio

from ..certs import FileStore, is_valid_token
from ..proxy.headers import NO_STORE, Answer
from ..proxy.hostname import origin, parse_host
from ..proxy.routes import Request
from ..proxy.wire import TEXT
from .health import Health

CHALLENGE_PREFIX = "/.well-known/acme-challenge/"


def redirect_target(host_header: str | None, raw_path: str, https_port: int) -> str | None:
    parsed = parse_host(host_header)
    if parsed is None:
        return None
    path = raw_path if raw_path.startswith("/") else "/" + raw_path
    return origin("https", parsed[0], https_port) + path


async def challenge_answer(store: FileStore, method: bytes, token: str, who: str = "certproxy") -> Answer:
    """The key authorization for an HTTP-01 token from the store, or 404."""
    data = None
    if method in (b"GET", b"HEAD") and is_valid_token(token):
        data = await asyncio.to_thread(store.read_challenge, token)
    if data is None:
        return 404, [], f"{who}: no such challenge\n".encode(), TEXT
    return 200, NO_STORE, data, b"application/octet-stream"


CA_CERT_TYPE = b"application/x-x509-ca-cert"


class PlainHandler:
    """The answer of the plain-HTTP listener (a ``proxy.routes.Responder``)."""

    def __init__(self, store: FileStore, health: Health, https_port: int, *, local_ca: bool = False) -> None:
        self.store = store
        self.health = health
        self.local_ca = local_ca
        self.https_port = https_port

    async def __call__(self, ex: Request) -> Answer:
        raw_path = ex.target.decode("latin-1")
        path_only = raw_path.partition("?")[0]
        if path_only.startswith(CHALLENGE_PREFIX):
            return await challenge_answer(self.store, ex.method, path_only[len(CHALLENGE_PREFIX) :])
        if path_only == "/healthz":
            return await self.health.answer(ex)
        if path_only == "/ca.crt" and self.local_ca:
            return await self._ca_cert(ex.method)
        hosts = ex.header(b"host")
        target = redirect_target(hosts[0].decode("latin-1") if hosts else None, raw_path, self.https_port)
        if target is None or len(hosts) > 1:
            return 400, [], b"certproxy: missing or malformed Host header\n", TEXT
        status = 301 if ex.method in (b"GET", b"HEAD") else 308
        return status, [(b"Location", target.encode())], f"Moved to {target}\n".encode(), TEXT

    async def _ca_cert(self, method: bytes) -> Answer:
        if method not in (b"GET", b"HEAD"):
            return 405, [(b"Allow", b"GET, HEAD")], b"certproxy: /ca.crt is read with GET\n", TEXT
        data = await asyncio.to_thread(self.store.local_ca_cert)
        if data is None:
            return 404, [], b"certproxy: the local CA is not made yet\n", TEXT
        return 200, NO_STORE, data, CA_CERT_TYPE
