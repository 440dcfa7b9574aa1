"""Getting certificates from an ACME CA: the middle floor (imports certs, never proxy)."""

from .client import AcmeIssuer, ari_cert_id
from .errors import AcmeError
from .settings import AcmeSettings

__all__ = ["AcmeError", "AcmeIssuer", "AcmeSettings", "ari_cert_id"]
