"""The running program: listeners, upstream pools, signals, draining.

How this works: ``Front.start()`` makes sure the store is usable, loads what
it holds (making a bootstrap certificate if there is nothing to serve), opens
one pooled session per upstream, then starts one aiohttp runner per listener:
the plain-HTTP one and one TLS listener per route, all sharing one
``TLSState``. ``Front.stop()`` first stops every listener from accepting, then
lets in-flight requests finish within the grace period, then closes the
upstream pools. ``run()`` ties this to SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from ..acme_client import AcmeIssuer
from ..acme_client.manager import CertManager
from ..certs import FileStore, StoreError, utcnow
from .config import Config
from .auth import BasicAuth, HtpasswdError
from .handler import ProxyHandler
from .health import Health, HealthState
from .metrics import Metrics
from .plain import PlainHandler
from .reload import Reloader
from .tls import CertificateSet, TLSState, guard_listener
from .upstream import Upstream

log = logging.getLogger("certproxy")

# Request heads larger than this are refused (431/414) by aiohttp's parser;
# registry bearer tokens fit with room to spare.
MAX_FIELD_SIZE = 16384
MAX_LINE_SIZE = 16384
SERVER_READ_BUFSIZE = 1 << 18


class _RequestHandler(RequestHandler):
    """aiohttp's connection handler with certproxy's answers to malformed requests.

    aiohttp's parser (llhttp) already refuses ambiguous framing (Content-Length
    with Transfer-Encoding, duplicate lengths, obsolete folding, bare CR/LF,
    NUL, bad chunk sizes). Here the answer becomes one line without echoing
    the request, 414/431 for an over-long request line/header, and a log line
    without a traceback.
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


class _Server(web.Server):
    """``web.Server`` making certproxy's connection handlers, with their limits."""

    def __init__(self, handler: Any, *, header_timeout: float = 0, max_connections: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.header_timeout = header_timeout
        self.max_connections = max_connections

    def __call__(self) -> RequestHandler:
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


class _TCPSite(web.TCPSite):
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


class StartupError(Exception):
    """Start-up cannot go on; ``source`` names the setting at fault."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source


class Front:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = FileStore(config.store)
        self.upstreams = [Upstream(route, config) for route in config.routes]
        self.health_state = HealthState()
        self.tls: TLSState | None = None
        self.health: Health | None = None
        self.reloader: Reloader | None = None
        self.acme: CertManager | None = None
        self._acme_task: asyncio.Task[None] | None = None
        self._runners: list[web.BaseRunner] = []
        self.metrics = Metrics()
        self.auth = BasicAuth(config.auth_htpasswd) if config.auth_htpasswd else None

    async def load_certificates(self) -> CertificateSet:
        inventory = await asyncio.to_thread(self.store.inventory, self.config.cert_domains)
        for path, reason in inventory.errors.items():
            log.error("not serving %s: %s", path, reason)
        self.health_state.store_errors = dict(inventory.errors)
        return await asyncio.to_thread(CertificateSet, inventory.primary, inventory.pairs)

    async def start(self) -> None:
        cfg = self.config
        try:
            await asyncio.to_thread(self.store.ensure_layout)
            certs = await self.load_certificates()
        except StoreError as exc:
            raise StartupError("CERTPROXY_STORE", str(exc)) from None
        if self.auth is not None:
            try:
                await asyncio.to_thread(self.auth.load)
            except (OSError, HtpasswdError) as exc:
                raise StartupError("CERTPROXY_AUTH_HTPASSWD", str(exc)) from None
        self.tls = TLSState(certs)
        self.health_state.last_reload = utcnow()
        primary = certs.primary
        log.info("serving certificate %s (%s, %s, expires %s)", primary.name, primary.kind,
                 ", ".join(primary.domains), primary.not_after.date())
        self.health = Health(self.tls, self.upstreams, self.health_state)
        for upstream in self.upstreams:
            await upstream.start()
        try:
            if cfg.http_port is not None:
                plain = PlainHandler(self.store, self.health, cfg.redirect_port, cfg.http_port,
                                     self.metrics.route("http"))
                await self._listen(plain, cfg.http_port, None)
            for upstream in self.upstreams:
                port = upstream.route.port
                auth = self.auth if port in cfg.auth_ports else None
                handler = ProxyHandler(upstream.route, upstream, self.health,
                                       self.metrics.route(str(port)), auth, cfg.hsts_max_age)
                await self._listen(handler, port, self.tls.listener_context())
            if cfg.admin_port is not None:
                await self._listen(self._admin, cfg.admin_port, None, bind=cfg.admin_bind)
        except OSError as exc:
            await self.stop(0)
            raise StartupError("CERTPROXY_BIND", f"cannot listen: {exc.strerror or exc}") from None
        self.reloader = Reloader(self.store, cfg.cert_domains, self.tls, self.health_state,
                                 poll_interval=cfg.reload_poll)
        await self.reloader.start()
        self.metrics.watch(self.tls, self.health.renewals)
        self.metrics.last_reload.set_function(
            lambda: self.health_state.last_reload.timestamp() if self.health_state.last_reload else 0)
        if cfg.acme_enabled:
            settings = cfg.acme_settings()
            self.acme = CertManager(self.store, settings, AcmeIssuer(self.store, settings))
            self.health.renewals.append(self.acme.status)
            self._acme_task = asyncio.create_task(self.acme.run())
            log.info("ACME on: %s for %s", settings.directory, ", ".join(settings.domains))

    async def _admin(self, request: web.BaseRequest) -> web.StreamResponse:
        """The admin listener: metrics and health, for the operator's network only."""
        path = request.raw_path.partition("?")[0]
        if path == "/metrics":
            return await self.metrics.response()
        if path == "/healthz" and self.health is not None:
            return await self.health.response()
        return web.Response(status=404, text="certproxy admin: /metrics or /healthz\n")

    async def _listen(self, handler: object, port: int, ssl_context: object,
                      bind: str | None = None) -> None:
        listener = f"{port}"
        if isinstance(ssl_context, ssl.SSLContext):
            guard_listener(ssl_context, port, self.metrics.handshake_failures.labels(listener).inc)
        server = _Server(
            handler,
            header_timeout=self.config.header_timeout,
            max_connections=self.config.max_connections,
            access_log=None,
            keepalive_timeout=self.config.keepalive_timeout,
            max_line_size=MAX_LINE_SIZE,
            max_field_size=MAX_FIELD_SIZE,
            read_bufsize=SERVER_READ_BUFSIZE,
            auto_decompress=False,
        )
        runner = web.ServerRunner(server, handle_signals=False,
                                  shutdown_timeout=self.config.shutdown_grace)
        await runner.setup()
        self._runners.append(runner)
        self.metrics.track_server(server, listener)
        address = bind or self.config.bind
        site = _TCPSite(runner, address, port, ssl_context=ssl_context,  # type: ignore[arg-type]
                        reuse_address=True, backlog=1024,
                        tls_handshake_timeout=self.config.tls_handshake_timeout)
        await site.start()
        log.info("listening on %s:%d (%s)", address, port,
                 "tls" if ssl_context else ("admin" if bind else "http"))

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting everywhere, let requests in flight finish, close pools."""
        if self._acme_task is not None:
            self._acme_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._acme_task
        if self.reloader is not None:
            await self.reloader.stop()
        for runner in self._runners:
            for site in list(runner.sites):
                await site.stop()
        if grace is not None:
            for runner in self._runners:
                runner._shutdown_timeout = grace  # type: ignore[attr-defined]
        await asyncio.gather(*(runner.cleanup() for runner in self._runners))
        self._runners.clear()
        for upstream in self.upstreams:
            await upstream.close()


async def run(config: Config) -> None:
    """Serve until SIGTERM or SIGINT, then drain and return."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    front = Front(config)
    await front.start()
    reloads: set[asyncio.Task[bool]] = set()

    def on_sighup() -> None:
        if front.reloader is not None:
            task = asyncio.create_task(front.reloader.reload("SIGHUP", fresh=True))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    log.info("certproxy ready")
    await stopping.wait()
    log.info("stopping: draining requests in flight (up to %g s)", config.shutdown_grace)
    await front.stop()
    log.info("stopped")
