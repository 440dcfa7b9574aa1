"""What a TLS listener serves: the certificate of one new connection, checked against
given roots (PEM bytes or a CA file) or not checked at all."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from cryptography import x509


def peer_certificate(port: int, host: str = "localhost", *, roots: bytes | None = None,
                     cafile: Path | None = None, address: str = "127.0.0.1") -> x509.Certificate:
    """The leaf served on ``address:port`` for SNI ``host``; verified (name included) when
    ``roots`` or ``cafile`` is given, so an untrusted one raises ``ssl.SSLError``."""
    if roots is not None or cafile is not None:
        ctx = ssl.create_default_context(cadata=roots.decode() if roots else None,
                                         cafile=str(cafile) if cafile else None)
    else:
        ctx = ssl._create_unverified_context()
    with socket.create_connection((address, port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as conn:
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def verifies(port: int, host: str = "localhost", *, roots: bytes | None = None,
             cafile: Path | None = None, address: str = "127.0.0.1") -> bool:
    """Whether a new connection's certificate verifies against ``roots`` / ``cafile``."""
    try:
        peer_certificate(port, host, roots=roots, cafile=cafile, address=address)
    except (OSError, ssl.SSLError):
        return False
    return True
