"""The one client of a running certproxy's ``/healthz`` (``status``, ``renew``, ``healthcheck``).

Blocking (urllib): for the command line, never for the event loop.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass


@dataclass(frozen=True)
class HealthAnswer:
    code: int | None  # HTTP status; None when nothing answered
    body: dict[str, object] | None  # certproxy's JSON report, when the answer was one
    error: str | None = None  # why nothing (usable) answered

    @property
    def is_certproxy(self) -> bool:
        return self.body is not None and "certificates" in self.body


def get_health(url: str, timeout: float = 2.0) -> HealthAnswer:
    """Ask ``url`` (a ``/healthz`` URL); never raises for network or HTTP errors."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
            code, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        code, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return HealthAnswer(None, None, str(getattr(exc, "reason", exc)))
    try:
        body = json.loads(raw)
    except ValueError:
        return HealthAnswer(code, None, "the answer is not JSON")
    if not isinstance(body, dict):
        return HealthAnswer(code, None, "the answer is not a health report")
    return HealthAnswer(code, body)
