"""Errors of the certificate store.

A shallow tree: every error the store raises is a ``StoreError``; the ones a
caller reacts to differently carry the data it needs (the file and the reason).
"""

from __future__ import annotations

import errno
from pathlib import Path


def os_reason(exc: OSError) -> str:
    """One short reason for a filesystem error ("disk full", "Read-only file system", ...)."""
    if exc.errno == errno.ENOSPC:
        return "disk full"
    return exc.strerror or str(exc)


def os_problem(exc: OSError, path: object) -> str:
    """``FILE: reason`` for a filesystem error: the file the system named, else ``path``."""
    return f"{exc.filename or path}: {os_reason(exc)}"


class StoreError(Exception):
    """The store cannot do what was asked (layout missing, not writable, ...)."""


class InvalidName(StoreError, ValueError):
    """A certificate name or challenge token that could escape its folder."""


class PairError(StoreError):
    """A certificate/key pair that cannot be served.

    ``path`` names the file at fault (or the pair's folder), ``reason`` is one
    line for the log and ``/healthz``.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class LockBusy(StoreError):
    """Another live issuer holds a name's issuance lock: ``path`` is the lock,
    ``holder`` who holds it (``pid N on HOST``)."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path}: held by {holder}")
        self.path = path
        self.holder = holder
