"""Prometheus metrics, served on the admin listener (never on the public ones).

One ``Metrics`` object per process with its own registry (no global state).
Per-request work is a dictionary lookup of pre-made label children and a few
additions; certificate expiry and renewal state are read at scrape time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sized
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..proxy.tls import TLSState

if TYPE_CHECKING:
    from .workers import Worker

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class RouteMetrics:
    """The label children of one listener, made once (the data plane's ``RouteStats``)."""

    def __init__(self, m: Metrics, route: str) -> None:
        self.by_class = {c: m.requests.labels(route, c) for c in STATUS_CLASSES}
        self.bytes_in = m.bytes_in.labels(route)
        self.bytes_out = m.bytes_out.labels(route)
        self.latency = m.upstream_latency.labels(route)

    def request(self, status: int, bytes_in: int, bytes_out: int) -> None:
        cls = STATUS_CLASSES[min(max(status // 100, 1), 5) - 1]
        self.by_class[cls].inc()
        if bytes_in:
            self.bytes_in.inc(bytes_in)
        if bytes_out:
            self.bytes_out.inc(bytes_out)

    def upstream_response(self, seconds: float) -> None:
        self.latency.observe(seconds)


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
        tls = self._tls()
        if tls is not None:
            for pair in tls.current.pairs:
                expiry.add_metric([pair.name, pair.kind, pair.serial], pair.not_after.timestamp())
        yield expiry
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


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "certproxy_requests",
            "Requests answered, by listener port and status class",
            ["route", "code"],
            registry=r,
        )
        self.bytes_in = Counter(
            "certproxy_request_body_bytes", "Request body bytes received", ["route"], registry=r
        )
        self.bytes_out = Counter(
            "certproxy_response_body_bytes", "Response body bytes sent", ["route"], registry=r
        )
        self.upstream_latency = Histogram(
            "certproxy_upstream_response_seconds",
            "Time from sending a request upstream to its response head",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
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
        r.register(_Scraped(lambda: self._tls, lambda: self._renewals))

    def watch(self, tls: TLSState, renewals: list[Any]) -> None:
        self._tls = tls
        self._renewals = renewals

    def worker_info(self, worker: Worker) -> None:
        """Which worker these figures cover (each worker has its own admin port)."""
        Gauge(
            "certproxy_worker",
            "The worker process these metrics cover: its index, the number of workers, its pid",
            ["index", "count", "pid"],
            registry=self.registry,
        ).labels(str(worker.index), str(worker.count), str(os.getpid())).set(1)

    def route(self, route: str) -> RouteMetrics:
        return RouteMetrics(self, route)

    def track_connections(self, connections: Sized, listener: str) -> None:
        self.active.labels(listener).set_function(lambda: len(connections))

    def render(self) -> bytes:
        return generate_latest(self.registry)
