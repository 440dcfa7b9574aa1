"""Prometheus metrics, served on the admin listener (never on the public ones).

One ``Metrics`` object per process with its own registry (no global state).
Per-request work is a few integer additions on the listener's own
``RouteMetrics`` (``proxy/accessline.py``, compiled with the data plane); they,
certificate expiry and renewal state become metric families at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sized
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ..proxy.accessline import LATENCY_BUCKETS, STATUS_CLASSES, RouteMetrics
from ..proxy.tls import TLSState

if TYPE_CHECKING:
    from .workers import Worker

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKET_LABELS = (*(repr(float(b)) for b in LATENCY_BUCKETS), "+Inf")  # as prometheus_client writes "le"


class _Routes:
    """Every listener's ``RouteMetrics`` as Prometheus families, at scrape time."""

    def __init__(self, routes: list[RouteMetrics]) -> None:
        self._routes = routes

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "certproxy_requests",
            "Requests answered, by listener port and status class",
            labels=["route", "code"],
        )
        bytes_in = CounterMetricFamily(
            "certproxy_request_body_bytes", "Request body bytes received", labels=["route"]
        )
        bytes_out = CounterMetricFamily(
            "certproxy_response_body_bytes", "Response body bytes sent", labels=["route"]
        )
        latency = HistogramMetricFamily(
            "certproxy_upstream_response_seconds",
            "Time from sending a request upstream to its response head",
            labels=["route"],
        )
        for r in list(self._routes):
            for cls, count in zip(STATUS_CLASSES, list(r.by_class), strict=True):
                requests.add_metric([r.route, cls], count)
            bytes_in.add_metric([r.route], r.bytes_in)
            bytes_out.add_metric([r.route], r.bytes_out)
            cumulative, buckets = 0, []
            for label, count in zip(BUCKET_LABELS, list(r.latency_counts), strict=True):
                cumulative += count
                buckets.append((label, cumulative))
            latency.add_metric([r.route], buckets, r.latency_sum)
        yield from (requests, bytes_in, bytes_out, latency)


class _Scraped:
    """Certificate and renewal facts, read when Prometheus scrapes."""

    def __init__(self, tls: Callable[[], TLSState | None], renewals: Callable[[], Iterable[Any]]) -> None:
        self._tls = tls
        self._renewals = renewals

    def collect(self) -> Iterable[Metric]:
        expiry = GaugeMetricFamily(
            "certproxy_certificate_expiry_timestamp_seconds",
            "When each served certificate expires (Unix time)",
            labels=["name", "kind", "serial"],
        )
        issued = GaugeMetricFamily(
            "certproxy_certificate_not_before_timestamp_seconds",
            "When each served certificate became valid (Unix time): with the expiry, its lifetime",
            labels=["name", "kind", "serial"],
        )
        tls = self._tls()
        if tls is not None:
            for pair in tls.current.pairs:
                expiry.add_metric([pair.name, pair.kind, pair.serial], pair.not_after.timestamp())
                issued.add_metric([pair.name, pair.kind, pair.serial], pair.not_before.timestamp())
        yield expiry
        yield issued
        nxt = GaugeMetricFamily(
            "certproxy_renewal_next_timestamp_seconds",
            "When the next renewal is due (Unix time)",
            labels=["name"],
        )
        for r in self._renewals():
            if r.next_renewal is not None:
                nxt.add_metric([r.name], r.next_renewal.timestamp())
        yield nxt
        attempts = CounterMetricFamily(
            "certproxy_renewal_attempts", "Certificate orders started", labels=["name"]
        )
        failures = CounterMetricFamily(
            "certproxy_renewal_failures", "Certificate orders that failed", labels=["name"]
        )
        for r in self._renewals():
            attempts.add_metric([r.name], r.attempts)
            failures.add_metric([r.name], r.failures_total)
        yield attempts
        yield failures


class Collector(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class AccessFigures(Protocol):
    """An access gate's counts (``access.gate.AccessGate``)."""

    refusals: dict[str, int]
    failed_logins: int


class _Access:
    """The access policy's refusals and failed logins, summed over the gated ports."""

    def __init__(self, gates: Callable[[], Iterable[AccessFigures]]) -> None:
        self._gates = gates

    def collect(self) -> Iterable[Metric]:
        gates = list(self._gates())
        refusals = CounterMetricFamily(
            "certproxy_access_refusals",
            "Registry requests the access policy refused, by reason",
            labels=["reason"],
        )
        totals: dict[str, int] = {}
        for gate in gates:
            for reason, count in gate.refusals.copy().items():
                totals[reason] = totals.get(reason, 0) + count
        for reason, count in sorted(totals.items()):
            refusals.add_metric([reason], count)
        yield refusals
        yield CounterMetricFamily(
            "certproxy_access_failed_logins",
            "Logins with a wrong user or password (Basic credentials, the token endpoint)",
            value=sum(gate.failed_logins for gate in gates),
        )


class _Upstreams:
    """Whether each route's upstream answered its last health probe."""

    def __init__(self, probes: Callable[[], Iterable[tuple[str, bool | None]]]) -> None:
        self._probes = probes

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "certproxy_upstream_up",
            "1 when the route's upstream answered certproxy's last probe (made at most every"
            " 5 s, when /metrics or /healthz is asked), 0 when it did not",
            labels=["route"],
        )
        for route, ok in self._probes():
            if ok is not None:
                up.add_metric([route], 1.0 if ok else 0.0)
        yield up


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.active = Gauge(
            "certproxy_active_connections", "Open client connections, by listener", ["listener"], registry=r
        )
        self.handshake_failures = Counter(
            "certproxy_tls_handshake_failures",
            "TLS handshakes that did not complete",
            ["listener"],
            registry=r,
        )
        self.last_reload = Gauge(
            "certproxy_last_reload_timestamp_seconds",
            "When the store was last reloaded (Unix time)",
            registry=r,
        )
        self._tls: TLSState | None = None
        self._renewals: list[Any] = []
        self._routes: list[RouteMetrics] = []
        r.register(_Routes(self._routes))
        r.register(_Scraped(lambda: self._tls, lambda: self._renewals))

    def watch(self, tls: TLSState, renewals: list[Any]) -> None:
        self._tls = tls
        self._renewals = renewals

    def watch_registry(self, observer: Collector) -> None:
        """The registry routes' figures (``registry.RegistryObserver``): one per process."""
        self.registry.register(observer)

    def watch_access(self, gates: Callable[[], Iterable[AccessFigures]]) -> None:
        self.registry.register(_Access(gates))

    def watch_upstreams(self, probes: Callable[[], Iterable[tuple[str, bool | None]]]) -> None:
        """``probes``: each route's name and whether its upstream answered (None: not asked yet)."""
        self.registry.register(_Upstreams(probes))

    def worker_info(self, worker: Worker) -> None:
        """Which worker these figures cover (each worker has its own admin port)."""
        Gauge(
            "certproxy_worker",
            "The process these metrics cover: its worker index, the number of workers, its pid,"
            " and its instance (random, one per process: tells replicas apart)",
            ["index", "count", "pid", "instance"],
            registry=self.registry,
        ).labels(*(str(worker.describe()[k]) for k in ("index", "count", "pid", "instance"))).set(1)

    def route(self, route: str) -> RouteMetrics:
        stats = RouteMetrics(route)
        self._routes.append(stats)
        return stats

    def track_connections(self, connections: Sized, listener: str) -> None:
        self.active.labels(listener).set_function(lambda: len(connections))

    def render(self) -> bytes:
        return generate_latest(self.registry)
