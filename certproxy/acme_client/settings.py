"""What the ACME client needs to know, as one frozen value."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..certs import name_for_domain

KEY_TYPES = ("ec256", "ec384", "rsa2048", "rsa3072", "rsa4096")
LOCAL_CA_DIRECTORY = "certproxy-local-ca"  # the issuer the store's record names for the local CA


class SettingsError(ValueError):
    """A setting the ACME client cannot work with; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


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

    def __post_init__(self) -> None:
        if not self.domains:
            raise SettingsError("domains", "ACME needs at least one domain")
        if self.key_type not in KEY_TYPES:
            raise SettingsError("key_type", f"{self.key_type!r} is not one of {', '.join(KEY_TYPES)}")
        if bool(self.eab_kid) != bool(self.eab_hmac_key):
            raise SettingsError("eab_kid", "external account binding needs both a key id and an HMAC key")

    @property
    def name(self) -> str:
        """The store name of the certificate (certbot's: the first domain)."""
        return name_for_domain(self.domains[0])
