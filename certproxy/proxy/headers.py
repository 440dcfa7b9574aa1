"""Header rules of the reverse proxy, in one tested place.

- Hop-by-hop headers (RFC 9110 section 7.6.1) never cross the proxy, in
  either direction: the fixed set below, every ``Proxy-*`` header, and every
  header that ``Connection`` names.
- End-to-end headers pass unchanged, in order, repeated ones repeated.
- ``X-Forwarded-*``, ``X-Real-IP`` and ``Forwarded`` from the client are
  dropped: certproxy sets them from the connection itself.
"""

from __future__ import annotations

from typing import Iterable

Headers = list[tuple[str, str]]

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
    "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade",
})
FORWARDING = frozenset({
    "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
    "x-forwarded-port", "x-real-ip", "forwarded",
})


def decode_raw(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    """Raw header pairs as text; latin-1 keeps every byte as it came."""
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]


def _connection_named(headers: Headers) -> set[str]:
    named: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            named.update(t.strip().lower() for t in value.split(",") if t.strip())
    return named


def end_to_end(headers: Headers) -> Headers:
    """``headers`` without the hop-by-hop ones."""
    named = _connection_named(headers)
    out: Headers = []
    for name, value in headers:
        low = name.lower()
        if low in HOP_BY_HOP or low.startswith("proxy-") or low in named:
            continue
        out.append((name, value))
    return out


def upstream_request_headers(headers: Headers, *, client_ip: str, host: str | None,
                             listener_port: int) -> Headers:
    """The headers certproxy sends upstream for a client request."""
    out = [(n, v) for n, v in end_to_end(headers) if n.lower() not in FORWARDING]
    out.append(("X-Forwarded-For", client_ip))
    out.append(("X-Real-IP", client_ip))
    out.append(("X-Forwarded-Proto", "https"))
    if host:
        out.append(("X-Forwarded-Host", host))
    out.append(("X-Forwarded-Port", str(listener_port)))
    return out


def client_response_headers(headers: Headers, *, upstream_url: str,
                            public_origin: str | None) -> Headers:
    """The headers certproxy sends back to the client for an upstream response.

    A ``Location`` that points at the upstream's own address (an upstream that
    does not honour ``X-Forwarded-*``) is rewritten to the public origin, as
    nginx's ``proxy_redirect default`` does.
    """
    out = end_to_end(headers)
    if public_origin:
        for i, (name, value) in enumerate(out):
            if name.lower() == "location" and value.startswith(upstream_url):
                rest = value[len(upstream_url):]
                if not rest or rest[0] in "/?#":
                    out[i] = (name, public_origin + rest)
    return out
