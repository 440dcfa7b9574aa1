"""What the ACME client needs to know, as one frozen value."""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from ..certs import InvalidName, canonical_ip, name_for_domain

KEY_TYPES = ("ec256", "ec384", "rsa2048", "rsa3072", "rsa4096")
CHALLENGES = ("http-01", "dns-01", "tls-alpn-01")
NEEDS_DNS = "dns-01 needs the DNS server to update (host[:port]), or CERTPROXY_DNS_PROVIDER"
TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1", "hmac-md5")
LOCAL_CA_DIRECTORY = "certproxy-local-ca"  # the issuer the store's record names for the local CA


class SettingsError(ValueError):
    """A setting the ACME client cannot work with; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class DnsSettings:
    server: str | None = None  # RFC 2136: the primary to update; with a provider: the server to check
    port: int = 53
    provider: str | None = None  # a dns-lexicon provider (its own LEXICON_* credentials)
    tsig_key: str | None = None
    tsig_secret: str | None = field(default=None, repr=False)  # base64; never shown
    tsig_algorithm: str = "hmac-sha256"
    zone: str | None = None

    def check(self) -> str | None:
        """Why these settings cannot work (``setting: reason``), or None."""
        if self.provider is None and self.server is None:
            return f"dns_server: {NEEDS_DNS}"
        if bool(self.tsig_key) != bool(self.tsig_secret):
            return "dns_tsig_secret: a TSIG key needs both its name and its secret"
        if self.tsig_secret:
            try:
                base64.b64decode(self.tsig_secret, validate=True)
            except (binascii.Error, ValueError):
                return "dns_tsig_secret: not base64"
        if self.tsig_algorithm not in TSIG_ALGORITHMS:
            return f"dns_tsig_algorithm: {self.tsig_algorithm!r} is not one of {', '.join(TSIG_ALGORITHMS)}"
        return None


@dataclass(frozen=True)
class AcmeSettings:
    directory: str
    domains: tuple[str, ...]
    email: str | None = None
    ca_bundle: Path | None = None
    eab_kid: str | None = None
    eab_hmac_key: str | None = None
    key_type: str = "ec256"
    profile: str | None = None
    retry_min: float = 60.0  # seconds before the first retry after a failure
    network_timeout: float = 30.0  # seconds for one request to the CA
    challenge: str = "http-01"
    dns: DnsSettings | None = None  # dns-01: the server to update
    # dns-01 cannot prove an IP address (RFC 8738): the challenge its IP addresses take
    # instead (http-01 when a plain-HTTP listener answers), or None: refused.
    address_challenge: str | None = None

    def __post_init__(self) -> None:
        if not self.domains:
            raise SettingsError("domains", "ACME needs at least one domain")
        if self.key_type not in KEY_TYPES:
            raise SettingsError("key_type", f"{self.key_type!r} is not one of {', '.join(KEY_TYPES)}")
        if self.challenge not in CHALLENGES:
            raise SettingsError("challenge", f"{self.challenge!r} is not one of {', '.join(CHALLENGES)}")
        wildcards = [d for d in self.domains if d.startswith("*.")]
        if wildcards and self.challenge != "dns-01" and self.directory != LOCAL_CA_DIRECTORY:
            raise SettingsError(
                "challenge",
                f"{wildcards[0]} needs CERTPROXY_CHALLENGE=dns-01 ({self.challenge} cannot prove a wildcard)",
            )
        if (
            self.challenge == "dns-01"
            and self.addresses
            and self.directory != LOCAL_CA_DIRECTORY
            and self.address_challenge not in ("http-01", "tls-alpn-01")
        ):
            raise SettingsError(
                "challenge",
                f"dns-01 cannot prove the IP address {self.addresses[0]} (RFC 8738): "
                "it needs the plain-HTTP listener (CERTPROXY_HTTP_PORT) for http-01, "
                "or a TLS route on port 443 for tls-alpn-01",
            )
        if self.challenge == "dns-01":
            if self.dns is None:
                raise SettingsError("dns_server", NEEDS_DNS)
            problem = self.dns.check()
            if problem:
                setting, _, reason = problem.partition(": ")
                raise SettingsError(setting, reason)
        if bool(self.eab_kid) != bool(self.eab_hmac_key):
            raise SettingsError("eab_kid", "external account binding needs both a key id and an HMAC key")
        try:
            name_for_domain(self.domains[0])
        except InvalidName:
            raise SettingsError(
                "domains", f"{self.domains[0]!r} cannot name the certificate's folder in the store"
            ) from None

    def challenge_for(self, identifier: str) -> str:
        """The challenge that proves ``identifier`` (an IP address never takes dns-01)."""
        if self.challenge == "dns-01" and canonical_ip(identifier) and self.address_challenge:
            return self.address_challenge
        return self.challenge

    @property
    def addresses(self) -> tuple[str, ...]:
        """The IP addresses among the identifiers (RFC 8738), in canonical form."""
        return tuple(ip for ip in (canonical_ip(d) for d in self.domains) if ip)

    def private_address_note(self) -> str | None:
        """One line for the start-up log when an address of the order is not public: a
        public CA cannot reach it to validate (the local CA is the answer there)."""
        private = [a for a in self.addresses if not ipaddress.ip_address(a).is_global]
        if not private or self.directory == LOCAL_CA_DIRECTORY:
            return None
        return (
            f"{private[0]} is not a public address: a public ACME CA cannot connect to it to "
            "validate it; for a registry on a private address, use the local CA "
            '(CERTPROXY_LOCAL_CA=1; docs/certificates.md, "A registry without a DNS name")'
        )

    @property
    def name(self) -> str:
        """The store name of the certificate (certbot's: the first domain)."""
        return name_for_domain(self.domains[0])
