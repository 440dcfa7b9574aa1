"""TLS-ALPN-01 (RFC 8737): the self-signed validation certificate, and where it waits.

The issuer writes one PEM file (certificate and key) per name into
``STORE/challenges/tls-alpn-01/``; any replica sharing the store answers a
ClientHello that offers ALPN ``acme-tls/1`` for that name with it
(``proxy/hello.py`` says how the ClientHello is read).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from .keys import builder, private_pem
from .paths import canonical_ip

ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # id-pe-acmeIdentifier


def sni_for(identifier: str) -> str:
    """The server name the CA's ClientHello carries for ``identifier``: the name itself,
    or for an IP address its reverse-DNS name (RFC 8738, section 6:
    ``1.0.0.127.in-addr.arpa``, ``…ip6.arpa``)."""
    ip = canonical_ip(identifier)
    return ipaddress.ip_address(ip).reverse_pointer if ip else identifier


def validation_certificate(domain: str, key_authorization: str, now: dt.datetime) -> bytes:
    """Certificate and key (one PEM) for ``domain`` (a dNSName, or an iPAddress for an IP
    address), carrying the digest of the key authorization in the critical
    acmeIdentifier extension."""
    ip = canonical_ip(domain)
    san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(ip)) if ip else x509.DNSName(domain)
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode()).digest()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certproxy tls-alpn-01")])
    cert = (
        builder(name, name, key.public_key(), now, days=7)
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        # The extension's value is the DER OCTET STRING of the SHA-256 digest.
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER, b"\x04\x20" + digest), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM) + private_pem(key)
