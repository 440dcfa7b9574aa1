"""certproxy leans on two private APIs; these tests fail loudly when a library changes them.

- ``proxy/tlsconn.py`` makes each connection's TLS object with CPython's
  private ``SSLContext._wrap_bio`` (the C object behind ``ssl.SSLObject``,
  called directly, without the Python wrapper), handing it an ``owner`` whose
  ``context`` the SNI callback sets.
- ``acme_client/client.py``'s ``_new_order`` (an order with RFC 9773's
  ``replaces``) calls ``acme``'s private ``ClientV2._post``, ``_post_as_get``
  and ``_authzr_from_response``; here it runs all three against a small ACME
  stand-in that accepts the order (Pebble has no ``replaces``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from acme import client as acme_client, crypto_util
from aiohttp import web

from certproxy.acme_client.client import AcmeIssuer, new_private_key
from certproxy.acme_client.settings import AcmeSettings
from certproxy.certs import FileStore
from certproxy.proxy.tls import CertificateSet, TLSState
from support.apps import AcmeStandIn
from support.pairs import issue


class _Owner:
    """What the SNI callback is handed: TLSConnection's ``context`` property, alone."""

    def __init__(self) -> None:
        self.sslobj: Any = None
        self.seen: list[str | None] = []

    @property
    def context(self) -> ssl.SSLContext:
        return self.sslobj.context  # type: ignore[no-any-return]

    @context.setter
    def context(self, ctx: ssl.SSLContext) -> None:
        self.seen.append("set")
        self.sslobj.context = ctx


def test_sslcontext_wrap_bio_is_still_the_constructor_the_tls_transport_uses(
        tmp_path: Path, ca: trustme.CA) -> None:
    """``_wrap_bio(incoming, outgoing, server_side, server_hostname, *, owner, session)``
    returns the C object whose do_handshake, read, write, pending and shutdown the
    transport calls, and the SNI callback is handed ``owner`` (whose ``context`` it sets)."""
    store = FileStore(tmp_path)
    store.ensure_layout()
    for name in ("localhost", "other.test"):
        pair = issue(ca, name)
        store.write_live(name, pair.chain, pair.key)
    inv = store.inventory(("localhost", "other.test"))
    ctx = TLSState(CertificateSet(inv.primary, inv.pairs)).listener_context()
    s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    owner = _Owner()
    server = ctx._wrap_bio(s_in, s_out, True, None, owner=owner, session=None)  # type: ignore[attr-defined]
    owner.sslobj = server
    assert type(server).__module__ == "_ssl" and type(server).__name__ == "_SSLSocket"
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="other.test")
    done: set[str] = set()
    for _ in range(10):
        for name, side, src, dst in (("client", client, c_out, s_in), ("server", server, s_out, c_in)):
            if name not in done:
                try:
                    side.do_handshake()
                    done.add(name)
                except ssl.SSLWantReadError:
                    pass
            dst.write(src.read())
        if len(done) == 2:
            break
    assert done == {"client", "server"}
    assert owner.seen == ["set"]  # the SNI callback went through the owner
    assert client.getpeercert()["subjectAltName"] == (("DNS", "other.test"),)
    assert server.write(b"hello") == 5
    c_in.write(s_out.read())
    assert client.read(100) == b"hello"
    client.write(b"x" * 20)
    s_in.write(c_out.read())
    assert s_in.pending > 0
    assert server.read(16384) == b"x" * 20 and server.pending() == 0 and s_in.pending == 0
    with pytest.raises(ssl.SSLWantReadError):
        server.read(16384)
    with contextlib.suppress(ssl.SSLWantReadError):
        server.shutdown()  # close_notify out; the peer's is not awaited
    c_in.write(s_out.read())
    assert client.read(100) == b""  # the client saw close_notify, a clean end


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
