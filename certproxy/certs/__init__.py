"""The certificate store: the ground floor of certproxy (imports nothing above it)."""

from .errors import InvalidName, LockBusy, PairError, StoreError, os_problem, os_reason
from .lock import IssuanceLock
from .pair import CertPair, load_pair, parse_pair
from .paths import canonical_ip, is_valid_token, name_for_domain
from .store import FileStore, Inventory, utcnow

__all__ = [
    "CertPair",
    "FileStore",
    "InvalidName",
    "Inventory",
    "IssuanceLock",
    "LockBusy",
    "PairError",
    "StoreError",
    "canonical_ip",
    "is_valid_token",
    "os_problem",
    "os_reason",
    "load_pair",
    "name_for_domain",
    "parse_pair",
    "utcnow",
]
