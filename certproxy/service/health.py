"""``/healthz``: what is served, whether it is valid, whether upstreams answer.

Who sees what: the admin listener and loopback clients get the full JSON
report; any other client of a public listener gets ``{"status": ...}`` with
the same status code, which is all a load balancer or monitor needs.

The upstream probe opens a connection of its own, asks for ``/`` and accepts
any HTTP status line as an answer, at most every few seconds (the result is
cached, and concurrent checks share one probe).

Status rules:

- ``failing`` (HTTP 503): the primary certificate (served to clients without SNI
  on an address no other certificate names) is expired or not yet valid;
- ``degraded`` (HTTP 200): served, but with a self-signed bootstrap
  certificate, another certificate of the store expired or not yet valid (one
  for an address, or a name, that some clients get), an unreachable upstream,
  or a store problem to look at;
- ``ok`` (HTTP 200): otherwise.

``/healthz?probe=live`` on the plain-HTTP listener answers 200 whenever the
process answers at all (see ``LIVE``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..acme_client.manager import RenewalStatus
from ..certs import utcnow
from ..proxy.headers import NO_STORE, Answer
from ..proxy.routes import Request, Route
from ..proxy.tls import TLSState
from ..proxy.upstream import describe_os_error
from .workers import Worker

# ``/healthz?probe=live``: the process answers HTTP, whatever it serves. What a
# liveness or readiness probe that gates traffic needs: a pod taken out of
# service for an expired certificate could no longer receive the CA's HTTP-01
# request that renews it.
LIVE = b'{"status": "live"}\n'

PROBE_TTL = 5.0
PROBE_TIMEOUT = 2.0


@dataclass
class HealthState:
    """Facts that the report shows besides the certificates and upstreams."""

    store_errors: dict[str, str] = field(default_factory=dict)
    last_reload_error: str | None = None
    last_reload: dt.datetime | None = None


class UpstreamProbe:
    """Whether one route's upstream answers HTTP at all (any status counts), cached."""

    def __init__(self, route: Route, ssl_context: ssl.SSLContext | None) -> None:
        self.route = route
        self._ssl = ssl_context
        self._probe: tuple[float, bool, str | None] | None = None
        self._task: asyncio.Task[tuple[bool, str | None]] | None = None

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    @property
    def last(self) -> bool | None:
        """Whether the upstream answered the last probe (None: none made yet)."""
        return None if self._probe is None else self._probe[1]

    async def reachable(self) -> tuple[bool, str | None]:
        now = time.monotonic()
        if self._probe is not None and now - self._probe[0] < PROBE_TTL:
            return self._probe[1], self._probe[2]
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return await asyncio.shield(self._task)

    async def _run(self) -> tuple[bool, str | None]:
        result: tuple[bool, str | None]
        try:
            result = await asyncio.wait_for(self._ask(), PROBE_TIMEOUT)
        except TimeoutError:
            result = (False, f"no answer within {PROBE_TIMEOUT:g} s")
        except OSError as exc:
            result = (False, describe_os_error(exc))
        self._probe = (time.monotonic(), *result)
        return result

    async def _ask(self) -> tuple[bool, str | None]:
        route = self.route
        reader, writer = await asyncio.open_connection(
            route.host, route.upstream_port, ssl=self._ssl, server_hostname=route.host if self._ssl else None
        )
        try:
            host = route.url.partition("://")[2]
            writer.write(
                f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: certproxy-healthcheck\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            line = await reader.readline()
        finally:
            writer.close()
        if line.startswith(b"HTTP/1.") and line[8:9] == b" " and line[9:12].isdigit():
            return True, None
        return (
            False,
            "answered something that is not HTTP/1.1" if line else "closed the connection without an answer",
        )


class Health:
    def __init__(
        self,
        tls: TLSState,
        upstreams: Sequence[UpstreamProbe],
        state: HealthState,
        worker: Worker | None = None,
    ) -> None:
        self._tls = tls
        self._upstreams = upstreams
        self.state = state
        self.renewals: list[RenewalStatus] = []  # filled in when ACME is on
        self.worker = worker

    async def report(self) -> tuple[int, dict[str, object]]:
        now = utcnow()
        certs = self._tls.current
        probes = await asyncio.gather(*(u.reachable() for u in self._upstreams))
        upstreams = []
        for upstream, (ok, error) in zip(self._upstreams, probes, strict=True):
            entry: dict[str, object] = {
                "port": upstream.route.port,
                "url": upstream.route.url,
                "reachable": ok,
            }
            if error:
                entry["error"] = error
            upstreams.append(entry)
        primary = certs.primary
        problems: list[str] = []
        if not primary.valid_at(now):
            status = "failing"
            problems.append(f"certificate {primary.name} is not valid now")
        else:
            status = "ok"
            if primary.kind == "bootstrap":
                problems.append("serving the self-signed bootstrap certificate")
            problems.extend(
                f"certificate {p.name} is not valid now"
                for p in certs.pairs
                if p is not primary and p.kind == "live" and not p.valid_at(now)
            )
            problems.extend(f"upstream {u['url']} unreachable" for u in upstreams if not u["reachable"])
            if self.state.store_errors:
                problems.append("store holds certificates that cannot be served")
            if self.state.last_reload_error:
                problems.append("last reload failed")
            problems.extend(
                f"renewal of {r.name} failing: {r.last_error}" for r in self.renewals if r.last_error
            )
            if problems:
                status = "degraded"
        body: dict[str, object] = {
            "status": status,
            "problems": problems,
            "certificates": [p.summary(now) for p in certs.pairs],
            "upstreams": upstreams,
            "store_errors": self.state.store_errors,
            "last_reload_error": self.state.last_reload_error,
            "last_reload": self.state.last_reload.isoformat() if self.state.last_reload else None,
            "renewals": [r.to_json() for r in self.renewals],
        }
        if self.worker is not None and self.worker.shares_ports:
            body["worker"] = self.worker.describe()
        return (503 if status == "failing" else 200), body

    async def probe(self) -> None:
        """Probe the upstreams now, unless done in the last ``PROBE_TTL`` (before a scrape)."""
        await asyncio.gather(*(u.reachable() for u in self._upstreams))

    def upstreams_up(self) -> list[tuple[str, bool | None]]:
        return [(str(u.route.port), u.last) for u in self._upstreams]

    async def answer(self, request: Request | None = None) -> Answer:
        """``/healthz`` as an answer: the full report for the admin listener (no request)
        and loopback clients (the container's own health check, ``certproxy status``);
        the status alone for anyone else, since the report names upstreams, paths and
        the CA's errors."""
        if request is not None and b"probe=live" in request.target.partition(b"?")[2].split(b"&"):
            return 200, NO_STORE, LIVE, b"application/json"
        code, body = await self.report()
        if request is not None and not is_loopback(request.client_ip):
            body = {"status": body["status"]}
        return code, NO_STORE, (json.dumps(body, indent=2) + "\n").encode(), b"application/json"


def is_loopback(ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback
