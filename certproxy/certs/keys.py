"""Private keys for certificates: one function, for every issuer."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def new_private_key(key_type: str) -> bytes:
    """A new key as PKCS#8 PEM: ``ec256``, ``ec384``, or ``rsa2048`` / ``rsa3072`` / ``rsa4096``."""
    if key_type.startswith("ec"):
        curve = ec.SECP256R1() if key_type == "ec256" else ec.SECP384R1()
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = ec.generate_private_key(curve)
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
