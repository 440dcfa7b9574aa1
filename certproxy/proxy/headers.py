"""Header rules of the reverse proxy, in one tested place.

- Hop-by-hop headers (RFC 9110 section 7.6.1) never cross the proxy, in
  either direction: the fixed set below, every ``Proxy-*`` header, and every
  header that ``Connection`` names, except the ones certproxy frames or sets
  itself (``OWNED``): a peer naming those never makes certproxy drop them.
  A request whose ``Connection`` names ``Host``, ``Content-Length`` or
  ``Transfer-Encoding`` is refused (``NominationRefused``): a sender must not
  name them (RFC 9110 7.6.1), and dropping one would let the bytes certproxy
  relays frame the message differently for the upstream (request smuggling).
- End-to-end headers pass unchanged, in order, repeated ones repeated.
- ``X-Forwarded-*``, ``X-Real-IP`` and ``Forwarded`` from the client are
  dropped: certproxy sets them from the connection itself.

Headers are ``(name, value)`` pairs of bytes, exactly as they came off the
wire: nothing is decoded on the way through.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Headers = list[tuple[bytes, bytes]]
Fields = Sequence[tuple[bytes, bytes]]  # what the lookups below read
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
# Fields that frame a message or that certproxy writes itself: never dropped because a
# peer named them in Connection. In a request, naming the first three is refused.
REFUSED_NOMINATIONS = frozenset({b"host", b"content-length", b"transfer-encoding"})
OWNED = REFUSED_NOMINATIONS | FORWARDING | frozenset({b"strict-transport-security"})


class NominationRefused(ValueError):
    """A request's ``Connection`` names a field that frames it (``name``, lower case)."""

    def __init__(self, name: bytes) -> None:
        super().__init__(f"Connection must not name {name.decode('latin-1')}")
        self.name = name


# What end_to_end does with a header name as it came off the wire, per drop set:
# KEEP, DROP, or CONNECTION (dropped, and names more headers to drop). Registry
# traffic repeats a few dozen names; what a client can make certproxy remember is
# bounded (at most 1,024 names of at most 64 bytes per drop set).
KEEP, DROP, CONNECTION = 0, 1, 2
_MEMO_MAX = 1024
_MEMO_NAME_MAX = 64
_memo: dict[frozenset[bytes], dict[bytes, int]] = {}


def _verdict(name: bytes, drop: frozenset[bytes]) -> int:
    low = name.lower()
    if low == b"connection":
        return CONNECTION
    return DROP if low in drop or low[:6] == b"proxy-" else KEEP


def _split(headers: Headers, drop: frozenset[bytes]) -> tuple[Headers, set[bytes] | None]:
    """``headers`` without the names in ``drop`` (and ``Proxy-*``, ``Connection``), and
    the lower-case names that ``Connection`` lists (None when it lists none)."""
    memo = _memo.get(drop)
    if memo is None:
        memo = _memo[drop] = {}
    out: Headers = []
    named: set[bytes] | None = None
    for header in headers:
        name = header[0]
        verdict = memo.get(name)
        if verdict is None:
            verdict = _verdict(name, drop)
            if len(memo) < _MEMO_MAX and len(name) <= _MEMO_NAME_MAX:
                memo[name] = verdict
        if verdict == KEEP:
            out.append(header)
        elif verdict == CONNECTION:
            tokens = {t.strip().lower() for t in header[1].split(b",")}
            named = (named or set()) | tokens
    return out, named


def _without(headers: Headers, named: set[bytes]) -> Headers:
    """``headers`` without those ``Connection`` named, certproxy's own (``OWNED``) kept."""
    named = named - OWNED
    if not named:
        return headers
    return [(n, v) for n, v in headers if n.lower() not in named]


def end_to_end(headers: Headers, drop: frozenset[bytes] = HOP_BY_HOP) -> Headers:
    """``headers`` without the hop-by-hop ones (and without any name in ``drop``,
    which holds ``HOP_BY_HOP``). One pass; a second only when ``Connection`` names
    headers, which may come before it."""
    out, named = _split(headers, drop)
    return _without(out, named) if named else out


def values(headers: Fields, name: bytes) -> list[bytes]:
    """The values of the fields called ``name`` (lower case), in order."""
    size = len(name)
    return [v for n, v in headers if len(n) == size and n.lower() == name]


def first(headers: Fields, name: bytes) -> bytes | None:
    """The value of the first field called ``name`` (lower case), or None."""
    size = len(name)
    for n, v in headers:
        if len(n) == size and n.lower() == name:
            return v
    return None


def with_value(headers: Headers, name: bytes, value: bytes) -> Headers:
    """``headers`` with every field called ``name`` (lower case) set to ``value``."""
    size = len(name)
    return [(n, value if len(n) == size and n.lower() == name else v) for n, v in headers]


def framing(headers: Fields) -> tuple[bytes | None, bool]:
    """``(Content-Length value, chunked)`` of a head llhttp has accepted (so at most one
    framing, and a length made of digits); the last value when a field repeats."""
    length: bytes | None = None
    chunked = False
    for name, value in headers:
        if len(name) == 17 and name.lower() == b"transfer-encoding":
            chunked = True
        elif len(name) == 14 and name.lower() == b"content-length":
            length = value
    return length, chunked


def upstream_request_headers(
    headers: Headers, *, client_ip: bytes, host: bytes | None, listener_port: int
) -> Headers:
    """The headers certproxy sends upstream for a client request; ``NominationRefused``
    when its ``Connection`` names a field that frames it."""
    out, named = _split(headers, _REQUEST_DROP)
    if named:
        refused = named & REFUSED_NOMINATIONS
        if refused:
            raise NominationRefused(min(refused))
        out = _without(out, named)
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
