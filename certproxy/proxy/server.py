"""The running program: listeners, upstream pools, signals, draining.

How this works: ``Front.start()`` makes sure the store is usable, loads what
it holds (making a bootstrap certificate if there is nothing to serve), then
opens one data-plane listener per route (``dataplane``: asyncio protocols,
one upstream pool each) and aiohttp runners for the control listeners (plain
HTTP, admin), all TLS listeners sharing one ``TLSState``. ``Front.stop()``
first stops every listener from accepting, then lets in-flight requests
finish within the grace period, then closes the upstream pools. ``run()``
ties this to SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl

from aiohttp import web

from ..acme_client import AcmeIssuer
from ..acme_client.manager import CertManager
from ..certs import FileStore, StoreError, utcnow
from .config import Config
from .auth import BasicAuth, HtpasswdError
from .dataplane import SWEEP_INTERVAL, Listener, ProxyRoute, UpstreamPool
from .listener import MAX_FIELD_SIZE, MAX_LINE_SIZE, SERVER_READ_BUFSIZE, Server, TCPSite
from .health import Health, HealthState
from .logs import flush_access
from .metrics import Metrics
from .plain import PlainHandler
from .reload import Reloader
from .tls import CertificateSet, TLSState, guard_listener
from .upstream import Upstream

log = logging.getLogger("certproxy")

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
        self._listeners: list[Listener] = []
        self._pools: list[UpstreamPool] = []
        self._sweeper: asyncio.TimerHandle | None = None
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
        # Everything /healthz and /metrics report exists before the first listener opens.
        self.metrics.watch(self.tls, self.health.renewals)
        self.metrics.last_reload.set_function(
            lambda: self.health_state.last_reload.timestamp() if self.health_state.last_reload else 0)
        if cfg.acme_enabled:
            settings = cfg.acme_settings()
            self.acme = CertManager(self.store, settings, AcmeIssuer(self.store, settings))
            self.health.renewals.append(self.acme.status)
        # Watching the store before the first listener opens: a change made as
        # soon as certproxy answers is never missed.
        self.reloader = Reloader(self.store, cfg.cert_domains, self.tls, self.health_state,
                                 poll_interval=cfg.reload_poll)
        await self.reloader.start()
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
                await self._listen_tls(upstream, auth)
            if cfg.admin_port is not None:
                await self._listen(self._admin, cfg.admin_port, None, bind=cfg.admin_bind)
        except OSError as exc:
            await self.stop(0)
            raise StartupError("CERTPROXY_BIND", f"cannot listen: {exc.strerror or exc}") from None
        self._sweep()
        if self.acme is not None:
            self._acme_task = asyncio.create_task(self.acme.run())
            log.info("ACME on: %s for %s", self.acme.settings.directory,
                     ", ".join(self.acme.settings.domains))

    async def _admin(self, request: web.BaseRequest) -> web.StreamResponse:
        """The admin listener: metrics and health, for the operator's network only."""
        path = request.raw_path.partition("?")[0]
        if path == "/metrics":
            return await self.metrics.response()
        if path == "/healthz" and self.health is not None:
            return await self.health.response()
        return web.Response(status=404, text="certproxy admin: /metrics or /healthz\n")

    async def _listen_tls(self, upstream: Upstream, auth: BasicAuth | None) -> None:
        """One TLS listener on the data plane, with its own upstream pool."""
        assert self.tls is not None and self.health is not None
        port = upstream.route.port
        ctx = self.tls.listener_context()
        guard_listener(ctx, port, self.metrics.handshake_failures.labels(str(port)).inc)
        pool = UpstreamPool(upstream.route, self.config)
        self._pools.append(pool)
        route = ProxyRoute(upstream.route, pool, self.health, self.metrics.route(str(port)), auth,
                           self.config.hsts_max_age)
        listener = Listener(route, self.config)
        await listener.start(self.config.bind, port, ctx)
        self._listeners.append(listener)
        self.metrics.track_connections(listener.connections, str(port))
        log.info("listening on %s:%d (tls)", self.config.bind, port)

    def _sweep(self) -> None:
        """Timeouts of every data-plane connection, a few times a second."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for listener in self._listeners:
            listener.sweep(now)
        flush_access()
        self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)

    async def _listen(self, handler: object, port: int, ssl_context: object,
                      bind: str | None = None) -> None:
        listener = f"{port}"
        if isinstance(ssl_context, ssl.SSLContext):
            guard_listener(ssl_context, port, self.metrics.handshake_failures.labels(listener).inc)
        server = Server(
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
        site = TCPSite(runner, address, port, ssl_context=ssl_context,  # type: ignore[arg-type]
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
        for listener in self._listeners:
            listener.stop_accepting()
        for runner in self._runners:
            for site in list(runner.sites):
                await site.stop()
        if grace is None:
            grace = self.config.shutdown_grace
        for runner in self._runners:
            runner._shutdown_timeout = grace  # type: ignore[attr-defined]
        await asyncio.gather(*(runner.cleanup() for runner in self._runners),
                             *(listener.drain(grace) for listener in self._listeners))
        self._runners.clear()
        self._listeners.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for pool in self._pools:
            pool.close()
        self._pools.clear()
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
    flush_access()
    log.info("stopped")
