"""Small in-test aiohttp applications (stand-ins for an ACME CA) on loopback."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

from aiohttp import web


async def serve_app(app: web.Application) -> tuple[web.AppRunner, str]:
    """Start ``app`` on a free loopback port; returns its runner and base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


class AcmeStandIn:
    """The skeleton of an ACME directory (directory, nonces, one account) for
    behaviour Pebble does not have; subclasses add their routes in ``routes``
    and their directory entries in ``extra_directory``."""

    def __init__(self) -> None:
        self.orders: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.base = ""

    def nonce_headers(self) -> dict[str, str]:
        return {"Replay-Nonce": base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("="),
                "Cache-Control": "no-store"}

    def routes(self, router: web.UrlDispatcher) -> None:
        raise NotImplementedError

    def extra_directory(self) -> dict[str, str]:
        return {}

    async def start(self) -> str:
        """Serve on loopback; returns the directory URL."""
        app = web.Application()
        app.router.add_get("/dir", self.directory)
        app.router.add_route("*", "/nonce", self.nonce)
        app.router.add_post("/acct", self.account)
        self.routes(app.router)
        self.runner, self.base = await serve_app(app)
        return self.base + "/dir"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def directory(self, request: web.Request) -> web.Response:
        b = self.base
        return web.json_response({"newNonce": b + "/nonce", "newAccount": b + "/acct",
                                  "newOrder": b + "/order", "revokeCert": b + "/revoke",
                                  "keyChange": b + "/key", **self.extra_directory()})

    async def nonce(self, request: web.Request) -> web.Response:
        return web.Response(status=200, headers=self.nonce_headers())

    async def account(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "valid", "contact": []}, status=201,
                                 headers={**self.nonce_headers(), "Location": self.base + "/acct/1"})

    async def record_order(self, request: web.Request) -> dict[str, Any]:
        """The JWS payload of a newOrder request, kept in ``orders``."""
        jws = await request.json()
        payload = jws["payload"] + "=" * (-len(jws["payload"]) % 4)
        self.orders.append(json.loads(base64.urlsafe_b64decode(payload)))
        return self.orders[-1]
