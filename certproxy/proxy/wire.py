"""HTTP/1 bytes: certproxy's own answers, request targets, head limits.

Everything certproxy says by itself (errors, refusals, the answers of its
control listeners, the 503 past the connection cap, the 400 for plain HTTP on
a TLS port) is serialised by ``own_response`` and nowhere else.
"""

from __future__ import annotations

import html
import http
import re
import time
from collections.abc import Sequence
from email.utils import formatdate

from .headers import Headers, values

# Request heads larger than these are refused (414/431); registry bearer
# tokens fit with room to spare.
MAX_LINE_SIZE = 16384
MAX_FIELD_SIZE = 16384
MAX_HEADERS = 100
MAX_HEAD_SIZE = 65536

TEXT = b"text/plain; charset=utf-8"
REGISTRY_API_HEADER = (b"Docker-Distribution-Api-Version", b"registry/2.0")
# Not for a registry front: CONNECT would make it an open tunnel, TRACE echoes credentials.
REFUSED_METHODS = frozenset({b"CONNECT", b"TRACE", b"TRACK"})
ALLOWED = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
# Resent once on a fresh connection when a pooled one turns out closed (RFC 9112, 9.3.1).
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"PUT"})

_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}


def reason_phrase(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


_date: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """Now as an HTTP date (RFC 9110's IMF-fixdate), made once a second: every answer of
    certproxy's own carries one, as an origin with a clock must (clients compare it
    with their own clock)."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True).encode("ascii"))
    return _date[1]


def own_response(
    status: int,
    body: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    *,
    content_type: bytes = TEXT,
    close: bool = False,
    keep_alive_10: bool = False,
    head_only: bool = False,
) -> bytes:
    """A complete response of certproxy's own (the only place one is serialised)."""
    parts = [
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nDate: %s\r\n"
        % (status, reason_phrase(status), content_type, len(body), http_date())
    ]
    parts.extend(b"%s: %s\r\n" % h for h in headers)
    if close:
        parts.append(b"Connection: close\r\n")
    elif keep_alive_10:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)


HTML = b"text/html; charset=utf-8"


def error_body(status: int, reason: str) -> bytes:
    """The one-line body of certproxy's own errors: status, reason phrase, why."""
    return b"certproxy: %d %s: %s\n" % (status, reason_phrase(status), reason.encode())


def error_page(status: int, reason: str) -> bytes:
    """The same for a browser: a minimal HTML page (nothing internal in it either)."""
    title = b"%d %s" % (status, reason_phrase(status))
    text = html.escape(reason).encode()
    return (
        b'<!doctype html>\n<html><head><meta charset="utf-8"><title>%s</title></head>\n'
        b"<body><h1>%s</h1>\n<p>%s</p>\n<hr><p>certproxy</p></body></html>\n" % (title, title, text)
    )


def wants_html(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """A browser asking (``Accept: text/html``); registry clients never do."""
    return any(b"text/html" in v for v in values(headers, b"accept"))


def error_headers(target: bytes) -> Headers:
    """certproxy's own errors are not cached; registry clients see the API header."""
    headers = [(b"Cache-Control", b"no-store")]
    if target.startswith(b"/v2/") or target == b"/v2":
        headers.append(REGISTRY_API_HEADER)
    return headers


TOO_MANY = own_response(
    503, error_body(503, "too many connections, try again"), [(b"Retry-After", b"1")], close=True
)


def origin_form(raw_target: bytes) -> tuple[bytes, bytes | None] | None:
    """``(path?query, authority)`` for a request target; None when unusable.

    Absolute-form targets (``http://host/path``) become origin-form: whatever
    host they name, the request goes to this route's upstream only.
    """
    if raw_target.startswith(b"/"):
        return raw_target, None
    scheme, sep, rest = raw_target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return None
    authority, slash, path = rest.partition(b"/")
    return b"/" + path if slash else b"/", authority or None


def _host_of(head: bytes) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"host":
            host = value.strip().decode("latin-1")
            return host if host and all(c.isalnum() or c in ".-:[]" for c in host) else None
    return None


_SAFE_PATH = re.compile(rb"/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,2000}")


def _path_of(head: bytes) -> str:
    """The request's path, when it is plain enough to repeat in a hint; else ``/``.

    OpenSSL has already taken the first five bytes (a record header's worth,
    ``GET /`` or ``POST ``), so the line may start inside the method or the path.
    """
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) < 2 or not parts[-1].startswith(b"HTTP/"):
        return "/"
    target = parts[-2] if parts[-2].startswith(b"/") else b"/" + parts[-2]
    return target.decode("ascii") if _SAFE_PATH.fullmatch(target) else "/"


def plain_http_answer(head: bytes, port: int) -> bytes:
    """What certproxy answers when plain HTTP arrives on a TLS port."""
    host = _host_of(head)
    name = host.rsplit(":", 1)[0] if host and not host.endswith("]") else host
    hint = f"https://{name}:{port}{_path_of(head)}" if name else f"https:// on port {port}"
    return own_response(
        400, error_body(400, f"this port speaks HTTPS, not plain HTTP: use {hint}"), close=True
    )


class HeadRefused(Exception):
    """A request head over certproxy's limits."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
