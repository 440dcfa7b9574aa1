"""One solver per challenge type: the answer put where the CA looks, waited for, taken away.

How this works: ``AcmeIssuer.issue`` makes one solver per order
(``solver_for``). For each name that still needs proof it calls ``present``
with the challenge the CA offers of the solver's type and its validation
value; then ``wait_visible`` once, before the CA is told to validate; and
``clean_up`` in a ``finally``, whatever happened. HTTP-01 and TLS-ALPN-01
answers go into the store, where the listener of any process sharing it
answers the CA, so they are visible once written. DNS-01 answers go to the
DNS server through ``dns01.py`` (the back end: RFC 2136 or a dns-lexicon
provider) and are visible when the primary answers them. Everything here
blocks: it runs in the issuer's worker thread.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from acme import challenges

from ..certs import FileStore
from ..certs.alpn import sni_for, validation_certificate
from .errors import AcmeError
from .settings import NEEDS_DNS, AcmeSettings, DnsSettings
from .tlsalpn import TLSALPN01

if TYPE_CHECKING:  # dnspython loads with the first dns-01 answer only
    from .dns01 import Rfc2136

log = logging.getLogger("certproxy.acme")


class Solver(Protocol):
    """Proves control of names for one challenge type."""

    challenge: type[challenges.KeyAuthorizationChallenge]  # the type it answers

    def present(self, identifier: str, chall: challenges.Challenge, validation: str) -> None:
        """Put the answer for ``identifier`` where the CA will look for it."""

    def wait_visible(self) -> None:
        """Return once every answer presented can be seen by the CA (AcmeError if never)."""

    def clean_up(self) -> None:
        """Take away every answer presented (problems are logged, never raised)."""


class Http01:
    """``STORE/challenges/<token>``, served by the plain listener of every process."""

    challenge = challenges.HTTP01

    def __init__(self, store: FileStore) -> None:
        self.store = store
        self.tokens: list[str] = []

    def present(self, identifier: str, chall: challenges.Challenge, validation: str) -> None:
        token = str(chall.encode("token"))
        self.store.write_challenge(token, validation.encode())
        self.tokens.append(token)

    def wait_visible(self) -> None:
        """Visible once written: every listener reads the store."""

    def clean_up(self) -> None:
        for token in self.tokens:
            self.store.remove_challenge(token)
        self.tokens.clear()


class TlsAlpn01:
    """A validation certificate per name in the store, answered on every TLS listener."""

    challenge = TLSALPN01

    def __init__(self, store: FileStore) -> None:
        self.store = store
        self.names: list[str] = []

    def present(self, identifier: str, chall: challenges.Challenge, validation: str) -> None:
        pem = validation_certificate(identifier, validation, dt.datetime.now(dt.UTC))
        # Kept under the name the CA's ClientHello carries: for an IP address, its
        # reverse-DNS name (RFC 8738, section 6).
        name = sni_for(identifier)
        self.store.write_alpn_challenge(name, pem)
        self.names.append(name)

    def wait_visible(self) -> None:
        """Visible once written: every TLS listener reads the store."""

    def clean_up(self) -> None:
        for name in self.names:
            self.store.remove_alpn_challenge(name)
        self.names.clear()


class Dns01:
    """A TXT record per name, through the DNS back end the settings name."""

    challenge = challenges.DNS01

    def __init__(self, settings: DnsSettings, progress: Callable[[str], None]) -> None:
        self.settings = settings
        self.progress = progress
        self._updater: Rfc2136 | None = None  # made with the first answer

    def present(self, identifier: str, chall: challenges.Challenge, validation: str) -> None:
        from .dns01 import record_name, updater

        if self._updater is None:
            self._updater = updater(self.settings)
        record = record_name(identifier)
        self._updater.add(record, validation)
        self.progress(f"challenge {identifier}: TXT {record} added")

    def wait_visible(self) -> None:
        if self._updater is not None and self._updater.added:
            self._updater.wait_visible()
            self.progress("dns-01: the DNS server answers every TXT record")

    def clean_up(self) -> None:
        if self._updater is not None:
            for problem in self._updater.remove_all():
                log.warning("%s", problem)


def solver_for(
    settings: AcmeSettings, store: FileStore, progress: Callable[[str], None], challenge: str | None = None
) -> Solver:
    """The solver of ``challenge`` (by default the one the settings name); one per order."""
    challenge = challenge or settings.challenge
    if challenge == "dns-01":
        if settings.dns is None:  # AcmeSettings refuses this; the type does not know it
            raise AcmeError(f"dns-01: {NEEDS_DNS}", permanent=True)
        return Dns01(settings.dns, progress)
    if challenge == "tls-alpn-01":
        return TlsAlpn01(store)
    return Http01(store)
