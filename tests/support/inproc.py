"""The data plane in-process: its protocols driven through fake transports.

No sockets: a ``MockTransport`` records what a protocol writes and whether it
paused, closed or aborted; the route's pool opens upstream connections on
mock transports too, and the test feeds the upstream's answers into them.
The listener's and the pool's clock is a ``Clock`` the test moves, and the
timeouts run when the test calls ``sweep(now)``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable

from certproxy.proxy.client import ClientConnection, Listener
from certproxy.proxy.headers import Answer
from certproxy.proxy.routes import ControlRoute, Limits, ProxyRoute, Request, Route
from certproxy.proxy.upstream import PoolSettings, UpstreamConnection, UpstreamPool

ROUTE = Route(port=5000, url="http://registry:5000", scheme="http", host="registry",
              upstream_port=5000)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MockTransport:
    """Enough of ``asyncio.Transport`` for the data plane's protocols."""

    def __init__(self, protocol: asyncio.Protocol, peer: tuple[str, int] = ("192.0.2.7", 40000)) -> None:
        self.protocol = protocol
        self.peer = peer
        self.written = bytearray()
        self.writes = 0
        self.reading = True
        self.closed = False
        self.aborted = False
        self._lost = False

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        self.written += data
        self.writes += 1

    def writelines(self, parts: Any) -> None:
        self.write(b"".join(parts))

    def _lose(self) -> None:
        if not self._lost:
            self._lost = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def close(self) -> None:
        self.closed = True
        self._lose()

    def abort(self) -> None:
        self.closed = self.aborted = True
        self._lose()

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0  # what is written is taken at once

    def take(self) -> bytes:
        """What was written since the last ``take``."""
        out = bytes(self.written)
        self.written.clear()
        return out


@dataclass
class Plane:
    """One listener with one client connection, its route, pool and upstream transports."""

    clock: Clock
    listener: Listener
    pool: UpstreamPool
    upstreams: list[MockTransport] = field(default_factory=list)
    refuse_connect: list[BaseException] = field(default_factory=list)

    def connect_client(self, cls: type[ClientConnection] = ClientConnection) -> tuple[ClientConnection, MockTransport]:
        conn = cls(self.listener)
        transport = MockTransport(conn)
        conn.connection_made(transport)  # type: ignore[arg-type]
        return conn, transport

    def upstream_protocol(self, i: int = -1) -> UpstreamConnection:
        proto = self.upstreams[i].protocol
        assert isinstance(proto, UpstreamConnection)
        return proto


async def healthz(_request: Request) -> Answer:
    return 200, [], b'{"status": "ok"}\n', b"application/json"


def make_plane(*, limits: Limits | None = None, settings: PoolSettings | None = None,
               auth: Any = None, hsts_max_age: int = 0, stats: Any = None, access_log: Any = None,
               gate: Any = None, observer: Any = None) -> Plane:
    """Call with a running event loop."""
    clock = Clock()
    plane: Plane

    async def connector(factory: Callable[[], asyncio.Protocol], host: str, port: int,
                        **_kw: Any) -> tuple[MockTransport, asyncio.Protocol]:
        if plane.refuse_connect:
            raise plane.refuse_connect.pop(0)
        proto = factory()
        transport = MockTransport(proto, peer=(host, port))
        proto.connection_made(transport)  # type: ignore[arg-type]
        plane.upstreams.append(transport)
        return transport, proto

    pool = UpstreamPool(ROUTE.host, ROUTE.upstream_port, settings or PoolSettings(), None, connector=connector, clock=clock)
    route = ProxyRoute(ROUTE, pool, healthz=healthz, auth=auth, hsts_max_age=hsts_max_age, stats=stats,
                       access_log=access_log, gate=gate, observer=observer)
    listener = Listener(route, limits or Limits(), clock=clock)
    plane = Plane(clock, listener, pool)
    return plane


def make_control_plane(answer: Callable[[Request], Any]) -> Plane:
    clock = Clock()
    listener = Listener(ControlRoute(8080, answer), Limits(), clock=clock)
    pool = UpstreamPool(ROUTE.host, ROUTE.upstream_port, PoolSettings(), None, clock=clock)
    return Plane(clock, listener, pool)


async def settle(rounds: int = 5) -> None:
    """Let tasks and callbacks the protocols scheduled run."""
    for _ in range(rounds):
        await asyncio.sleep(0)
