"""TLS contexts and certificate selection.

How this works: each validated ``CertPair`` becomes one ``ssl.SSLContext``.
A ``CertificateSet`` is an immutable index of those contexts by name (exact
names, then one-label wildcards, then the primary). Each listener gets one
base context whose SNI callback asks ``TLSState.current`` for the context of
the requested name and switches the connection to it: a dictionary lookup, no
disk, no network. A client that connects to an IP address sends no SNI: the
address it connected to (the connection's local address, kept by the
transport) stands for the name, so a certificate for that address is chosen,
and the primary only when none covers it. A reload builds a complete new ``CertificateSet`` and swaps
the single ``current`` reference; handshakes already done keep their context.

Policy is Mozilla's "intermediate": TLS 1.2 and 1.3 only, forward-secret AEAD
ciphers, no compression, no renegotiation, ALPN ``http/1.1``.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from collections.abc import Iterable

from ..certs import CertPair, canonical_ip

log = logging.getLogger("certproxy.tls")

INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)


def _policy_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(INTERMEDIATE_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def load_pem_into(ctx: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """Load PEM bytes into ``ctx`` without writing the key to a disk file.

    ``ssl`` only loads chains from paths, so the bytes go into anonymous
    memory files (``memfd``) opened through ``/proc/self/fd``. Where that is
    not available, a private temporary folder (mode 0700) is used.
    """
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fds = []
        try:
            for data in (chain_pem, key_pem):
                fd = os.memfd_create("certproxy-pem", os.MFD_CLOEXEC)
                fds.append(fd)
                os.write(fd, data)
            ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="certproxy-") as tmp:  # pragma: no cover
        chain_path, key_path = os.path.join(tmp, "chain.pem"), os.path.join(tmp, "key.pem")
        for path, data in ((chain_path, chain_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        ctx.load_cert_chain(chain_path, key_path)


def context_for(pair: CertPair) -> ssl.SSLContext:
    ctx = _policy_context()
    load_pem_into(ctx, pair.chain_pem, pair.key_pem)
    return ctx


def normalize_server_name(name: str | None) -> str | None:
    if not name:
        return None
    name = name.lower().rstrip(".")
    if name[-1:].isalpha() and ":" not in name:
        # Neither an IPv6 address nor an IPv4 one (which ends in a digit): the common
        # case, where parsing the name as an address would cost two raised errors.
        return name
    return canonical_ip(name) or name  # some clients send the address they dialled


def address_name(host: str | None) -> str | None:
    """The name a local socket address stands for: its canonical IP text, an
    IPv4-mapped IPv6 address as IPv4, without a scope."""
    if not host:
        return None
    host = host.partition("%")[0].lower()
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return canonical_ip(host)


class CertificateSet:
    """Immutable index: server name -> (pair, context)."""

    def __init__(
        self, primary: CertPair, pairs: Iterable[CertPair], previous: CertificateSet | None = None
    ) -> None:
        self.primary = primary
        ordered = [primary] + [p for p in pairs if p is not primary]
        self.pairs: tuple[CertPair, ...] = tuple(ordered)
        self._contexts: dict[int, ssl.SSLContext] = {}
        for pair in ordered:
            # The very same pair object as before keeps its context (and its
            # session-ticket keys); a changed pair gets a new one.
            reused = previous._context_of(pair) if previous is not None else None
            self._contexts[id(pair)] = reused or context_for(pair)
        self._exact: dict[str, CertPair] = {}
        self._wildcard: dict[str, CertPair] = {}
        for pair in ordered:  # the primary wins a name several pairs claim
            for domain in pair.domains:
                table = self._wildcard if domain.startswith("*.") else self._exact
                key = domain[2:] if domain.startswith("*.") else domain
                table.setdefault(key, pair)
        # Whether any certificate is for an IP address: only then does a handshake
        # without SNI need the address the client connected to.
        self.by_address = any(canonical_ip(name) for name in self._exact)

    def _context_of(self, pair: CertPair) -> ssl.SSLContext | None:
        if any(pair is p for p in self.pairs):
            return self._contexts[id(pair)]
        return None

    def same_as(self, other: CertificateSet) -> bool:
        """True when ``other`` serves exactly the same pair objects."""
        return (
            self.primary is other.primary
            and len(self.pairs) == len(other.pairs)
            and all(a is b for a, b in zip(self.pairs, other.pairs, strict=True))
        )

    def select_pair(self, server_name: str | None, local_address: str | None = None) -> CertPair:
        """The pair for ``server_name``; without one, the pair for ``local_address`` (the
        address the client connected to), else the primary."""
        name = normalize_server_name(server_name)
        if name is None:
            by_address = self._exact.get(local_address) if local_address else None
            return by_address or self.primary
        pair = self._exact.get(name)
        if pair is not None:
            return pair
        _, _, parent = name.partition(".")
        return self._wildcard.get(parent, self.primary) if parent else self.primary

    def select(self, server_name: str | None, local_address: str | None = None) -> ssl.SSLContext:
        return self._contexts[id(self.select_pair(server_name, local_address))]


class TLSState:
    """The certificates in service: one reference, swapped whole on reload."""

    def __init__(self, current: CertificateSet) -> None:
        self.current = current

    def swap(self, new: CertificateSet) -> CertificateSet:
        old, self.current = self.current, new
        return old

    def _sni_callback(self, sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        current = self.current
        local = None
        if not server_name and current.by_address:
            # certproxy's transport hands its HandshakeOwner (owner.py) here, which knows the address.
            local = getattr(sslobj, "local_address", None)
        sslobj.context = current.select(server_name, local)

    def listener_context(self) -> ssl.SSLContext:
        """A base context for one listener; every handshake is pointed at ``current``."""
        ctx = _policy_context()
        load_pem_into(ctx, self.current.primary.chain_pem, self.current.primary.key_pem)
        ctx.sni_callback = self._sni_callback
        return ctx
