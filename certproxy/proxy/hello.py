"""What a TLS ClientHello asks for (SNI and ALPN), read before TLS begins.

Python's ``ssl`` chooses the certificate before it shows the offered ALPN
protocols, and TLS-ALPN-01 (RFC 8737) needs the choice to depend on them: a
ClientHello offering ``acme-tls/1`` for a name with a pending challenge gets
the validation certificate, every other one the normal certificate. So a
listener that answers the challenge reads the first TLS record itself
(``tlsconn.py``), picks the context, and only then hands the bytes to OpenSSL.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAX_RECORD = 16384 + 5  # a TLS record: header and at most 2^14 bytes
ACME_TLS_1 = "acme-tls/1"


@dataclass(frozen=True)
class Hello:
    server_name: str | None
    alpn: tuple[str, ...]


class NeedMore(Exception):
    """The bytes so far end before the ClientHello does."""


def parse_client_hello(data: bytes) -> Hello | None:
    """SNI and ALPN of the ClientHello at the start of ``data``; None when ``data`` is not
    a TLS ClientHello (TLS will then fail on its own); NeedMore when it is cut short."""
    if len(data) < 5:
        raise NeedMore
    content_type, _version, length = struct.unpack("!BHH", data[:5])
    if content_type != 22 or length > MAX_RECORD - 5:
        return None
    if len(data) < 5 + length:
        raise NeedMore  # a ClientHello spread over several records is not looked into
    body = data[5 : 5 + length]
    try:
        return _hello(body)
    except (IndexError, struct.error, UnicodeDecodeError):
        return None


def _hello(body: bytes) -> Hello | None:
    if body[0] != 1:  # handshake type: client_hello
        return None
    pos = 4 + 2 + 32  # handshake header, client_version, random
    pos += 1 + body[pos]  # session_id
    pos += 2 + struct.unpack_from("!H", body, pos)[0]  # cipher_suites
    pos += 1 + body[pos]  # compression_methods
    if pos >= len(body):
        return Hello(None, ())
    end = pos + 2 + struct.unpack_from("!H", body, pos)[0]
    pos += 2
    name: str | None = None
    alpn: tuple[str, ...] = ()
    while pos + 4 <= end:
        ext_type, ext_len = struct.unpack_from("!HH", body, pos)
        ext = body[pos + 4 : pos + 4 + ext_len]
        pos += 4 + ext_len
        if ext_type == 0:  # server_name: list length, then (type 0, length, host name)
            if len(ext) >= 5 and ext[2] == 0:
                (n,) = struct.unpack_from("!H", ext, 3)
                name = ext[5 : 5 + n].decode("ascii").lower().rstrip(".")
        elif ext_type == 16:  # application_layer_protocol_negotiation
            protos, i = [], 2
            while i < len(ext):
                n = ext[i]
                protos.append(ext[i + 1 : i + 1 + n].decode("ascii", "replace"))
                i += 1 + n
            alpn = tuple(protos)
    return Hello(name, alpn)
