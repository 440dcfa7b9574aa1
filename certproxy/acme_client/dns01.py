"""DNS-01 (RFC 8555 §8.4) through RFC 2136 dynamic updates, signed with TSIG.

How this works: for each name, the TXT record ``_acme-challenge.<name>``
gets the challenge's value (a wildcard and its base name share one record
name, so one record set may hold two values). The zone to update is
``CERTPROXY_DNS_ZONE``, or found by asking the server for the name's SOA.
After the update, the primary server is asked until it answers every value
(the CA asks the authoritative servers, and the primary is where they all
come from); only then is the CA told to validate. The values are removed
afterwards, one by one (other TXT values there are left alone), whatever the
outcome. Blocking (dnspython): it runs in the issuer's worker thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import dns.exception
import dns.inet
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.tsig
import dns.tsigkeyring
import dns.update

from .errors import AcmeError
from .settings import DnsSettings

TTL = 60
TIMEOUT = 10.0  # seconds for one DNS exchange
VISIBLE_WAIT = 60.0  # seconds for the primary to answer what was just added


def record_name(identifier: str) -> str:
    """``_acme-challenge.<name>``: a wildcard's record is its base name's (RFC 8555 §8.4)."""
    base = identifier[2:] if identifier.startswith("*.") else identifier
    return f"_acme-challenge.{base.rstrip('.')}."


class Rfc2136:
    def __init__(self, settings: DnsSettings) -> None:
        self.s = settings
        assert settings.server is not None  # DnsSettings.check: a server or a provider
        self.address = self._address(settings.server)
        self.keyring = None
        if settings.tsig_key and settings.tsig_secret:
            self.keyring = dns.tsigkeyring.from_text({settings.tsig_key: settings.tsig_secret})
        self.added: list[tuple[str, str, str]] = []  # (zone, record, value)

    @staticmethod
    def _address(server: str) -> str:
        """The server's address: dnspython sends to addresses, not names."""
        try:
            dns.inet.af_for_address(server)
        except ValueError:
            try:
                return str(dns.resolver.resolve(server, "A", lifetime=TIMEOUT)[0])
            except dns.exception.DNSException as exc:
                raise AcmeError(f"dns-01: cannot resolve the DNS server {server}: {exc}") from None
        return server

    def _where(self) -> str:
        return f"{self.s.server}:{self.s.port}"

    def zone_for(self, record: str) -> str:
        """The zone holding ``record``: the configured one, or the server's SOA answer."""
        if self.s.zone:
            return self.s.zone.rstrip(".") + "."
        query = dns.message.make_query(record, dns.rdatatype.SOA)
        response = self._exchange(query, "asking for the zone of " + record)
        for rrset in (*response.answer, *response.authority):
            if rrset.rdtype == dns.rdatatype.SOA:
                return rrset.name.to_text()
        raise AcmeError(
            f"dns-01: {self._where()} names no zone for {record} (is it authoritative for it? "
            "else set CERTPROXY_DNS_ZONE)"
        )

    def _exchange(self, message: dns.message.Message, what: str) -> dns.message.Message:
        try:
            response = dns.query.tcp(message, self.address, timeout=TIMEOUT, port=self.s.port)
        except dns.tsig.PeerBadKey:
            raise AcmeError(
                f"dns-01: {self._where()} does not know the TSIG key {self.s.tsig_key!r} ({what})",
                permanent=True,
            ) from None
        except (dns.tsig.PeerBadSignature, dns.tsig.BadSignature):
            raise AcmeError(
                f"dns-01: {self._where()} refused the TSIG signature of key {self.s.tsig_key!r}: "
                f"the secret (CERTPROXY_DNS_TSIG_SECRET) or the algorithm is wrong ({what})",
                permanent=True,
            ) from None
        except (dns.tsig.PeerBadTime, dns.tsig.BadTime):
            raise AcmeError(f"dns-01: {self._where()} says our clocks differ too much ({what})") from None
        except (OSError, dns.exception.DNSException) as exc:
            raise AcmeError(f"dns-01: {self._where()}: {exc or type(exc).__name__} ({what})") from None
        return response

    def _update(self, zone: str, build: Iterable[tuple[str, str, str]], what: str) -> None:
        update = dns.update.UpdateMessage(
            zone,
            keyring=self.keyring,
            keyname=dns.name.from_text(self.s.tsig_key) if self.s.tsig_key else None,
            keyalgorithm=dns.name.from_text(self.s.tsig_algorithm),
        )
        for op, record, value in build:
            if op == "add":
                update.add(record, TTL, "TXT", f'"{value}"')
            else:
                update.delete(record, "TXT", f'"{value}"')
        response = self._exchange(update, what)
        rcode = response.rcode()
        if rcode != dns.rcode.NOERROR:
            hint = {
                dns.rcode.REFUSED: "the server does not allow this key (or no key) to update the zone",
                dns.rcode.NOTAUTH: "the server is not authoritative for the zone, or the TSIG key is wrong",
                dns.rcode.NOTZONE: "the name is not in the zone",
            }.get(rcode, "")
            raise AcmeError(
                f"dns-01: {self._where()} answered {dns.rcode.to_text(rcode)} to the update of zone "
                f"{zone}{': ' + hint if hint else ''} ({what})",
                permanent=rcode in (dns.rcode.REFUSED, dns.rcode.NOTAUTH, dns.rcode.NOTZONE),
            )

    def add(self, record: str, value: str) -> None:
        zone = self.zone_for(record)
        self._update(zone, [("add", record, value)], f"adding TXT {record}")
        self.added.append((zone, record, value))

    def wait_visible(self, timeout: float = VISIBLE_WAIT) -> None:
        """Until the primary answers every value added, or AcmeError after ``timeout``."""
        deadline = time.monotonic() + timeout
        pending = {(record, value) for _, record, value in self.added}
        while pending:
            for record in {r for r, _ in pending}:
                response = self._exchange(
                    dns.message.make_query(record, dns.rdatatype.TXT), "checking " + record
                )
                seen = {
                    b"".join(rd.strings).decode()
                    for rrset in response.answer
                    if rrset.rdtype == dns.rdatatype.TXT
                    for rd in rrset
                }
                pending -= {(record, v) for v in seen}
            if pending and time.monotonic() > deadline:
                missing = ", ".join(sorted(r for r, _ in pending))
                raise AcmeError(f"dns-01: {self._where()} does not answer the TXT record {missing} yet")
            if pending:
                time.sleep(0.5)

    def _remove(self, zone: str, record: str, value: str) -> None:
        self._update(zone, [("delete", record, value)], f"removing TXT {record}")

    def remove_all(self) -> list[str]:
        """Remove every value added; the problems met, as lines (never raises)."""
        problems = []
        for zone, record, value in self.added:
            try:
                self._remove(zone, record, value)
            except AcmeError as exc:
                problems.append(str(exc))
        self.added.clear()
        return problems


class Lexicon(Rfc2136):
    """The same steps through a dns-lexicon provider's API (``CERTPROXY_DNS_PROVIDER``, with
    the provider's own ``LEXICON_*`` credentials). The visibility check asks
    ``CERTPROXY_DNS_SERVER`` when set, else the zone's first name server."""

    def __init__(self, settings: DnsSettings) -> None:
        self.s = settings
        self.keyring = None
        self.address = self._address(settings.server) if settings.server else ""
        self.added = []

    def _where(self) -> str:
        return f"{self.s.server}:{self.s.port}" if self.s.server else f"provider {self.s.provider}"

    def _call(self, record: str, what: str, action: Callable[[Any], object]) -> None:
        try:
            from lexicon.client import Client
            from lexicon.config import ConfigResolver
        except ImportError:
            raise AcmeError(
                "dns-01: CERTPROXY_DNS_PROVIDER needs dns-lexicon: pip install 'certproxy[dns]'",
                permanent=True,
            ) from None
        domain = (self.s.zone or record.removeprefix("_acme-challenge.")).rstrip(".")
        resolver = ConfigResolver()  # type: ignore[no-untyped-call]
        config = resolver.with_env().with_dict({"provider_name": self.s.provider, "domain": domain})
        try:
            with Client(config) as operations:
                action(operations)
        except Exception as exc:  # lexicon and its providers raise anything; one line each
            raise AcmeError(
                f"dns-01: provider {self.s.provider}: {what} TXT {record}: {type(exc).__name__}: {exc}"
            ) from None

    def add(self, record: str, value: str) -> None:
        self._call(record, "adding", lambda ops: ops.create_record("TXT", record.rstrip("."), value))
        self.added.append(("", record, value))

    def wait_visible(self, timeout: float = VISIBLE_WAIT) -> None:
        if not self.address:
            self.address = self._first_nameserver(self.added[0][1])
            self.s = replace(self.s, port=53)
        super().wait_visible(timeout)

    def _first_nameserver(self, record: str) -> str:
        try:
            zone = dns.resolver.zone_for_name(record, lifetime=TIMEOUT)
            ns = dns.resolver.resolve(zone, "NS", lifetime=TIMEOUT)[0]
            return str(dns.resolver.resolve(str(ns), "A", lifetime=TIMEOUT)[0])
        except dns.exception.DNSException as exc:
            raise AcmeError(
                f"dns-01: cannot find the name server of {record} to check it ({exc}); "
                "set CERTPROXY_DNS_SERVER"
            ) from None

    def _remove(self, zone: str, record: str, value: str) -> None:
        self._call(record, "removing", lambda ops: ops.delete_record(None, "TXT", record.rstrip("."), value))


def updater(settings: DnsSettings) -> Rfc2136:
    """The way to the zone these settings name: a lexicon provider, or RFC 2136."""
    return Lexicon(settings) if settings.provider else Rfc2136(settings)
