"""One issuer at a time, across processes sharing the store.

How this works: the lock is a file ``STORE/locks/<name>.lock`` created with
``O_EXCL``, holding who took it. Its holder touches it every ``ttl / 3``
seconds; a lock file not touched for ``ttl`` seconds belongs to a dead
process and is broken (renamed away first, so two waiters cannot both break
it and both win). This works on any filesystem that honours ``O_EXCL``,
including shared volumes, unlike ``flock``.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from pathlib import Path

DEFAULT_TTL = 60.0


class IssuanceLock:
    def __init__(self, path: Path, ttl: float = DEFAULT_TTL) -> None:
        self.path = Path(path)  # StorePaths.lock(name)
        self.ttl = ttl
        self._token = secrets.token_hex(8)
        self.held = False

    def _owner(self) -> bytes:
        return json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "token": self._token}
        ).encode()

    def try_acquire(self) -> bool:
        """Take the lock if it is free or stale; never waits."""
        if self._create():
            return True
        if self._stale():
            self._break()
            return self._create()
        return False

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(self._owner())
        except OSError:
            self.path.unlink(missing_ok=True)  # never leave an empty lock behind (disk full)
            raise
        self.held = True
        return True

    def busy(self) -> bool:
        """Whether some live issuer holds the lock now (a stale lock does not count)."""
        return self.path.exists() and not self._stale()

    def _stale(self) -> bool:
        try:
            return time.time() - os.stat(self.path).st_mtime > self.ttl
        except FileNotFoundError:
            return True

    def _break(self) -> None:
        aside = self.path.with_name(f"{self.path.name}.stale-{secrets.token_hex(4)}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        aside.unlink(missing_ok=True)

    def holder(self) -> str:
        try:
            data = json.loads(self.path.read_bytes())
            return f"pid {data.get('pid')} on {data.get('host')}"
        except (OSError, ValueError):
            return "an unknown process"

    def refresh(self) -> None:
        if self.held:
            try:
                os.utime(self.path)
            except FileNotFoundError:
                self.held = False

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return
        if data.get("token") == self._token:
            self.path.unlink(missing_ok=True)
