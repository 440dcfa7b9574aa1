"""certproxy leans on two private APIs; these tests fail loudly when a library changes them.

- ``proxy/tls.py``'s ``GuardedSSLObject`` overrides CPython's private
  ``ssl.SSLObject._create``, the constructor ``SSLContext.wrap_bio`` calls
  through ``sslobject_class`` (how the event loop's TLS layer makes every
  server-side connection object).
- ``acme_client/client.py``'s ``_new_order`` (an order with RFC 9773's
  ``replaces``) calls ``acme``'s private ``ClientV2._post``, ``_post_as_get``
  and ``_authzr_from_response``; here it runs all three against a small ACME
  stand-in that accepts the order (Pebble has no ``replaces``).
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
from pathlib import Path
from typing import Any

import trustme
from acme import client as acme_client, crypto_util
from aiohttp import web

from certproxy.acme_client.client import AcmeIssuer, new_private_key
from certproxy.acme_client.settings import AcmeSettings
from certproxy.certs import FileStore
from certproxy.proxy.tls import CertificateSet, TLSState, guard_listener
from support.apps import AcmeStandIn
from support.pairs import issue


def _handshake(server: ssl.SSLObject, client: ssl.SSLObject, s_in: ssl.MemoryBIO, s_out: ssl.MemoryBIO,
               c_in: ssl.MemoryBIO, c_out: ssl.MemoryBIO) -> None:
    for _ in range(10):
        done = 0
        for obj, src, dst in ((client, c_out, s_in), (server, s_out, c_in)):
            try:
                obj.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
            dst.write(src.read())
        if done == 2:
            return
    raise AssertionError("handshake did not finish")


def test_sslobject_create_is_still_the_constructor_wrap_bio_calls(tmp_path: Path, ca: trustme.CA) -> None:
    assert isinstance(inspect.getattr_static(ssl.SSLObject, "_create"), classmethod)
    store = FileStore(tmp_path)
    pair = issue(ca, "localhost")
    store.ensure_layout()
    store.write_live("localhost", pair.chain, pair.key)
    inv = store.inventory(("localhost",))
    ctx = TLSState(CertificateSet(inv.primary, inv.pairs)).listener_context()
    failures: list[int] = []
    guard_listener(ctx, 5000, lambda: failures.append(1))

    s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = ctx.wrap_bio(s_in, s_out, server_side=True)
    assert type(server).__name__ == "GuardedSSLObject"
    assert server._cp_bios == (s_in, s_out)  # type: ignore[attr-defined]
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    _handshake(server, client, s_in, s_out, c_in, c_out)
    assert failures == [] and server._cp_state == 2  # type: ignore[attr-defined]

    # Plain HTTP on the TLS port: the readable 400 comes out of the outgoing BIO.
    p_in, p_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    plain = ctx.wrap_bio(p_in, p_out, server_side=True)
    p_in.write(b"GET /v2/ HTTP/1.1\r\nHost: reg.example.com:5000\r\n\r\n")
    try:
        plain.do_handshake()
    except ssl.SSLWantReadError:
        pass
    answer = p_out.read()
    assert answer.startswith(b"HTTP/1.1 400 ") and b"use https://reg.example.com:5000/" in answer
    assert failures == [1]


def test_acme_private_methods_keep_the_shape_new_order_relies_on() -> None:
    for name in ("_post", "_post_as_get", "_authzr_from_response"):
        assert callable(getattr(acme_client.ClientV2, name, None)), f"acme dropped ClientV2.{name}"
    params = inspect.signature(acme_client.ClientV2._authzr_from_response).parameters
    assert {"response", "uri"} <= set(params)


class OrderStandIn(AcmeStandIn):
    """An ACME directory that accepts one order and serves its authorization."""

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/order", self.order)
        router.add_post("/authz/1", self.authz)

    async def order(self, request: web.Request) -> web.Response:
        order = await self.record_order(request)
        body = {"status": "pending", "identifiers": order["identifiers"],
                "authorizations": [self.base + "/authz/1"], "finalize": self.base + "/finalize/1"}
        return web.json_response(body, status=201,
                                 headers={**self.nonce_headers(), "Location": self.base + "/order/1"})

    async def authz(self, request: web.Request) -> web.Response:
        body = {"status": "pending", "identifier": {"type": "dns", "value": "reg.example.com"},
                "challenges": [{"type": "http-01", "url": self.base + "/chall/1", "token": "TG9uZ2VyVG9rZW5UaGFuU2l4dGVlbkJ5dGVz",
                                "status": "pending"}]}
        return web.json_response(body, headers=self.nonce_headers())


async def test_new_order_with_replaces_runs_through_acmes_private_methods(tmp_path: Path) -> None:
    stand_in = OrderStandIn()
    directory = await stand_in.start()
    try:
        store = FileStore(tmp_path)
        store.ensure_layout()
        issuer = AcmeIssuer(store, AcmeSettings(directory=directory, domains=("reg.example.com",)))
        def order() -> Any:
            client = issuer.connect()
            csr = crypto_util.make_csr(new_private_key("ec256"), ["reg.example.com"])
            return issuer._new_order(client, csr, "aki.serial")

        orderr = await asyncio.to_thread(order)
        assert stand_in.orders[0]["replaces"] == "aki.serial"
        assert orderr.uri == stand_in.base + "/order/1"
        [authzr] = orderr.authorizations
        assert authzr.uri == stand_in.base + "/authz/1"
        assert authzr.body.identifier.value == "reg.example.com"
        assert authzr.body.challenges[0].chall.typ == "http-01"
    finally:
        await stand_in.stop()
