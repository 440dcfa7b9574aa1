"""The running program: listeners, upstream pools, signals, draining.

How this works: ``Front.start()`` makes sure the store is usable, loads what
it holds (making a bootstrap certificate if there is nothing to serve), then
opens one data-plane listener per route (``proxy``: asyncio protocols,
one upstream pool each) and the control listeners on the same machinery
(plain HTTP, admin), all TLS listeners sharing one ``TLSState``. What the
data plane needs from here comes in as callables and small interfaces
(``proxy.routes``): the ``/healthz`` answer, the credential check, counters,
the access log. ``Front.stop()``
first stops every listener from accepting, then lets in-flight requests
finish within the grace period, then closes the upstream pools. ``run()``
ties this to SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..certs import FileStore, StoreError, os_problem, utcnow
from ..proxy.client import SWEEP_INTERVAL, Listener
from ..proxy.headers import NO_STORE, Answer
from ..proxy.hello import ACME_TLS_1
from ..proxy.routes import ControlRoute, ProxyRoute, Request, Route
from ..proxy.tls import TLSState
from ..proxy.tls import _load_pem_into as load_pem_into
from ..proxy.tlsconn import AlpnChallenge
from ..proxy.upstream import UpstreamPool
from . import logs
from .auth import BasicAuth, HtpasswdError
from .checks import StartupError, check_ca_bundle, listen_error
from .config import Config
from .health import Health, HealthState, UpstreamProbe
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics
from .plain import PlainHandler
from .reload import Reloader, load_certificates
from .trust import trust_recipe
from .workers import Worker, instance_id

if TYPE_CHECKING:
    from ..acme_client.manager import CertManager

log = logging.getLogger("certproxy")


class Front:
    def __init__(self, config: Config, worker: Worker | None = None) -> None:
        self.config = config
        self.worker = worker or Worker()
        self.store = FileStore(config.store)
        self.health_state = HealthState()
        self.tls: TLSState | None = None
        self.health: Health | None = None
        self.reloader: Reloader | None = None
        self.acme: CertManager | None = None
        self._acme_task: asyncio.Task[None] | None = None
        self._listeners: list[Listener] = []
        self._sockets: list[str] = []  # unix socket files to remove at stop
        self._pools: list[UpstreamPool] = []
        self._probes: list[UpstreamProbe] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self.metrics = Metrics()
        self.auth = BasicAuth(config.auth_htpasswd) if config.auth_htpasswd else None

    async def start(self) -> None:
        cfg = self.config
        # Files named by settings first: a mistake there stops start-up before anything is made.
        if self.auth is not None:
            try:
                await asyncio.to_thread(self.auth.load)
            except HtpasswdError as exc:
                raise StartupError("CERTPROXY_AUTH_HTPASSWD", str(exc)) from None
            except OSError as exc:
                raise StartupError("CERTPROXY_AUTH_HTPASSWD", os_problem(exc, cfg.auth_htpasswd)) from None
        if cfg.acme_enabled:
            await asyncio.to_thread(check_ca_bundle, cfg.acme_ca_bundle)
        try:
            await asyncio.to_thread(self.store.ensure_layout)
            # Taken before the load: a pair written from here on is seen by the reloader.
            baseline = await asyncio.to_thread(self.store.fingerprint)
            inventory, certs = await load_certificates(self.store, cfg.cert_domains)
        except StoreError as exc:
            raise StartupError("CERTPROXY_STORE", str(exc)) from None
        except OSError as exc:  # e.g. a parent folder certproxy may not enter
            raise StartupError("CERTPROXY_STORE", os_problem(exc, cfg.store)) from None
        self.health_state.store_errors = dict(inventory.errors)
        for path, why in inventory.errors.items():
            log.error("not serving %s: %s", path, why)
        self.tls = TLSState(certs)
        self.health_state.last_reload = utcnow()
        primary = certs.primary
        log.info(
            "serving certificate %s (%s, %s, expires %s)",
            primary.name,
            primary.kind,
            ", ".join(primary.domains),
            primary.not_after.date(),
        )
        # One TLS context per https upstream, shared by its pool and its probe; loading
        # the system CA store is not for the event loop.
        upstream_ssl: dict[int, ssl.SSLContext | None] = {}
        for route in cfg.routes:
            upstream_ssl[route.port] = (
                await asyncio.to_thread(ssl.create_default_context) if route.scheme == "https" else None
            )
        self._probes = [UpstreamProbe(route, upstream_ssl[route.port]) for route in cfg.routes]
        self.health = Health(self.tls, self._probes, self.health_state, self.worker)
        # Everything /healthz and /metrics report exists before the first listener opens.
        self.metrics.watch(self.tls, self.health.renewals)
        self.metrics.last_reload.set_function(
            lambda: self.health_state.last_reload.timestamp() if self.health_state.last_reload else 0
        )
        self.metrics.worker_info(self.worker)
        if cfg.local_ca and self.worker.maintains_certificates:
            await self._local_ca()
        if cfg.maintains_certificates and self.worker.maintains_certificates:
            from ..acme_client.issuers import make_issuer
            from ..acme_client.manager import CertManager

            settings = cfg.acme_settings()
            # The ACME client runs in a child process per call: the acme library,
            # requests and dnspython never load into the serving process.
            issuer = make_issuer(self.store, settings, in_child=True)
            self.acme = CertManager(self.store, settings, issuer)
            self.health.renewals.append(self.acme.status)
        # Watching the store before the first listener opens: a change made as
        # soon as certproxy answers is never missed.
        self.reloader = Reloader(
            self.store, cfg.cert_domains, self.tls, self.health_state, poll_interval=cfg.reload_poll
        )
        if self.acme is not None:
            self.reloader.on_reload.append(self.acme.store_changed)
        await self.reloader.start(baseline=baseline)
        try:
            if cfg.http_port is not None:
                plain = PlainHandler(self.store, self.health, cfg.redirect_port, local_ca=cfg.local_ca)
                await self._listen(
                    ControlRoute(cfg.http_port, plain, self.metrics.route("http"), logs.access),
                    cfg.bind,
                    None,
                    "CERTPROXY_HTTP_PORT",
                )
            for route in cfg.routes:
                await self._listen_tls(route, upstream_ssl[route.port])
            if cfg.admin_port is not None:
                # One admin port per worker (ADMIN_PORT + index): each /metrics and /healthz
                # there covers one known worker, which a shared port could not promise.
                await self._listen(
                    ControlRoute(cfg.admin_port + self.worker.index, self._admin),
                    cfg.admin_bind,
                    None,
                    "CERTPROXY_ADMIN_PORT",
                    shared=False,
                )
            if cfg.admin_socket is not None:
                await self._listen_unix(self.admin_socket_path(cfg.admin_socket))
        except StartupError:
            await self.stop(0)
            raise
        self._sweep()
        if self.acme is not None:
            self._acme_task = asyncio.create_task(self.acme.run())
            what = "local CA" if cfg.local_ca else f"ACME on: {self.acme.settings.directory}"
            log.info("%s for %s", what, ", ".join(self.acme.settings.domains))

    async def _local_ca(self) -> None:
        """The local CA, made on first start; a name outside its constraints stops start-up."""
        cfg = self.config
        try:
            ca, made = await asyncio.to_thread(self.store.ensure_local_ca, cfg.cert_domains, utcnow())
        except StoreError as exc:
            raise StartupError("CERTPROXY_LOCAL_CA", str(exc)) from None
        refusal = ca.refusal(cfg.cert_domains)
        if refusal:
            raise StartupError("CERTPROXY_DOMAINS", refusal)
        log.info("local CA %s %s", "made in" if made else "kept in", ca.folder)
        for line in trust_recipe(ca, cfg):
            log.info("trust it: %s", line)

    async def _admin(self, ex: Request) -> Answer:
        """The admin listener: metrics and health, for the operator's network only."""
        path = ex.target.partition(b"?")[0]
        if path == b"/metrics":
            body = await asyncio.to_thread(self.metrics.render)
            return 200, NO_STORE, body, METRICS_CONTENT_TYPE.encode()
        if path == b"/healthz" and self.health is not None:
            return await self.health.answer()
        return 404, [], b"certproxy admin: /metrics or /healthz\n", b"text/plain; charset=utf-8"

    async def _listen_tls(self, route: Route, upstream_ssl: ssl.SSLContext | None) -> None:
        """One TLS listener on the data plane, with its own upstream pool."""
        assert self.tls is not None and self.health is not None
        ctx = self.tls.listener_context()
        pool = UpstreamPool(route.host, route.upstream_port, self.config.pool_settings(), upstream_ssl)
        self._pools.append(pool)
        auth = self.auth if route.port in self.config.protected_ports else None
        proxy = ProxyRoute(
            route,
            pool,
            healthz=self.health.answer,
            stats=self.metrics.route(str(route.port)),
            auth=auth,
            hsts_max_age=self.config.hsts_max_age,
            access_log=logs.access,
        )
        alpn = (
            self._alpn_context
            if self.config.acme_enabled and self.config.challenge == "tls-alpn-01"
            else None
        )
        await self._listen(
            proxy,
            self.config.bind,
            ctx,
            "CERTPROXY_ROUTES",
            alpn_challenge=alpn,
            on_handshake_failure=self.metrics.handshake_failures.labels(str(route.port)).inc,
        )
        log.info(
            "route :%d -> %s (basic auth %s)", route.port, route.url, "on" if auth is not None else "off"
        )

    async def _listen(
        self,
        route: ProxyRoute | ControlRoute,
        bind: str,
        ctx: ssl.SSLContext | None,
        setting: str,
        *,
        shared: bool = True,
        alpn_challenge: AlpnChallenge | None = None,
        on_handshake_failure: Callable[[], None] | None = None,
    ) -> None:
        """Open one listener; a port that cannot be bound stops start-up naming ``setting``."""
        listener = Listener(route, self.config.limits())
        try:
            await listener.start(
                bind,
                route.port,
                ctx,
                reuse_port=shared and self.worker.shares_ports,
                alpn_challenge=alpn_challenge,
                on_handshake_failure=on_handshake_failure,
            )
        except OSError as exc:
            raise listen_error(exc, setting, bind, route.port) from None
        self._listeners.append(listener)
        self.metrics.track_connections(listener.connections, str(route.port))
        kind = {"CERTPROXY_HTTP_PORT": "http", "CERTPROXY_ADMIN_PORT": "admin"}.get(setting, "tls")
        log.info("listening on %s:%d (%s)", bind, route.port, kind)

    async def _alpn_context(self, server_name: str) -> ssl.SSLContext | None:
        """TLS-ALPN-01: the validation certificate for ``server_name`` if one is pending in
        the store (whichever replica ordered it), as a context that speaks only acme-tls/1."""

        def load() -> ssl.SSLContext | None:
            pem = self.store.alpn_challenge(server_name)
            if pem is None:
                return None
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.set_alpn_protocols([ACME_TLS_1])
            load_pem_into(ctx, pem, pem)  # one PEM holds the certificate and its key
            return ctx

        try:
            return await asyncio.to_thread(load)
        except (OSError, ssl.SSLError) as exc:
            log.warning("tls-alpn-01: cannot load the validation certificate for %s: %s", server_name, exc)
            return None

    def admin_socket_path(self, base: Path) -> str:
        """Worker 0's admin socket is ``base``; worker N's is ``base.N``."""
        return str(base) if self.worker.index == 0 else f"{base}.{self.worker.index}"

    async def _listen_unix(self, path: str) -> None:
        """The admin listener on a unix socket: reached only from inside this host's (or
        container's) filesystem, so it always answers for this very process, even
        where replicas share every TCP port."""
        listener = Listener(ControlRoute(0, self._admin), self.config.limits())
        try:
            await listener.start_unix(path)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise StartupError("CERTPROXY_ADMIN_SOCKET", f"cannot listen on {path}: {reason}") from None
        self._listeners.append(listener)
        self._sockets.append(path)
        log.info("listening on %s (admin)", path)

    def _sweep(self) -> None:
        """Timeouts of every data-plane connection, a few times a second."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for listener in self._listeners:
            listener.sweep(now)
        logs.flush_access()
        self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)

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
        for path in self._sockets:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._sockets.clear()
        if grace is None:
            grace = self.config.shutdown_grace
        await asyncio.gather(*(listener.drain(grace) for listener in self._listeners))
        self._listeners.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for probe in self._probes:
            probe.close()
        for pool in self._pools:
            pool.close()
        self._pools.clear()


async def run(config: Config, worker: Worker | None = None, ready: Callable[[], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then drain and return. ``ready`` is called once
    every listener is open."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    front = Front(config, worker)
    await front.start()
    if ready is not None:
        ready()
    reloads: set[asyncio.Task[bool]] = set()

    def on_sighup() -> None:
        if front.reloader is not None:
            task = asyncio.create_task(front.reloader.reload("SIGHUP", fresh=True))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    if front.worker.count > 1:
        log.info("certproxy worker %d of %d ready", front.worker.index, front.worker.count)
    elif front.worker.replicated:
        log.info("certproxy ready: instance %s, sharing its ports with other replicas", instance_id())
    else:
        log.info("certproxy ready")
    await stopping.wait()
    log.info("stopping: draining requests in flight (up to %g s)", config.shutdown_grace)
    await front.stop()
    logs.flush_access()
    log.info("stopped")
