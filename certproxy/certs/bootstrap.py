"""Self-signed bootstrap certificates.

certproxy serves TLS from its first second. Until a CA-issued certificate is
in ``live/``, it serves a self-signed ECDSA P-256 certificate for the
configured names, kept in ``bootstrap/`` so it can never pass for a real one.
"""

from __future__ import annotations

import datetime as dt
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .pair import is_ip

BOOTSTRAP_DAYS = 90
ISSUER_NAME = "certproxy bootstrap (self-signed)"


def make_self_signed(
    domains: tuple[str, ...], now: dt.datetime, days: int = BOOTSTRAP_DAYS
) -> tuple[bytes, bytes]:
    """Return ``(certificate PEM, private key PEM)`` for ``domains``."""
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for d in domains:
        if is_ip(d):
            sans.append(x509.IPAddress(ipaddress.ip_address(d)))
        else:
            sans.append(x509.DNSName(d))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, domains[0][:64]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ISSUER_NAME),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem
