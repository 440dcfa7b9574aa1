"""Getting certificates from an ACME CA: the middle floor (imports certs, never proxy)."""

from typing import Any

from .ari import ari_cert_id
from .errors import AcmeError
from .settings import AcmeSettings


def __getattr__(name: str) -> Any:
    # The client (and with it the acme library, josepy and requests) loads on first use.
    if name == "AcmeIssuer":
        from .client import AcmeIssuer

        return AcmeIssuer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AcmeError", "AcmeIssuer", "AcmeSettings", "ari_cert_id"]
