"""An upstream's reachability probe for ``/healthz``.

The data plane keeps its own pool of upstream connections (``dataplane``);
this module's aiohttp session serves only the probe, which asks the upstream
for ``/`` at most every few seconds and accepts any HTTP answer.
"""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp

from .config import Config, Route

PROBE_TTL = 5.0
PROBE_TIMEOUT = 2.0
# The client adds these unless told not to; a proxy must not invent them.
SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
READ_BUFSIZE = 1 << 18


class Upstream:
    def __init__(self, route: Route, config: Config) -> None:
        self.route = route
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        self._probe: tuple[float, bool, str | None] | None = None
        self._probe_task: asyncio.Task[tuple[bool, str | None]] | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("upstream not started")
        return self._session

    async def start(self) -> None:
        cfg = self._config
        connector = aiohttp.TCPConnector(
            limit=0,
            keepalive_timeout=cfg.upstream_keepalive,
            ttl_dns_cache=10,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=cfg.upstream_connect_timeout,
                sock_connect=cfg.upstream_connect_timeout,
                sock_read=cfg.upstream_read_timeout,
            ),
            auto_decompress=False,
            skip_auto_headers=SKIP_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),
            read_bufsize=READ_BUFSIZE,
        )

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

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
            async with self.session.get(
                self.route.url + "/",
                allow_redirects=False,
                headers={"User-Agent": "certproxy-healthcheck"},
                timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT),
            ) as resp:
                result = (True, None)
                resp.release()
        except asyncio.TimeoutError:
            result = (False, f"no answer within {PROBE_TIMEOUT:g} s")
        except aiohttp.ClientError as exc:
            result = (False, describe_client_error(exc))
        self._probe = (time.monotonic(), *result)
        return result


def describe_client_error(exc: BaseException) -> str:
    """One line for an aiohttp client error, without a traceback."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        inner = exc.os_error
        if isinstance(inner, OSError) and inner.errno:
            why = os.strerror(inner.errno)
        elif isinstance(inner, OSError) and inner.strerror:
            why = inner.strerror
        else:
            why = str(inner) or type(inner).__name__
        return f"cannot connect: {why}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "closed the connection without an answer"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
