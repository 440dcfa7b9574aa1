"""A CA of certproxy's own, for registries no public CA can reach (``CERTPROXY_LOCAL_CA=1``).

How this works: the CA (an ECDSA P-256 key and a self-signed certificate for
ten years) is made once, in ``STORE/ca/``, and kept: clients trust its
``ca.crt`` once, and every later leaf chains to it. It is made in a folder of
its own name and renamed into place, so of several replicas making it at
once exactly one wins and the others load the winner's. Its name
constraints permit only the names configured when it was made (a wildcard's
base domain as a subtree, an IP address exactly), so its key, if it ever
leaked, could vouch for nobody else's site; a later configuration with a name
outside them is refused with a way out, never served a leaf clients reject.
Leaves live ``LEAF_DAYS`` days and are renewed by the same loop as ACME
certificates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .atomic import KEY_MODE, fsync_dir, write_pair_atomic
from .errors import StoreError
from .keys import builder, key_usage, private_pem, subject_alt_names
from .pair import is_ip

CA_DAYS = 3650
LEAF_DAYS = 90
CA_CERT, CA_KEY = "ca.crt", "ca.key"
ISSUER_PREFIX = "certproxy local CA"


@dataclass(frozen=True)
class LocalCA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    folder: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the CA certificate, as ``openssl x509 -fingerprint -sha256`` prints it."""
        return ":".join(f"{b:02X}" for b in self.cert.fingerprint(hashes.SHA256()))

    def permitted(self) -> tuple[list[str], list[str]]:
        """(DNS subtrees, IP networks) the CA may vouch for."""
        try:
            nc = self.cert.extensions.get_extension_for_class(x509.NameConstraints).value
        except x509.ExtensionNotFound:
            return [], []
        dns = [str(n.value) for n in nc.permitted_subtrees or [] if isinstance(n, x509.DNSName)]
        ips = [str(n.value) for n in nc.permitted_subtrees or [] if isinstance(n, x509.IPAddress)]
        return dns, ips

    def outside(self, domains: tuple[str, ...]) -> list[str]:
        """The names in ``domains`` this CA's constraints do not permit."""
        dns, ips = self.permitted()
        bad = []
        for name in domains:
            if is_ip(name):
                addr = ipaddress.ip_address(name)
                if ips and not any(addr in ipaddress.ip_network(net) for net in ips):
                    bad.append(name)
            else:
                base = name[2:] if name.startswith("*.") else name
                if dns and not any(base == d or base.endswith("." + d) for d in dns):
                    bad.append(name)
        return bad

    def refusal(self, domains: tuple[str, ...]) -> str | None:
        """Why this CA cannot issue for ``domains`` (names outside its constraints), or None."""
        outside = self.outside(domains)
        if not outside:
            return None
        permitted = ", ".join(sum(self.permitted(), []))
        return (
            f"{', '.join(outside)} is outside what the local CA in {self.folder} may vouch for "
            f"({permitted}); move {self.folder} away to make a new CA "
            "(clients must then trust its new ca.crt)"
        )


def _subtrees(domains: tuple[str, ...]) -> list[x509.GeneralName]:
    trees: list[x509.GeneralName] = []
    for name in domains:
        if is_ip(name):
            addr = ipaddress.ip_address(name)
            trees.append(x509.IPAddress(ipaddress.ip_network(f"{addr}/{addr.max_prefixlen}")))
        else:
            trees.append(x509.DNSName(name[2:] if name.startswith("*.") else name))
    return list(dict.fromkeys(trees))


def make_ca(domains: tuple[str, ...], now: dt.datetime) -> tuple[bytes, bytes]:
    """``(certificate PEM, key PEM)`` of a new CA limited to ``domains``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"{ISSUER_PREFIX} {secrets.token_hex(4)}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"{ISSUER_PREFIX} for {domains[0]}"[:64]),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        builder(name, name, key.public_key(), now, CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(signs_certificates=True), critical=True)
        .add_extension(
            x509.NameConstraints(permitted_subtrees=_subtrees(domains), excluded_subtrees=None), True
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), private_pem(key)


def load_ca(folder: Path) -> LocalCA | None:
    """The CA in ``folder``, or None when there is none yet; StoreError when it is damaged."""
    try:
        cert_pem = (folder / CA_CERT).read_bytes()
        key_pem = (folder / CA_KEY).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"{folder}: cannot read the local CA: {exc.strerror or exc}") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as exc:
        raise StoreError(f"{folder}: the local CA is damaged: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise StoreError(f"{folder}: {CA_KEY} does not belong to {CA_CERT}")
    return LocalCA(cert, key, folder)


def ensure_ca(folder: Path, domains: tuple[str, ...], now: dt.datetime) -> tuple[LocalCA, bool]:
    """The CA in ``folder``, made first if there is none; (CA, whether this call made it)."""
    existing = load_ca(folder)
    if existing is not None:
        return existing, False
    cert_pem, key_pem = make_ca(domains, now)
    staging = folder.with_name(f".{folder.name}.new-{secrets.token_hex(4)}")
    try:
        write_pair_atomic(staging, {CA_KEY: (key_pem, KEY_MODE), CA_CERT: (cert_pem, 0o644)})
        os.chmod(staging, 0o755)
        try:
            os.rename(staging, folder)  # fails when another process made it first
        except OSError:
            winner = load_ca(folder)
            if winner is None:
                raise
            return winner, False
        fsync_dir(folder.parent)
    except OSError as exc:
        raise StoreError(f"{folder}: cannot make the local CA: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    made = load_ca(folder)
    assert made is not None
    return made, True


def issue_leaf(ca: LocalCA, domains: tuple[str, ...], key_pem: bytes, now: dt.datetime) -> bytes:
    """The chain PEM (leaf, then the CA) of a server certificate for ``domains``."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0][:64])])
    days = min(LEAF_DAYS, (ca.cert.not_valid_after_utc - now).days)
    cert = (
        builder(subject, ca.cert.subject, key.public_key(), now, days)
        .add_extension(subject_alt_names(domains), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(key_encipherment=isinstance(key, rsa.RSAPrivateKey)), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM) + ca.cert_pem
