"""``/healthz``: what is served, whether it is valid, whether upstreams answer.

Status rules:

- ``failing`` (HTTP 503): the certificate served to clients without SNI (the
  primary, served on every TLS listener) is expired or not yet valid;
- ``degraded`` (HTTP 200): served, but with a self-signed bootstrap
  certificate, an unreachable upstream, or a store problem to look at;
- ``ok`` (HTTP 200): otherwise.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Sequence

from ..acme_client.manager import RenewalStatus
from ..certs import utcnow
from .headers import NO_STORE, Answer
from .tls import TLSState
from .upstream import Upstream


@dataclass
class HealthState:
    """Facts that the report shows besides the certificates and upstreams."""

    store_errors: dict[str, str] = field(default_factory=dict)
    last_reload_error: str | None = None
    last_reload: dt.datetime | None = None


def fetch_health(url: str, timeout: float = 2.0) -> dict[str, object] | None:
    """The JSON body a certproxy's ``/healthz`` answers (200 or 503); None if none answers.

    Blocking (urllib): for the command line, never for the event loop.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
    except (urllib.error.URLError, OSError, ValueError):
        return None
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) and "certificates" in body else None


class Health:
    def __init__(self, tls: TLSState, upstreams: Sequence[Upstream], state: HealthState) -> None:
        self._tls = tls
        self._upstreams = upstreams
        self.state = state
        self.renewals: list[RenewalStatus] = []  # filled in when ACME is on

    async def report(self) -> tuple[int, dict[str, object]]:
        now = utcnow()
        certs = self._tls.current
        probes = await asyncio.gather(*(u.reachable() for u in self._upstreams))
        upstreams = []
        for upstream, (ok, error) in zip(self._upstreams, probes):
            entry: dict[str, object] = {"port": upstream.route.port, "url": upstream.route.url,
                                        "reachable": ok}
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
            problems.extend(f"upstream {u['url']} unreachable" for u in upstreams if not u["reachable"])
            if self.state.store_errors:
                problems.append("store holds certificates that cannot be served")
            if self.state.last_reload_error:
                problems.append("last reload failed")
            problems.extend(f"renewal of {r.name} failing: {r.last_error}"
                            for r in self.renewals if r.last_error)
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
        return (503 if status == "failing" else 200), body

    async def answer(self, _request: object = None) -> Answer:
        """``/healthz`` as an answer (the same on every listener)."""
        code, body = await self.report()
        return code, NO_STORE, (json.dumps(body, indent=2) + "\n").encode(), b"application/json"
