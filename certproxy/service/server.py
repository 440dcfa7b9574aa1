"""The running program: listeners, upstream pools, signals, draining.

How this works: ``Front.start()`` makes sure the store is usable, loads what
it holds (making a bootstrap certificate if there is nothing to serve), then
sets up its long-lived resources in order, each in a step of its own that
also tears it down (``Front`` says how): the upstream probes, the store's
reloader, one data-plane listener per route (``proxy``: asyncio protocols,
one upstream pool each) and the control listeners on the same machinery
(plain HTTP, admin), all TLS listeners sharing one ``TLSState``, then the
certificate maintenance. What the data plane needs from here comes in as
callables and small interfaces (``proxy.routes``): the ``/healthz`` answer,
the credential check, counters, the access log. ``Front.stop()`` tears down
in reverse: the maintenance stops, every listener stops accepting and lets
in-flight requests finish within the grace period, the pools close, then the
reloader and the probes stop. ``run()`` ties this to SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..certs import FileStore, StoreError, os_problem, utcnow
from ..proxy.client import SWEEP_INTERVAL, Listener
from ..proxy.headers import NO_STORE, Answer
from ..proxy.hello import ACME_TLS_1
from ..proxy.hostname import host_port
from ..proxy.routes import ControlRoute, ProxyRoute, Request, Route
from ..proxy.tls import TLSState, load_pem_into
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
    from .access.gate import AccessGate
    from .registry import RegistryObserver

log = logging.getLogger("certproxy")


class Front:
    """The running program's long-lived resources: set up in order, torn down in reverse.

    How this works: ``start()`` checks the files the settings name, loads the store and
    makes what needs no tear-down (the TLS state, the health report, the certificate
    manager), then runs the steps that hold a resource. Each step is an async generator
    that sets its resource up, yields once, and tears it down after the yield (aiohttp's
    ``cleanup_ctx``): the upstream probes, the store's reloader, the listeners with their
    pools and the timeout sweep, the certificate maintenance. ``stop()`` resumes the steps
    that were set up, last first; a step that fails at start-up has the earlier ones torn
    down (without waiting for a drain) before its error goes on.
    """

    def __init__(self, config: Config, worker: Worker | None = None) -> None:
        self.config = config
        self.worker = worker or Worker()
        self.store = FileStore(config.store)
        self.health_state = HealthState()
        self.tls: TLSState | None = None
        self.health: Health | None = None
        self.reloader: Reloader | None = None
        self.acme: CertManager | None = None
        self.metrics = Metrics()
        self.auth = BasicAuth(config.auth_htpasswd) if config.auth_htpasswd else None
        self._steps: list[AsyncIterator[None]] = []  # set up, in order
        self._gates: dict[int, AccessGate] = {}  # TLS port -> its access policy's gate
        # the registry routes' reader (CERTPROXY_REGISTRY_PORTS), one for all of them
        self.observer: RegistryObserver | None = None
        if config.watched_ports:
            from .registry import RegistryObserver  # loaded only where a route is watched

            self.observer = RegistryObserver(config.metrics_repositories, config.metrics_upload_window)
        self._grace = 0.0  # how long the listeners' tear-down lets requests finish (stop() sets it)

    async def start(self) -> None:
        await self._check_files()
        tls, baseline = await self._load_store()
        upstream_ssl = await self._upstream_contexts()
        probes = [UpstreamProbe(route, upstream_ssl[route.port]) for route in self.config.routes]
        health = Health(tls, probes, self.health_state, self.worker)
        self.tls, self.health = tls, health
        self._watch(tls, health)
        acme = await self._certificate_manager(health)
        for step in (
            self._probing(probes),
            self._reloading(tls, baseline, acme),
            self._guarding(upstream_ssl),
            self._serving(tls, health, upstream_ssl),
            self._maintaining(acme),
        ):
            try:
                await anext(step)
            except BaseException:
                await self.stop(0)
                raise
            self._steps.append(step)

    async def stop(self, grace: float | None = None) -> None:
        """Tear down what ``start`` set up, last first: the certificate maintenance stops,
        the listeners stop accepting and let requests in flight finish within ``grace``
        (the shutdown grace by default), the reloader and the probes stop."""
        self._grace = self.config.shutdown_grace if grace is None else grace
        while self._steps:
            try:
                await anext(self._steps.pop())
            except StopAsyncIteration:
                pass
            except Exception:  # a defect in one tear-down: said, and the others still run
                log.exception("stopping: a tear-down step failed")

    async def _check_files(self) -> None:
        """Files named by settings first: a mistake there stops start-up before anything is made."""
        cfg = self.config
        if self.auth is not None:
            try:
                await asyncio.to_thread(self.auth.load)
            except HtpasswdError as exc:
                raise StartupError("CERTPROXY_AUTH_HTPASSWD", str(exc)) from None
            except OSError as exc:
                raise StartupError("CERTPROXY_AUTH_HTPASSWD", os_problem(exc, cfg.auth_htpasswd)) from None
        if cfg.acme_enabled:
            await asyncio.to_thread(check_ca_bundle, cfg.acme_ca_bundle)

    async def _load_store(self) -> tuple[TLSState, object]:
        """The store made usable and loaded (a bootstrap certificate if it holds nothing to
        serve), and its fingerprint from before the load, for the reloader."""
        cfg = self.config
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
        self.health_state.last_reload = utcnow()
        primary = certs.primary
        log.info(
            "serving certificate %s (%s, %s, expires %s)",
            primary.name,
            primary.kind,
            ", ".join(primary.domains),
            primary.not_after.date(),
        )
        return TLSState(certs), baseline

    async def _upstream_contexts(self) -> dict[int, ssl.SSLContext | None]:
        """One TLS context per https upstream, shared by its pool and its probe; loading
        the system CA store is not for the event loop."""
        upstream_ssl: dict[int, ssl.SSLContext | None] = {}
        for route in self.config.routes:
            upstream_ssl[route.port] = (
                await asyncio.to_thread(ssl.create_default_context) if route.scheme == "https" else None
            )
        return upstream_ssl

    def _watch(self, tls: TLSState, health: Health) -> None:
        """Everything /healthz and /metrics report exists before the first listener opens."""
        self.metrics.watch(tls, health.renewals)
        self.metrics.last_reload.set_function(
            lambda: self.health_state.last_reload.timestamp() if self.health_state.last_reload else 0
        )
        self.metrics.worker_info(self.worker)
        self.metrics.watch_upstreams(health.upstreams_up)
        if self.observer is not None:
            self.metrics.watch_registry(self.observer)
        if self.config.access is not None:
            self.metrics.watch_access(self._gates.values)

    async def _certificate_manager(self, health: Health) -> CertManager | None:
        """The local CA made or checked, and the manager that keeps the certificates
        current, in the worker that maintains them (None elsewhere)."""
        cfg = self.config
        if cfg.local_ca and self.worker.maintains_certificates:
            await self._local_ca()
        if not (cfg.maintains_certificates and self.worker.maintains_certificates):
            return None
        from ..acme_client.issuers import make_issuer
        from ..acme_client.manager import CertManager

        settings = cfg.acme_settings()
        # The ACME client runs in a child process per call: the acme library,
        # requests and dnspython never load into the serving process.
        issuer = make_issuer(self.store, settings, in_child=True)
        self.acme = CertManager(self.store, settings, issuer)
        health.renewals.append(self.acme.status)
        return self.acme

    async def _probing(self, probes: list[UpstreamProbe]) -> AsyncIterator[None]:
        yield
        for probe in probes:
            probe.close()

    async def _reloading(
        self, tls: TLSState, baseline: object, acme: CertManager | None
    ) -> AsyncIterator[None]:
        """Watching the store before the first listener opens: a change made as soon as
        certproxy answers is never missed."""
        cfg = self.config
        reloader = Reloader(
            self.store, cfg.cert_domains, tls, self.health_state, poll_interval=cfg.reload_poll
        )
        if acme is not None:
            reloader.on_reload.append(acme.store_changed)
        await reloader.start(baseline=baseline)
        self.reloader = reloader
        yield
        await reloader.stop()

    async def _guarding(self, upstream_ssl: dict[int, ssl.SSLContext | None]) -> AsyncIterator[None]:
        """The access policy of the registry routes (``CERTPROXY_ACCESS``), loaded, and
        watched for changes while certproxy runs; a broken one stops start-up."""
        cfg = self.config
        if cfg.access is None:
            yield
            return
        # The policy's modules are loaded only where a policy is set.
        from .access.gate import AccessGate, Upstream
        from .access.policy import PolicyError

        for route in cfg.routes:
            if route.port in cfg.gated_ports:
                upstream = Upstream(route.host, route.upstream_port, upstream_ssl[route.port])
                gate = AccessGate(cfg.access, self.store, upstream)
                try:
                    await asyncio.to_thread(gate.load)
                except (PolicyError, HtpasswdError) as exc:
                    raise StartupError("CERTPROXY_ACCESS", str(exc)) from None
                except OSError as exc:
                    raise StartupError("CERTPROXY_ACCESS", os_problem(exc, cfg.access)) from None
                try:
                    await asyncio.to_thread(gate.check_signing)
                except OSError as exc:  # a read-only or full store cannot keep a token key
                    raise StartupError("CERTPROXY_STORE", f"cannot keep a token-signing key: {exc}") from None
                self._gates[route.port] = gate
        watchers = [asyncio.create_task(gate.watch()) for gate in self._gates.values()]
        log.info("access policy %s on port %s", cfg.access, ", ".join(map(str, self._gates)))
        yield
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)

    async def _serving(
        self, tls: TLSState, health: Health, upstream_ssl: dict[int, ssl.SSLContext | None]
    ) -> AsyncIterator[None]:
        """Every listener open, and the timeout sweep running; at the end, no new
        connections, requests in flight finished (within the grace), pools closed."""
        cfg = self.config
        listeners: list[Listener] = []
        sockets: list[str] = []  # unix socket files to remove
        pools: list[UpstreamPool] = []
        sweeper: _Sweep | None = None
        try:
            if cfg.http_port is not None:
                plain = PlainHandler(self.store, health, cfg.redirect_port, local_ca=cfg.local_ca)
                route = ControlRoute(cfg.http_port, plain, self.metrics.route("http"), logs.access)
                listeners.append(await self._listen(route, cfg.bind, None, "CERTPROXY_HTTP_PORT"))
            for proxy in cfg.routes:
                pool = UpstreamPool(
                    proxy.host, proxy.upstream_port, cfg.pool_settings(), upstream_ssl[proxy.port]
                )
                pools.append(pool)
                listeners.append(await self._listen_tls(proxy, pool, tls.listener_context(), health))
            if cfg.admin_port is not None:
                # One admin port per worker (ADMIN_PORT + index): each /metrics and /healthz
                # there covers one known worker, which a shared port could not promise.
                admin = ControlRoute(cfg.admin_port + self.worker.index, self._admin)
                listeners.append(
                    await self._listen(admin, cfg.admin_bind, None, "CERTPROXY_ADMIN_PORT", shared=False)
                )
            if cfg.admin_socket is not None:
                path = self.admin_socket_path(cfg.admin_socket)
                listeners.append(await self._listen_unix(path))
                sockets.append(path)  # once it is certproxy's socket, never an operator's file
            sweeper = _Sweep(listeners)
            yield
        finally:
            # Stop accepting, let requests in flight finish (the sweep still times them
            # out meanwhile), then close what is left.
            for listener in listeners:
                listener.stop_accepting()
            for path in sockets:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            try:
                await asyncio.gather(*(listener.drain(self._grace) for listener in listeners))
            finally:
                if sweeper is not None:
                    sweeper.cancel()
                for pool in pools:
                    pool.close()

    async def _maintaining(self, acme: CertManager | None) -> AsyncIterator[None]:
        if acme is None:
            yield
            return
        task = asyncio.create_task(acme.run())
        what = "local CA" if self.config.local_ca else f"ACME on: {acme.settings.directory}"
        log.info("%s for %s", what, ", ".join(acme.settings.domains))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

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
            if self.health is not None:
                await self.health.probe()  # upstream_up as of now (cached a few seconds)
            if self.observer is not None:
                self.observer.sweep()  # abandoned uploads counted before the figures are read
            body = await asyncio.to_thread(self.metrics.render)
            return 200, NO_STORE, body, METRICS_CONTENT_TYPE.encode()
        if path == b"/healthz" and self.health is not None:
            return await self.health.answer()
        return 404, [], b"certproxy admin: /metrics or /healthz\n", b"text/plain; charset=utf-8"

    async def _listen_tls(
        self, route: Route, pool: UpstreamPool, ctx: ssl.SSLContext, health: Health
    ) -> Listener:
        """One TLS listener on the data plane, with its own upstream pool."""
        auth = self.auth if route.port in self.config.protected_ports else None
        proxy = ProxyRoute(
            route,
            pool,
            healthz=health.answer,
            stats=self.metrics.route(str(route.port)),
            auth=auth,
            hsts_max_age=self.config.hsts_max_age,
            access_log=logs.access,
            gate=self._gates.get(route.port),
            observer=self.observer if route.port in self.config.watched_ports else None,
        )
        alpn = self._alpn_context if route.port in self.config.alpn_ports else None
        listener = await self._listen(
            proxy,
            self.config.bind,
            ctx,
            "CERTPROXY_ROUTES",
            alpn_challenge=alpn,
            on_handshake_failure=self.metrics.handshake_failures.labels(str(route.port)).inc,
        )
        guard = "access policy" if route.port in self._gates else f"basic auth {'on' if auth else 'off'}"
        if proxy.observer is not None:
            guard += ", read as the registry API"
        log.info("route :%d -> %s (%s)", route.port, route.url, guard)
        return listener

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
    ) -> Listener:
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
        self.metrics.track_connections(listener.connections, str(route.port))
        kind = {"CERTPROXY_HTTP_PORT": "http", "CERTPROXY_ADMIN_PORT": "admin"}.get(setting, "tls")
        log.info("listening on %s (%s)", host_port(bind, route.port), kind)
        return listener

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

    async def _listen_unix(self, path: str) -> Listener:
        """The admin listener on a unix socket: reached only from inside this host's (or
        container's) filesystem, so it always answers for this very process, even
        where replicas share every TCP port."""
        listener = Listener(ControlRoute(0, self._admin), self.config.limits())
        try:
            await listener.start_unix(path)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise StartupError("CERTPROXY_ADMIN_SOCKET", f"cannot listen on {path}: {reason}") from None
        log.info("listening on %s (admin)", path)
        return listener


class _Sweep:
    """Timeouts of every data-plane connection, a few times a second, until cancelled;
    the access lines buffered meanwhile go out with each sweep."""

    def __init__(self, listeners: list[Listener]) -> None:
        self.listeners = listeners
        self.loop = asyncio.get_running_loop()
        self.handle: asyncio.TimerHandle | None = None
        self.run()

    def run(self) -> None:
        now = self.loop.time()
        for listener in self.listeners:
            listener.sweep(now)
        logs.flush_access()
        self.handle = self.loop.call_later(SWEEP_INTERVAL, self.run)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()


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
