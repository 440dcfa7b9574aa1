"""What the SNI callback is handed during a handshake of ``tlsconn.TLSConnection``.

OpenSSL's SNI callback gets the ``owner`` of the SSL object, and CPython keeps only a
weak reference to it. The connection itself cannot be that owner in the compiled
build (mypyc's classes take no weak references), so each connection hands over this
small object instead and keeps it: it points the handshake at a context and knows
the address the client dialled (``tls.TLSState._sni_callback``). This module stays
interpreted in the compiled build (it is not in ``setup.py``'s list).
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from .tls import address_name


class HandshakeOwner:
    """The ``owner`` of one connection's SSL object: ``context`` and ``local_address``."""

    __slots__ = ("ssl", "sock", "__weakref__")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.ssl: Any = None  # the C-level SSL object, set once it is made

    @property
    def context(self) -> ssl.SSLContext:
        return self.ssl.context  # type: ignore[no-any-return]

    @context.setter
    def context(self, ctx: ssl.SSLContext) -> None:
        self.ssl.context = ctx

    @property
    def local_address(self) -> str | None:
        """The IP address the client connected to (canonical text): a handshake without
        SNI picks the certificate by it. Asked only then."""
        try:
            host = self.sock.getsockname()[0]
        except (OSError, IndexError, TypeError):
            return None
        return address_name(host) if isinstance(host, str) else None
