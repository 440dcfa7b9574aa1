"""What an issuer is, and which one the settings name, for ``serve`` and ``renew`` alike.

``Issuer`` is what the maintenance loop needs from a CA. ``make_issuer``
is the one place that chooses it: the local CA when the settings name it
(``LOCAL_CA_DIRECTORY``), else the ACME client, either in a child process
per call (a long-running server: the ``acme`` library, ``requests`` and
``dnspython`` never load into the serving process) or in this process (a
one-off run that prints its progress as it goes). The clients are imported
only once chosen.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Protocol

from ..certs import FileStore
from .settings import LOCAL_CA_DIRECTORY, AcmeSettings

log = logging.getLogger("certproxy.acme")


class Issuer(Protocol):
    """What the manager needs from a CA (``AcmeIssuer``, or a fake in unit tests)."""

    account_uri: str | None

    def issue(
        self, domains: tuple[str, ...], *, replaces: str | None = None, progress: Callable[[str], None] = ...
    ) -> tuple[bytes, bytes]: ...

    def offers_ari(self) -> bool: ...

    def renewal_info(self, cert_pem: bytes) -> tuple[dt.datetime | None, dt.datetime]: ...


def make_issuer(
    store: FileStore,
    settings: AcmeSettings,
    *,
    in_child: bool,
    progress: Callable[[str], None] = log.info,
) -> Issuer:
    """The issuer of ``settings``; ``in_child`` runs the ACME client in a process of its
    own per call (``certproxy serve``), else here with ``progress`` (``certproxy renew``)."""
    if settings.directory == LOCAL_CA_DIRECTORY:
        from .local import LocalCAIssuer

        return LocalCAIssuer(store, settings)
    if in_child:
        from .child import ChildIssuer

        return ChildIssuer(store, settings)
    from .client import AcmeIssuer

    return AcmeIssuer(store, settings, progress=progress)
