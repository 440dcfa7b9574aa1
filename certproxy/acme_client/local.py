"""The local CA as an issuer of the maintenance loop (``CERTPROXY_LOCAL_CA=1``).

The manager treats it as it treats an ACME CA: the same due times, lock,
store writes, status and metrics. ``issue`` runs under the issuance lock, so
the CA is made by exactly one process even before ``ensure_ca``'s own
guarantee; no network is involved, so it has no renewal information to offer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from ..certs import FileStore, StoreError, utcnow
from ..certs.keys import new_private_key
from ..certs.local_ca import issue_leaf
from .errors import AcmeError
from .settings import AcmeSettings


class LocalCAIssuer:
    account_uri: str | None = None

    def __init__(self, store: FileStore, settings: AcmeSettings) -> None:
        self.store = store
        self.settings = settings

    def issue(
        self,
        domains: tuple[str, ...],
        *,
        replaces: str | None = None,
        progress: Callable[[str], None] = lambda _: None,
    ) -> tuple[bytes, bytes]:
        now = utcnow()
        try:
            ca, made = self.store.ensure_local_ca(domains, now)
        except StoreError as exc:
            raise AcmeError(str(exc)) from None
        if made:
            progress(f"local CA: made {ca.folder} ({ca.cert.subject.rfc4514_string()})")
        refusal = ca.refusal(domains)
        if refusal:
            raise AcmeError(refusal, permanent=True)
        key_pem = new_private_key(self.settings.key_type)
        chain = issue_leaf(ca, domains, key_pem, now)
        progress(f"local CA: issued a certificate for {', '.join(domains)}")
        return chain, key_pem

    def offers_ari(self) -> bool:
        return False

    def renewal_info(self, cert_pem: bytes) -> tuple[dt.datetime | None, dt.datetime]:
        raise AcmeError("the local CA has no renewal information")
