"""Self-signed bootstrap certificates.

certproxy serves TLS from its first second. Until a CA-issued certificate is
in ``live/``, it serves a self-signed ECDSA P-256 certificate for the
configured names, kept in ``bootstrap/`` so it can never pass for a real one.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .keys import builder, private_pem, subject_alt_names

BOOTSTRAP_DAYS = 90
ISSUER_NAME = "certproxy bootstrap (self-signed)"


def make_self_signed(
    domains: tuple[str, ...], now: dt.datetime, days: int = BOOTSTRAP_DAYS
) -> tuple[bytes, bytes]:
    """Return ``(certificate PEM, private key PEM)`` for ``domains``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, domains[0][:64]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ISSUER_NAME),
        ]
    )
    cert = (
        builder(subject, subject, key.public_key(), now, days)
        .add_extension(subject_alt_names(domains), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), private_pem(key)
