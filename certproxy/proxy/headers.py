"""Header rules of the reverse proxy, in one tested place.

- Hop-by-hop headers (RFC 9110 section 7.6.1) never cross the proxy, in
  either direction: the fixed set below, every ``Proxy-*`` header, and every
  header that ``Connection`` names.
- End-to-end headers pass unchanged, in order, repeated ones repeated.
- ``X-Forwarded-*``, ``X-Real-IP`` and ``Forwarded`` from the client are
  dropped: certproxy sets them from the connection itself.

Headers are ``(name, value)`` pairs of bytes, exactly as they came off the
wire: nothing is decoded on the way through.
"""

from __future__ import annotations

from collections.abc import Callable

Headers = list[tuple[bytes, bytes]]
# An answer certproxy makes itself: status, headers, body, content type.
Answer = tuple[int, Headers, bytes, bytes]
NO_STORE: Headers = [(b"Cache-Control", b"no-store")]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
FORWARDING = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-real-ip",
        b"forwarded",
    }
)
# Dropped from requests: hop-by-hop and the client's own forwarding claims.
_REQUEST_DROP = HOP_BY_HOP | FORWARDING


def end_to_end(headers: Headers, drop: frozenset[bytes] = HOP_BY_HOP) -> Headers:
    """``headers`` without the hop-by-hop ones (and without any name in ``drop``,
    which holds ``HOP_BY_HOP``). One pass; a second only when ``Connection`` names
    headers, which may come before it."""
    out: Headers = []
    named: set[bytes] | None = None
    for name, value in headers:
        low = name.lower()
        if low in drop or low[:6] == b"proxy-":
            if low == b"connection":
                tokens = {t.strip().lower() for t in value.split(b",")}
                named = (named or set()) | tokens
            continue
        out.append((name, value))
    if named:
        return [(n, v) for n, v in out if n.lower() not in named]
    return out


def upstream_request_headers(
    headers: Headers, *, client_ip: bytes, host: bytes | None, listener_port: int
) -> Headers:
    """The headers certproxy sends upstream for a client request."""
    out = end_to_end(headers, _REQUEST_DROP)
    out.append((b"X-Forwarded-For", client_ip))
    out.append((b"X-Real-IP", client_ip))
    out.append((b"X-Forwarded-Proto", b"https"))
    if host:
        out.append((b"X-Forwarded-Host", host))
    out.append((b"X-Forwarded-Port", b"%d" % listener_port))
    return out


def client_response_headers(
    headers: Headers, *, upstream_url: bytes, public_origin: Callable[[], bytes | None]
) -> Headers:
    """The headers certproxy sends back to the client for an upstream response.

    A ``Location`` that points at the upstream's own address (an upstream that
    does not honour ``X-Forwarded-*``) is rewritten to the public origin, as
    nginx's ``proxy_redirect default`` does. ``public_origin`` is asked only
    when there is such a Location.
    """
    out = end_to_end(headers)
    for i, (name, value) in enumerate(out):
        if value.startswith(upstream_url) and name.lower() == b"location":
            rest = value[len(upstream_url) :]
            if not rest or rest[:1] in (b"/", b"?", b"#"):
                public = public_origin()
                if public:
                    out[i] = (name, public + rest)
    return out
