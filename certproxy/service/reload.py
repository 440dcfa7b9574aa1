"""Hot reload: keeping the served certificates in step with the store.

How this works: the store watcher (and a slow poll, for filesystems that send
no events) calls ``notify()``. Notifications only wake the debounce loop: it
waits until the store has been quiet for ``debounce`` seconds (but never more
than ``max_delay`` after the first event of a burst), then runs one reload.
A reload asks the store for its inventory *given what is served now* (so a
broken pair keeps its previous version in service), builds a new
``CertificateSet`` off the event loop, and swaps the one reference in
``TLSState``. Connections already established keep their TLS session; the
next handshake sees the new certificate. SIGHUP calls ``reload(fresh=True)``,
which rereads and rebuilds everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable

from ..certs import FileStore, Inventory, StoreError, utcnow
from ..certs.watcher import StoreWatcher
from ..proxy.tls import CertificateSet, TLSState
from .health import HealthState

log = logging.getLogger("certproxy.reload")

DEBOUNCE = 0.1
MAX_DELAY = 0.5


async def load_certificates(
    store: FileStore, domains: tuple[str, ...], current: CertificateSet | None = None, fresh: bool = False
) -> tuple[Inventory, CertificateSet]:
    """What the store holds to serve, validated and built into contexts (off the event loop).

    ``current`` is what is served now: a broken pair keeps its version in
    service and unchanged pairs keep their contexts (unless ``fresh``).
    Raises ``StoreError`` (and what building a context raises) and serves nothing.
    """
    previous = current.pairs if current is not None else ()
    inventory = await asyncio.to_thread(store.inventory, domains, previous=previous, fresh=fresh)
    new = await asyncio.to_thread(
        CertificateSet, inventory.primary, inventory.pairs, None if fresh else current
    )
    return inventory, new


class Reloader:
    def __init__(
        self,
        store: FileStore,
        domains: tuple[str, ...],
        tls: TLSState,
        health: HealthState,
        *,
        poll_interval: float = 30.0,
        debounce: float = DEBOUNCE,
        max_delay: float = MAX_DELAY,
    ) -> None:
        self.store = store
        self.domains = domains
        self.tls = tls
        self.health = health
        self.poll_interval = poll_interval
        self.debounce = debounce
        self.max_delay = max_delay
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._watcher: StoreWatcher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fingerprint: object = None
        self._incomplete: set[str] = set()  # pairs seen with a file missing at the last reload
        self.on_reload: list[Callable[[], None]] = []  # told after every reload (ACME follows the store)

    # -- notifications ---------------------------------------------------
    def notify(self) -> None:
        """Schedule a reload (call on the event loop's thread)."""
        self._wake.set()

    def _notify_from_thread(self, path: str) -> None:
        log.debug("store changed: %s", path)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    # -- lifecycle -------------------------------------------------------
    async def start(self, watch: bool = True, baseline: object = None) -> None:
        """Watch the store. ``baseline`` is the store's fingerprint taken before what is
        served was loaded: a pair written between that load and the watch is reloaded
        at once instead of waiting for the next change."""
        self._loop = asyncio.get_running_loop()
        current = await asyncio.to_thread(self.store.fingerprint)
        self._fingerprint = current if baseline is None else baseline
        if watch:
            self._watcher = StoreWatcher(self.store.root, self._notify_from_thread)
            await asyncio.to_thread(self._watcher.start)
        if baseline is not None and await asyncio.to_thread(self.store.fingerprint) != baseline:
            self.notify()
        self._tasks.append(asyncio.create_task(self._debounce_loop()))
        if self.poll_interval > 0:
            self._tasks.append(asyncio.create_task(self._poll_loop()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.stop)
            self._watcher = None

    async def _debounce_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            first = loop.time()
            while True:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.debounce)
                except TimeoutError:
                    break  # quiet for `debounce`: the burst is over
                if loop.time() - first >= self.max_delay:
                    self._wake.clear()
                    break  # a steady stream of events: reload anyway
            await self.reload("store changed")

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                current = await asyncio.to_thread(self.store.fingerprint)
            except OSError as exc:
                log.warning("cannot poll the store: %s", exc)
                continue
            if current != self._fingerprint:
                self.notify()

    # -- the reload itself -----------------------------------------------
    async def reload(self, reason: str, fresh: bool = False) -> bool:
        """Load, validate, build, swap. Returns True when the served set changed."""
        async with self._lock:
            self._fingerprint = await asyncio.to_thread(self.store.fingerprint)
            current = self.tls.current
            try:
                inventory, new = await load_certificates(self.store, self.domains, current, fresh)
            except (StoreError, OSError, ssl.SSLError, ValueError) as exc:
                self.health.last_reload_error = f"reload failed: {exc}"
                log.error("reload (%s) failed, still serving the previous certificates: %s", reason, exc)
                return False
            self._report(inventory.errors)
            self.health.store_errors = dict(inventory.errors)
            self.health.last_reload = utcnow()
            if inventory.errors:
                detail = "; ".join(f"{path}: {why}" for path, why in inventory.errors.items())
                kept = f" ({'; '.join(inventory.kept)})" if inventory.kept else ""
                self.health.last_reload_error = detail + kept
            else:
                self.health.last_reload_error = None
            for note in inventory.kept:
                log.warning("%s", note)
            changed = not new.same_as(current)
            if changed:
                self.tls.swap(new)
                self._log_changes(current, new, reason)
            else:
                log.debug("reload (%s): nothing changed", reason)
        for listener in self.on_reload:
            listener()
        return changed

    def _report(self, errors: dict[str, str]) -> None:
        """A pair with a file missing is most likely being written: said quietly and looked
        at again in a second; an error only if it is still so then."""
        incomplete = {path for path, why in errors.items() if why == "missing"}
        for path, why in errors.items():
            if path in incomplete and path not in self._incomplete:
                log.info("%s is missing (still being written?); looking again in a second", path)
            else:
                log.error("not serving %s: %s", path, why)
        if incomplete - self._incomplete and self._loop is not None:
            self._loop.call_later(1.0, self.notify)
        self._incomplete = incomplete

    @staticmethod
    def _log_changes(old: CertificateSet, new: CertificateSet, reason: str) -> None:
        for pair in new.pairs:
            if not any(pair is p for p in old.pairs):
                log.info(
                    "reload (%s): serving %s %s serial %s (%s), expires %s",
                    reason,
                    pair.kind,
                    pair.name,
                    pair.serial,
                    ", ".join(pair.domains),
                    pair.not_after.isoformat(),
                )
        for pair in old.pairs:
            if not any(p.name == pair.name and p.kind == pair.kind for p in new.pairs):
                log.info("reload (%s): no longer serving %s %s", reason, pair.kind, pair.name)
