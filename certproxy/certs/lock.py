"""One issuer at a time, across processes sharing the store.

How this works: the lock of a name (``FileStore.lock(name)``) is a file
``STORE/locks/<name>.lock`` created with ``O_EXCL``, holding who took it.
``held()`` is the one way to hold it: it takes the lock (waiting for another
holder if asked to), touches it every ``ttl / 3`` seconds while the block
runs (the heartbeat), and releases it at the end. A lock file not touched for
``ttl`` seconds belongs to a dead process and is broken (renamed away first,
so two waiters cannot both break it and both win). This works on any
filesystem that honours ``O_EXCL``, including shared volumes, unlike
``flock``. The file work blocks: ``held()`` runs it in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from .errors import LockBusy, StoreError, os_reason

DEFAULT_TTL = 60.0
WAIT_POLL = 0.25  # seconds between two looks at a lock another issuer holds


class IssuanceLock:
    """The issuance lock of one certificate name (made by ``FileStore.lock``)."""

    def __init__(self, path: Path, ttl: float = DEFAULT_TTL) -> None:
        self.path = Path(path)
        self.ttl = ttl
        self._token = secrets.token_hex(8)
        self.taken = False  # by this object

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
        self.taken = True
        return True

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
        if self.taken:
            try:
                os.utime(self.path)
            except FileNotFoundError:
                self.taken = False

    def release(self) -> None:
        if not self.taken:
            return
        self.taken = False
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return
        if data.get("token") == self._token:
            self.path.unlink(missing_ok=True)

    @contextlib.asynccontextmanager
    async def held(
        self, wait: float = 0.0, waiting: Callable[[str], None] | None = None
    ) -> AsyncIterator[None]:
        """Hold the lock for the block, its heartbeat running meanwhile.

        When another live issuer holds it, wait up to ``wait`` seconds for it to
        go (``waiting`` is told the holder once, when the wait begins), then raise
        ``LockBusy``; a lock that cannot be taken at all raises ``StoreError``.
        """
        await self._acquire(wait, waiting)
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            yield
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await asyncio.to_thread(self.release)

    async def _acquire(self, wait: float, waiting: Callable[[str], None] | None) -> None:
        deadline = time.monotonic() + wait
        told = False
        while True:
            try:
                if await asyncio.to_thread(self.try_acquire):
                    return
            except OSError as exc:
                raise StoreError(f"{self.path}: cannot take the issuance lock: {os_reason(exc)}") from None
            holder = await asyncio.to_thread(self.holder)
            if time.monotonic() >= deadline:
                raise LockBusy(self.path, holder)
            if waiting is not None and not told:
                waiting(holder)
                told = True
            await asyncio.sleep(WAIT_POLL)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            await asyncio.to_thread(self.refresh)
