"""What certproxy makes of a message head, as pure functions: the checks and the
rewrite of a request head for its upstream, and the head of a relayed response.

Nothing here holds state or writes to a connection. The exchange asks and acts on
the answer: a request head for the upstream, or a ``Refusal`` (status, the
one-line public reason, extra headers, and whether the connection closes after
it); the bytes of a response head, once the exchange has decided how its body is
framed and whether the connection goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from .headers import (
    Fields,
    Headers,
    NominationRefused,
    client_response_headers,
    upstream_request_headers,
    values,
    with_value,
)
from .routes import AnyRoute
from .wire import ALLOWED, REFUSED_METHODS, origin_form


class Refusal(NamedTuple):
    """certproxy answers the request itself with an error; ``close``: and closes the
    connection after it (the client is not to be trusted with another request)."""

    status: int
    reason: str
    headers: Fields = ()
    close: bool = False


class Forward(NamedTuple):
    """The request head for the upstream, the public name the client used, and the
    origin-form target (path and query) the head carries."""

    head: bytes
    host: bytes | None
    path: bytes


def refusal(method: bytes, *, upgrade: bool, expects_body: bool) -> Refusal | None:
    """Checks that hold on every listener, before any route answers.

    ``upgrade``: the request asks for another protocol. certproxy never switches: it is
    a plain request, and the connection closes after it. llhttp does not read the body
    of such a request, so one that announces a body is refused, not forwarded without it.
    """
    if method in REFUSED_METHODS:
        return Refusal(405, f"{method.decode('latin-1')} is not allowed", [(b"Allow", ALLOWED)])
    if upgrade and expects_body:
        return Refusal(400, "a request asking for an upgrade must not carry a body", close=True)
    return None


def forward(
    route: AnyRoute,
    method: bytes,
    target: bytes,
    headers: Headers,
    *,
    http10: bool,
    chunked: bool,
    client_ip: bytes,
) -> Forward | Refusal:
    """The head certproxy sends upstream for a request, or why it is refused."""
    parsed = origin_form(target)
    if parsed is None:
        return Refusal(400, "request target must be a path")
    path, authority = parsed
    if authority is not None and b"@" in authority:  # RFC 9110, 4.2.4: never forwarded
        return Refusal(400, "credentials in the request target are not accepted")
    hosts = values(headers, b"host")
    # RFC 9112, 3.2: one valid Host, and in HTTP/1.1 always one; never guess which of two.
    if len(hosts) > 1:
        return Refusal(400, "more than one Host header")
    if hosts and not route.host_ok(hosts[0]):
        return Refusal(400, "invalid Host header")
    if authority is not None and not route.host_ok(authority):  # it becomes the upstream's Host
        return Refusal(400, "invalid authority in the request target")
    if not hosts and not http10:
        return Refusal(400, "missing Host header")
    host = authority or (hosts[0] if hosts else None)
    try:
        out = upstream_request_headers(headers, client_ip=client_ip, host=host, listener_port=route.port)
    except NominationRefused as exc:  # a smuggling attempt: nothing more from this client
        return Refusal(400, str(exc), close=True)
    if authority:  # absolute-form: its authority is the Host (RFC 9112, 3.2.2)
        out = with_value(out, b"host", authority)
    parts = [b"%s %s HTTP/1.1\r\n" % (method, path)]
    if host is None:
        parts.append(b"Host: %s\r\n" % route.upstream_host)
    parts.extend([b"%s: %s\r\n" % h for h in out])
    if chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    parts.append(b"\r\n")
    return Forward(b"".join(parts), host, path)


def response_head(
    route: AnyRoute,
    status: int,
    reason: bytes,
    headers: Headers,
    public_origin: Callable[[], bytes | None],
    *,
    chunked: bool = False,
    close: bool = False,
    keep_alive_10: bool = False,
    final: bool = True,
) -> bytes:
    """The head certproxy relays for an upstream's answer: its end-to-end fields (a
    ``Location`` at the upstream's own address made public), then certproxy's own:
    ``Strict-Transport-Security`` unless the upstream set its own, the framing and the
    connection's fate. ``final`` False: an interim (1xx) head, relayed as it is."""
    out = client_response_headers(headers, upstream_url=route.base_b, public_origin=public_origin)
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    parts.extend([b"%s: %s\r\n" % h for h in out])
    if final:
        if route.hsts is not None and not values(headers, b"strict-transport-security"):
            parts.append(b"Strict-Transport-Security: %s\r\n" % route.hsts)
        if chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if close:
            parts.append(b"Connection: close\r\n")
        elif keep_alive_10:
            parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
