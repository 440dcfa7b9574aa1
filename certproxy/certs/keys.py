"""Keys and certificate builders shared by every issuer of certproxy's own certificates."""

from __future__ import annotations

import datetime as dt
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from .pair import is_ip


def new_private_key(key_type: str) -> bytes:
    """A new key as PKCS#8 PEM: ``ec256``, ``ec384``, or ``rsa2048`` / ``rsa3072`` / ``rsa4096``."""
    if key_type.startswith("ec"):
        curve = ec.SECP256R1() if key_type == "ec256" else ec.SECP384R1()
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = ec.generate_private_key(curve)
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))
    return private_pem(key)


def private_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def builder(
    subject: x509.Name, issuer: x509.Name, public_key: CertificatePublicKeyTypes, now: dt.datetime, days: int
) -> x509.CertificateBuilder:
    """A certificate valid from five minutes ago (clock skew) for ``days`` days, random serial."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def subject_alt_names(domains: tuple[str, ...]) -> x509.SubjectAlternativeName:
    """Every name of ``domains``: IP addresses as such, the rest as DNS names."""
    return x509.SubjectAlternativeName(
        [x509.IPAddress(ipaddress.ip_address(d)) if is_ip(d) else x509.DNSName(d) for d in domains]
    )


def key_usage(*, signs_certificates: bool = False, key_encipherment: bool = False) -> x509.KeyUsage:
    """digitalSignature, plus certificate and CRL signing for a CA, key encipherment for RSA leaves."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )
