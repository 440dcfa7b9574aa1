"""What every connection of one listener shares: where requests go and by what rules.

A ``ProxyRoute`` forwards to one upstream through its pool; a ``ControlRoute``
answers by itself (the plain-HTTP listener, the admin listener, ``renew``'s
challenge server). Both get the same connection handling (limits, timeouts,
one-line refusals). What the data plane needs from the running program comes
in as small interfaces, so this package imports nothing above ``certs``:
``/healthz`` and a control listener's answers are ``Responder`` callables,
credentials are checked by an ``Authenticator``, counters go to a
``RouteStats`` and access lines to an ``AccessLog``; a registry route's
``Observer`` reads what each request did there before its line is written.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

from .headers import Answer, Headers
from .hostname import HostCheck

if TYPE_CHECKING:
    from .upstream import UpstreamPool


@dataclass(frozen=True)
class Route:
    """One TLS listener and the upstream it forwards to."""

    port: int
    url: str  # scheme://host:port, no path
    scheme: str
    host: str
    upstream_port: int


@dataclass(frozen=True)
class Limits:
    """The bounds every connection of a listener is held to (seconds, counts)."""

    max_connections: int = 4096  # past it, new connections get a 503 and close
    header_timeout: float = 30.0  # first byte of a request head to its end (slowloris)
    keepalive_timeout: float = 75.0
    body_timeout: float = 300.0  # a client silent in the middle of a request body
    handshake_timeout: float = 10.0


class Request(Protocol):
    """A request as a ``Responder`` sees it."""

    method: bytes
    target: bytes

    @property
    def client_ip(self) -> str: ...

    def header(self, name: bytes) -> list[bytes]: ...

    def note(self, user: str | None, action: str, repository: str | None) -> None:
        """Who made the request and what it does, for the access log (a ``Gate`` says)."""

    @property
    def kept(self) -> bytes | None:
        """The value of the response header the route's ``Observer`` keeps (None: none yet)."""


Responder = Callable[[Request], Awaitable[Answer]]


class Pass(NamedTuple):
    """A gate lets the request through. ``target``: the origin-form target to send
    instead of the client's (None: unchanged)."""

    target: bytes | None = None


class Gate(Protocol):
    """Access control of a route: each request passes, or gets certproxy's answer.
    ``path`` is the request's origin-form target, ``host`` its checked ``Host``."""

    def check(self, request: Request, path: bytes, host: bytes) -> Pass | Answer | None:
        """Decide now, without waiting; None: ``decide`` must (a thread, the network)."""

    async def decide(self, request: Request, path: bytes, host: bytes) -> Pass | Answer: ...


class Authenticator(Protocol):
    """Checks the ``Authorization`` header of a route's requests."""

    challenge: str  # the WWW-Authenticate value of a 401

    def known(self, header: bytes | None) -> bool:
        """True when these credentials passed recently: no need to ask ``allowed``."""

    async def allowed(self, header: str | None) -> bool: ...


class RouteStats(Protocol):
    """Counters of one listener."""

    def request(self, status: int, bytes_in: int, bytes_out: int) -> None: ...

    def upstream_response(self, seconds: float) -> None: ...


class AccessRecord(NamedTuple):
    """One request, as the access log writes it."""

    client: str
    method: str
    target: str
    status: int
    bytes_in: int
    bytes_out: int
    seconds: float
    upstream: str  # "-": certproxy answered by itself
    port: int
    host: str  # "-": none, or none that was valid
    # what a Gate noted (registry routes behind CERTPROXY_ACCESS), or on a registry route
    # what its Observer read; None elsewhere
    user: str | None = None
    action: str | None = None
    repository: str | None = None
    reference: str | None = None  # a tag or digest
    upload: str | None = None  # an upload's session id


AccessLog = Callable[[AccessRecord], None]


class Observer(Protocol):
    """Reads a route's requests as calls of the registry API, for the access log and
    the metrics. ``begin`` when a request arrives, ``observe`` when it ends (the record
    it returns is the one logged); each exactly once per request."""

    keep: bytes  # a response header whose first value the exchange keeps (lower case)

    def begin(self, request: Request) -> None: ...

    def observe(self, request: Request, record: AccessRecord) -> AccessRecord: ...


class ControlRoute:
    """A listener that answers by itself; request bodies are not read."""

    pool: UpstreamPool | None = None
    hsts: bytes | None = None
    healthz: Responder | None = None
    base = "-"
    base_b = b"-"
    upstream_host = b""
    unreachable = ""

    def __init__(
        self,
        port: int,
        answer: Responder,
        stats: RouteStats | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self.port = port
        self.answer: Responder | None = answer
        # Set here, not as class defaults: mypyc leaves a class default of a Protocol type unset.
        self.auth: Authenticator | None = None
        self.gate: Gate | None = None
        self.observer: Observer | None = None
        self.host_ok = HostCheck()
        self.stats = stats
        self.access_log = access_log


class ProxyRoute:
    """A TLS listener's upstream, pool and policy."""

    answer: Responder | None = None

    def __init__(
        self,
        route: Route,
        pool: UpstreamPool,
        *,
        healthz: Responder,
        stats: RouteStats | None = None,
        auth: Authenticator | None = None,
        hsts_max_age: int = 0,
        access_log: AccessLog | None = None,
        gate: Gate | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.route = route
        self.gate = gate
        self.observer = observer
        self.port = route.port
        self.pool: UpstreamPool | None = pool
        self.healthz: Responder | None = healthz
        self.stats = stats
        self.auth = auth
        self.access_log = access_log
        self.base = route.url
        self.base_b = route.url.encode()
        self.upstream_host = route.url.partition("://")[2].encode()
        self.hsts = b"max-age=%d" % hsts_max_age if hsts_max_age > 0 else None
        self.unreachable = f"upstream {self.base} of port {self.port}"
        self.host_ok = HostCheck()


AnyRoute = ProxyRoute | ControlRoute
__all__ = [
    "AccessLog",
    "AccessRecord",
    "AnyRoute",
    "Authenticator",
    "Gate",
    "ControlRoute",
    "Headers",
    "Limits",
    "Observer",
    "Pass",
    "ProxyRoute",
    "Request",
    "Responder",
    "Route",
    "RouteStats",
]
