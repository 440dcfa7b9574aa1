"""An upstream's reachability probe for ``/healthz``.

The data plane keeps its own pool of upstream connections (``dataplane``);
the probe opens a connection of its own, asks for ``/`` and accepts any HTTP
status line as an answer, at most every few seconds (the result is cached,
and concurrent checks share one probe).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time

from .config import Config, Route

PROBE_TTL = 5.0
PROBE_TIMEOUT = 2.0


class Upstream:
    def __init__(self, route: Route, config: Config) -> None:
        self.route = route
        self._config = config
        self._probe: tuple[float, bool, str | None] | None = None
        self._probe_task: asyncio.Task[tuple[bool, str | None]] | None = None
        self._ssl: ssl.SSLContext | None = None

    async def start(self) -> None:
        if self.route.scheme == "https":
            self._ssl = await asyncio.to_thread(ssl.create_default_context)

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()

    async def reachable(self) -> tuple[bool, str | None]:
        """Whether the upstream answers HTTP at all (any status counts), cached."""
        now = time.monotonic()
        if self._probe is not None and now - self._probe[0] < PROBE_TTL:
            return self._probe[1], self._probe[2]
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = asyncio.create_task(self._run_probe())
        return await asyncio.shield(self._probe_task)

    async def _run_probe(self) -> tuple[bool, str | None]:
        result: tuple[bool, str | None]
        try:
            result = await asyncio.wait_for(self._ask(), PROBE_TIMEOUT)
        except asyncio.TimeoutError:
            result = (False, f"no answer within {PROBE_TIMEOUT:g} s")
        except OSError as exc:
            result = (False, describe_os_error(exc))
        self._probe = (time.monotonic(), *result)
        return result

    async def _ask(self) -> tuple[bool, str | None]:
        route = self.route
        reader, writer = await asyncio.open_connection(
            route.host, route.upstream_port, ssl=self._ssl,
            server_hostname=route.host if self._ssl else None)
        try:
            host = route.url.partition("://")[2]
            writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: certproxy-healthcheck\r\n"
                         "Connection: close\r\n\r\n".encode())
            line = await reader.readline()
        finally:
            writer.close()
        if line.startswith(b"HTTP/1.") and line[8:9] == b" " and line[9:12].isdigit():
            return True, None
        return False, "answered something that is not HTTP/1.1" if line else \
            "closed the connection without an answer"


def describe_os_error(exc: OSError) -> str:
    """One line for a failed connection, without a traceback."""
    if exc.errno:
        return f"cannot connect: {os.strerror(exc.errno)}"
    return f"cannot connect: {exc.strerror or str(exc) or type(exc).__name__}"
