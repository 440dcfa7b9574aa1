"""Loading and validating a certificate/key pair.

A pair is served only after every check has passed: both PEM files parse, the
key matches the leaf, the leaf is valid now, and each certificate of the chain
is issued by the next one. The parsed facts (names, serial, validity) travel
with the PEM bytes in one frozen ``CertPair``, so the TLS layer never rereads
the files and the health report never reparses them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes, PublicKeyTypes
from cryptography.x509.oid import NameOID

from .errors import PairError
from .paths import FULLCHAIN, PRIVKEY

# A PEM file larger than this is not a certificate chain or a key.
MAX_PEM_BYTES = 1 << 20


@dataclass(frozen=True)
class CertPair:
    """A validated certificate chain and its private key."""

    name: str
    kind: str  # "live" or "bootstrap"
    chain_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    domains: tuple[str, ...]
    serial: str
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    self_signed: bool
    source: Path
    loaded_at: dt.datetime

    def days_left(self, now: dt.datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400

    def valid_at(self, now: dt.datetime) -> bool:
        return self.not_before <= now < self.not_after

    def covers(self, domain: str) -> bool:
        """True when the certificate is valid for ``domain`` (one-label wildcards)."""
        domain = domain.lower().rstrip(".")
        if domain in self.domains:
            return True
        head, _, rest = domain.partition(".")
        return bool(head and rest) and f"*.{rest}" in self.domains

    def summary(self, now: dt.datetime) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "domains": list(self.domains),
            "issuer": self.issuer,
            "serial": self.serial,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "days_left": round(self.days_left(now), 2),
            "self_signed": self.self_signed,
            "loaded_at": self.loaded_at.isoformat(),
        }


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_PEM_BYTES + 1)
    except FileNotFoundError:
        raise PairError(path, "missing") from None
    except OSError as exc:
        raise PairError(path, f"unreadable: {exc.strerror or exc}") from None
    if len(data) > MAX_PEM_BYTES:
        raise PairError(path, "larger than 1 MiB")
    if not data.strip():
        raise PairError(path, "empty")
    return data


def _domains(cert: x509.Certificate) -> tuple[str, ...]:
    names: list[str] = []
    san: x509.SubjectAlternativeName | None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        names.extend(n.lower() for n in san.get_values_for_type(x509.DNSName))
        names.extend(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    if not names:
        for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
            names.append(str(attr.value).lower())
    return tuple(dict.fromkeys(names))


def serial_hex(number: int) -> str:
    """A serial as ``openssl x509 -serial`` prints it: upper-case hex, whole bytes
    (leading zero kept), the one form certproxy shows everywhere."""
    text = f"{number:X}"
    return text if len(text) % 2 == 0 else "0" + text


def _issuer_name(cert: x509.Certificate) -> str:
    for oid in (NameOID.ORGANIZATION_NAME, NameOID.COMMON_NAME):
        attrs = cert.issuer.get_attributes_for_oid(oid)
        if attrs:
            return str(attrs[0].value)
    return cert.issuer.rfc4514_string()


def _public_der(key: PublicKeyTypes | CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def parse_pair(
    name: str,
    kind: str,
    chain_pem: bytes,
    key_pem: bytes,
    *,
    source: Path,
    now: dt.datetime,
) -> CertPair:
    """Validate PEM bytes as a servable pair, or raise PairError saying why."""
    chain_path, key_path = source / FULLCHAIN, source / PRIVKEY
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise PairError(chain_path, "not a PEM certificate chain (truncated or corrupt?)") from None
    if not chain:
        raise PairError(chain_path, "holds no certificate")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise PairError(key_path, "not an unencrypted PEM private key (truncated or corrupt?)") from None
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm for odd keys
        raise PairError(key_path, f"unusable private key: {exc}") from None
    if not isinstance(
        key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)
    ):
        raise PairError(key_path, "unsupported key type")
    leaf = chain[0]
    if _public_der(key.public_key()) != _public_der(leaf.public_key()):
        raise PairError(key_path, "private key does not match the certificate")
    not_before = leaf.not_valid_before_utc
    not_after = leaf.not_valid_after_utc
    if now < not_before:
        raise PairError(chain_path, f"not valid before {not_before.isoformat()}")
    if now >= not_after:
        raise PairError(chain_path, f"expired at {not_after.isoformat()}")
    for i, (cert, issuer) in enumerate(zip(chain, chain[1:], strict=False), start=1):
        if not _issued_by(cert, issuer):
            raise PairError(
                chain_path, f"chain out of order: certificate {i} is not issued by certificate {i + 1}"
            )
    self_signed = leaf.issuer == leaf.subject and _issued_by(leaf, leaf)
    domains = _domains(leaf)
    if not domains:
        raise PairError(chain_path, "certificate names no domain")
    return CertPair(
        name=name,
        kind=kind,
        chain_pem=chain_pem,
        key_pem=key_pem,
        domains=domains,
        serial=serial_hex(leaf.serial_number),
        issuer=_issuer_name(leaf),
        not_before=not_before,
        not_after=not_after,
        self_signed=self_signed,
        source=source,
        loaded_at=now,
    )


def load_pair(folder: Path, name: str, kind: str, now: dt.datetime) -> CertPair:
    """Read ``folder/{fullchain,privkey}.pem`` (files or symlinks) and validate them."""
    chain_pem = _read(folder / FULLCHAIN)
    key_pem = _read(folder / PRIVKEY)
    return parse_pair(name, kind, chain_pem, key_pem, source=folder, now=now)


def key_mode_problem(folder: Path) -> str | None:
    """A warning when the private key is readable by group or others."""
    try:
        mode = os.stat(folder / PRIVKEY).st_mode & 0o777
    except OSError:
        return None
    if mode & 0o077:
        return f"{folder / PRIVKEY} has mode {mode:04o}; it should be 0600"
    return None


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
