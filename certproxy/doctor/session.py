"""What the doctor's checks share: the options, the trust, the login, the findings so far."""

from __future__ import annotations

import os
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .report import Report
from .wire import Answer, Request, Target, send

DEFAULT_SIZE = 128 * 1024 * 1024
DEFAULT_IDLE = 5.0
CERTS_D_VAR = "CERTPROXY_DOCTOR_CERTS_D"  # a folder standing in for /etc (docker/, containers/)


@dataclass(frozen=True)
class Options:
    host: str
    port: int
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    ca: Path | None = None
    size: int = DEFAULT_SIZE
    idle: float = DEFAULT_IDLE
    repository: str | None = None
    etc: Path = Path("/etc")  # where docker/certs.d and containers/certs.d are
    timeout: float = 60.0

    @classmethod
    def etc_from_environment(cls) -> Path:
        return Path(os.environ.get(CERTS_D_VAR) or "/etc")


def client_context(
    ca: Path | None, *, verify: bool = True, alpn: tuple[str, ...] = ("http/1.1",)
) -> ssl.SSLContext:
    """The trust a client of this machine has: ``ca`` alone when given, else the system
    store (which honours ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``)."""
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(list(alpn))
    return context


@dataclass
class Session:
    options: Options
    report: Report
    target: Target
    context: ssl.SSLContext  # for requests: verifying, unless the certificate failed
    verified: bool = False  # the certificate passed: credentials may be sent
    reachable: bool = False
    alpn: str | None = None
    tls_version: str | None = None
    authorization: str | None = field(default=None, repr=False)  # never printed
    server: str = ""  # the front's Server header, to name it in remedies
    date: str = ""  # the registry's Date header
    date_seen: float = 0.0  # this machine's time when it came
    challenge: str = ""  # the WWW-Authenticate of /v2/
    locations: list[tuple[str, str]] = field(default_factory=list)  # (request, Location)
    pushed: list[str] = field(default_factory=list)  # digests of the probe blobs
    repository: str = ""
    capped: list[str] = field(default_factory=list)  # what answered 413 or was cut

    def send(self, request: Request, *, auth: bool = True, timeout: float | None = None) -> Answer:
        if auth and self.authorization and self.verified:
            request.headers.setdefault("Authorization", self.authorization)
        answer = send(
            self.target, self.context, request, self.options.timeout if timeout is None else timeout
        )
        if answer.header("server") and not self.server:
            self.server = answer.header("server")
        if answer.header("date") and not self.date:
            self.date, self.date_seen = answer.header("date"), time.time()
        return answer

    def follow(self, request_name: str, location: str) -> str | None:
        """The path (and query) of an upload's ``Location`` on the URL the client used;
        the Location is noted for the Location check. None without a Location."""
        if not location:
            return None
        self.locations.append((request_name, location))
        parts = urlsplit(location)
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def front(self) -> str:
        """The front's name as its Server header gives it ("nginx"), or ""."""
        return self.server.split("/")[0].strip().lower()
