"""The one client of a running certproxy's ``/healthz`` (``status``, ``renew``, ``healthcheck``).

Blocking (urllib): for the command line, never for the event loop.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..service.config import Config


@dataclass(frozen=True)
class HealthAnswer:
    code: int | None  # HTTP status; None when nothing answered
    body: dict[str, object] | None  # certproxy's JSON report, when the answer was one
    error: str | None = None  # why nothing (usable) answered

    @property
    def is_certproxy(self) -> bool:
        return self.body is not None and "certificates" in self.body


def _local(bind: str) -> str:
    """How this host reaches a listener bound to ``bind``, as a URL host."""
    if bind in ("0.0.0.0", ""):
        return "127.0.0.1"
    if bind == "::":
        return "[::1]"
    return f"[{bind}]" if ipaddress.ip_address(bind).version == 6 else bind


def default_url(config: Config) -> str:
    """The running certproxy's ``/healthz`` as this configuration places it: the admin
    socket (``unix:PATH``), else the plain-HTTP listener, else the admin listener, else the
    first TLS route (loopback answers in full). The socket comes first: where replicas
    share the TCP ports, only it is sure to reach this container's own process."""
    if config.admin_socket is not None:
        return f"unix:{config.admin_socket}"
    if config.http_port is not None:
        return f"http://{_local(config.bind)}:{config.http_port}/healthz"
    if config.admin_port is not None:
        return f"http://{_local(config.admin_bind)}:{config.admin_port}/healthz"
    return f"https://{_local(config.bind)}:{config.routes[0].port}/healthz"


def health_url(url: str) -> str:
    """``url`` as given, or with ``/healthz`` added to a bare base URL."""
    parts = urlsplit(url)
    if parts.path in ("", "/") and not parts.query:
        return url.rstrip("/") + "/healthz"
    return url


def get_health(url: str, timeout: float = 2.0) -> HealthAnswer:
    """Ask ``url`` (a ``/healthz`` URL); never raises for network or HTTP errors.

    An ``https`` URL is asked without checking the certificate: this answers
    whether certproxy runs, and a bootstrap certificate is a valid state.
    """
    if url.startswith("unix:"):
        return _get_unix(url.removeprefix("unix:"), timeout)
    context = None
    if url.startswith("https:"):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:  # noqa: S310
            code, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        code, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return HealthAnswer(None, None, str(getattr(exc, "reason", exc)))
    return _report(code, raw)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _get_unix(path: str, timeout: float) -> HealthAnswer:
    """``GET /healthz`` on the admin socket at ``path``."""
    conn = _UnixConnection(path, timeout)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        code, raw = resp.status, resp.read()
    except (OSError, http.client.HTTPException) as exc:
        reason = (exc.strerror if isinstance(exc, OSError) else None) or exc
        return HealthAnswer(None, None, str(reason))
    finally:
        conn.close()
    return _report(code, raw)


def _report(code: int, raw: bytes) -> HealthAnswer:
    try:
        body = json.loads(raw)
    except ValueError:
        return HealthAnswer(code, None, "the answer is not JSON")
    if not isinstance(body, dict):
        return HealthAnswer(code, None, "the answer is not a health report")
    return HealthAnswer(code, body)
