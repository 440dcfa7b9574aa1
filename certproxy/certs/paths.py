"""Every path of the store is built here, and only here.

The layout is certbot's, so that certbot can renew into the same folder::

    ROOT/live/<name>/fullchain.pem      leaf + chain (file or symlink)
    ROOT/live/<name>/privkey.pem        mode 0600 (file or symlink)
    ROOT/bootstrap/<name>/...           self-signed certificate until a real one exists
    ROOT/accounts/...                   ACME account keys
    ROOT/challenges/<token>             HTTP-01 answers
    ROOT/locks/                         cross-process issuance locks

Names and tokens are checked against strict patterns before they become a
path component, so no input can point outside its folder (``..``, ``/``,
percent-encoded dots, NUL bytes all fail the pattern).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import InvalidName

FULLCHAIN = "fullchain.pem"
PRIVKEY = "privkey.pem"
META = "certproxy.json"  # which CA directory issued the pair, and when
ACCOUNT_KEY = "private_key.pem"
ACCOUNT_RECORD = "account.json"

# A DNS name or certbot's "name-0001" lineage: letters, digits, dot, dash,
# underscore; starts with a letter or digit; no "..".
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
# RFC 8555 tokens are base64url; the HTTP listener enforces the same rule.
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,256}")
TOKEN_KID = re.compile(r"[0-9a-f]{16}")  # the id of a token-signing key


def is_valid_token(token: str) -> bool:
    """True when ``token`` may name a file in the challenge folder."""
    return _TOKEN_RE.fullmatch(token) is not None


def canonical_ip(text: str) -> str | None:
    """The text form of an IP address, as certificates and certbot write it (IPv6
    compressed, lower case: ``::1``), or None when ``text`` is not one. A scoped
    address (``fe80::1%eth0``) is not: it cannot stand in a certificate."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if "%" in text:
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def check_name(name: str) -> str:
    """Return ``name`` if it may name a certificate folder, else raise InvalidName.

    An IPv6 address names its folder in its canonical form (``live/::1``, as
    certbot names it): colons are fine in a file name, and the folder name
    parses back to the address."""
    if ":" in name and canonical_ip(name) == name:
        return name
    if not _NAME_RE.fullmatch(name) or ".." in name:
        raise InvalidName(f"invalid certificate name {name!r}")
    return name


def name_for_domain(domain: str) -> str:
    """The folder name certbot would use for a domain (``*.x`` becomes ``x``) or an IP
    address (its canonical text)."""
    domain = domain.strip().lower().rstrip(".")
    if domain.startswith("*."):
        domain = domain[2:]
    return check_name(canonical_ip(domain) or domain)


@dataclass(frozen=True)
class StorePaths:
    root: Path

    @property
    def live(self) -> Path:
        return self.root / "live"

    @property
    def bootstrap(self) -> Path:
        return self.root / "bootstrap"

    @property
    def accounts(self) -> Path:
        return self.root / "accounts"

    @property
    def challenges(self) -> Path:
        return self.root / "challenges"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def ca(self) -> Path:
        """The local CA (``CERTPROXY_LOCAL_CA``): ``ca.crt`` and ``ca.key``."""
        return self.root / "ca"

    @property
    def token_keys(self) -> Path:
        """The keys that sign the registry routes' access tokens (``CERTPROXY_ACCESS``)."""
        return self.root / "tokens"

    def token_key(self, kid: str) -> Path:
        if not TOKEN_KID.fullmatch(kid):
            raise InvalidName(f"invalid token key id {kid!r}")
        return self.token_keys / f"{kid}.key"

    @property
    def installation(self) -> Path:
        """Facts of this installation shared by every replica (the renewal spread)."""
        return self.root / "installation.json"

    def folders(self) -> tuple[Path, ...]:
        return (self.live, self.bootstrap, self.accounts, self.challenges, self.locks)

    def live_dir(self, name: str) -> Path:
        return self.live / check_name(name)

    def bootstrap_dir(self, name: str) -> Path:
        return self.bootstrap / check_name(name)

    def account_dir(self, directory_url: str) -> Path:
        """One folder per ACME directory: staging and production never share an account."""
        digest = hashlib.sha256(directory_url.encode()).hexdigest()[:16]
        host = re.sub(r"[^A-Za-z0-9.-]", "_", urlsplit(directory_url).netloc)[:100] or "acme"
        return self.accounts / f"{host}-{digest}"

    def account_key(self, directory_url: str) -> Path:
        return self.account_dir(directory_url) / ACCOUNT_KEY

    def account_record(self, directory_url: str) -> Path:
        return self.account_dir(directory_url) / ACCOUNT_RECORD

    def lock(self, name: str) -> Path:
        return self.locks / f"{check_name(name)}.lock"

    def alpn_challenge(self, domain: str) -> Path:
        """TLS-ALPN-01: the validation certificate and key for ``domain`` (one PEM), by the
        name the CA's ClientHello carries (for an IP address, its reverse-DNS name)."""
        return self.challenges / "tls-alpn-01" / f"{check_name(domain)}.pem"

    def challenge(self, token: str) -> Path:
        if not is_valid_token(token):
            raise InvalidName(f"invalid challenge token {token!r}")
        return self.challenges / token
