"""Errors of the certificate store.

A shallow tree: every error the store raises is a ``StoreError``; the ones a
caller reacts to differently carry the data it needs (the file and the reason).
"""

from __future__ import annotations

from pathlib import Path


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
