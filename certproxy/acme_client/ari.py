"""ACME Renewal Information (RFC 9773): the identifier of a certificate.

Kept apart from the client so that what only needs the identifier (the
renewal manager) does not load the ``acme`` library.
"""

from __future__ import annotations

import base64
import math

from cryptography import x509


def ari_cert_id(cert: x509.Certificate) -> str:
    """The RFC 9773 certificate identifier: base64url(AKI keyIdentifier) '.' base64url(serial)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    key_id = aki.value.key_identifier or b""
    serial = cert.serial_number
    serial_bytes = serial.to_bytes(math.ceil((serial.bit_length() + 1) / 8), "big", signed=True)

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    return f"{b64(key_id)}.{b64(serial_bytes)}"
