"""The certificate maintenance loop: check, lock, check again, issue.

How this works: ``maintain()`` looks at the pair in ``live/<name>`` and its
record (which directory issued it, when), asks the CA's renewal information
when the directory offers it, and computes when renewal is due (pure
functions in ``policy.py``). When it is due and no failure backoff is
pending, it takes the store's issuance lock (so a CLI run and several
replicas never order at once), checks again under the lock (another process
may have just renewed), orders, and writes the new pair into the store.
From there the hot-reload path serves it: nothing here talks to the proxy.

``run()`` repeats ``maintain()`` at the time it says is next: the renewal
time, the next renewal-information poll, the next retry after a failure, or
twelve hours (less for short-lived certificates: ``policy.idle_limit``),
whichever is first. Blocking ``acme`` calls run in daemon
threads, so a slow CA never holds up the event loop or the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..certs import CertPair, FileStore, LockBusy, PairError, StoreError, utcnow
from . import policy
from .ari import ari_cert_id
from .errors import AcmeError
from .issuers import Issuer
from .settings import AcmeSettings

log = logging.getLogger("certproxy.acme")

MAX_SLEEP = policy.MAX_IDLE
LOCK_BUSY_RETRY = 15.0
T = TypeVar("T")


async def in_daemon_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking ``fn`` in a daemon thread (never holds up the process exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def done(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def target() -> None:
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the awaiting task
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(done, False, exc)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(done, True, result)

    thread = threading.Thread(target=target, name="certproxy-acme", daemon=True)
    # Thread.start waits until the new thread runs: on a loaded machine, a while. Not on the loop.
    await asyncio.to_thread(thread.start)
    return await future


@dataclass
class RenewalStatus:
    name: str
    domains: tuple[str, ...]
    directory: str
    next_renewal: dt.datetime | None = None
    reason: str | None = None
    last_attempt: dt.datetime | None = None
    last_success: dt.datetime | None = None
    last_error: str | None = None
    next_attempt: dt.datetime | None = None
    failures: int = 0  # consecutive
    attempts: int = 0
    failures_total: int = 0
    blocked: bool = False  # an error that retrying cannot fix
    ari: bool | None = None

    def to_json(self) -> dict[str, Any]:
        def iso(t: dt.datetime | None) -> str | None:
            return t.isoformat() if t else None

        return {
            "name": self.name,
            "domains": list(self.domains),
            "directory": self.directory,
            "next_renewal": iso(self.next_renewal),
            "reason": self.reason,
            "last_attempt": iso(self.last_attempt),
            "last_success": iso(self.last_success),
            "last_error": self.last_error,
            "next_attempt": iso(self.next_attempt),
            "failures": self.failures,
            "blocked": self.blocked,
            "ari": self.ari,
        }


@dataclass(frozen=True)
class Decision:
    due_at: dt.datetime
    reason: str
    pair: CertPair | None
    replaces: str | None
    next_check: dt.datetime
    issued_at: dt.datetime | None = None  # when the pair in live/ was issued (by any replica)


class CertManager:
    def __init__(
        self,
        store: FileStore,
        settings: AcmeSettings,
        issuer: Issuer,
        *,
        progress: Callable[[str], None] | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.settings = settings
        self.issuer = issuer
        self.progress = progress or log.info
        self.clock = clock
        self.jitter = jitter
        self.status = RenewalStatus(settings.name, settings.domains, settings.directory)
        self.orders = 0
        self.lock_busy: LockBusy | None = None  # set while another issuer holds the lock
        self._ari_until: dt.datetime | None = None
        self._ari_time: dt.datetime | None = None
        self._ari_serial: str | None = None
        self._wake = asyncio.Event()
        self._said: tuple[dt.datetime, str] | None = None
        self.lifetime: dt.timedelta | None = None  # of the certificate in service, once seen

    # -- the decision (blocking: runs in a thread) ------------------------
    def _current(self) -> tuple[CertPair | None, str | None]:
        try:
            return self.store.load_live(self.settings.name, self.clock()), None
        except PairError as exc:
            return None, f"no valid certificate in live/{self.settings.name} ({exc.reason})"
        except StoreError as exc:
            return None, str(exc)

    def _must_replace(self, pair: CertPair | None, missing: str | None) -> str | None:
        if pair is None:
            return missing or "no certificate yet"
        uncovered = [d for d in self.settings.domains if not pair.covers(d)]
        if uncovered:
            return f"certificate does not cover {', '.join(uncovered)}"
        meta = self.store.live_meta(self.settings.name)
        directory = meta.get("directory")
        if directory and directory != self.settings.directory:
            return f"certificate comes from another ACME directory ({directory})"
        if pair.issuer.startswith("(STAGING)") and "staging" not in self.settings.directory:
            return "certificate comes from Let's Encrypt's staging CA"
        return None

    def decide(self) -> Decision:
        now = self.clock()
        pair, missing = self._current()
        replace_reason = self._must_replace(pair, missing)
        ari_time = None
        replaces = None
        if pair is not None:
            self.lifetime = pair.not_after - pair.not_before
        elif self.lifetime is None and self.settings.addresses:
            # no certificate to read it from (the first order, or an expired one after a
            # restart): a public CA's certificate for an address is short-lived (160 hours)
            self.lifetime = policy.SHORTLIVED
        next_check = now + policy.idle_limit(self.lifetime)
        if pair is not None and replace_reason is None:
            ari_time, ari_next = self._renewal_info(pair, now)
            if ari_next is not None:
                next_check = min(next_check, ari_next)
            if self.status.ari:
                leaf = x509.load_pem_x509_certificate(pair.chain_pem)
                with contextlib.suppress(x509.ExtensionNotFound, ValueError):
                    replaces = ari_cert_id(leaf)
        meta = self.store.live_meta(self.settings.name)
        issued_at = _parse_time(meta.get("issued_at")) if pair is not None else None
        # The re-order guard holds back the same request only: a changed configuration
        # (another directory, other names) is a new request and goes at once.
        recorded = meta.get("domains")
        names = sorted(str(d) for d in recorded) if isinstance(recorded, list) else []
        same_request = meta.get("directory") == self.settings.directory and names == sorted(
            self.settings.domains
        )
        last_order = issued_at if replace_reason is None or same_request else None
        reason = replace_reason or ("the CA's renewal window" if ari_time else "last part of the lifetime")
        if pair is None:
            due = now
        else:
            due = policy.renewal_time(
                pair.not_before,
                pair.not_after,
                ari_time=ari_time,
                must_replace=replace_reason is not None,
                last_order=last_order,
                spread=self.store.renewal_spread(),
                now=now,
            )
            if replace_reason is not None and due > now and last_order is not None:
                reason += (
                    f"; held back until {due.isoformat(timespec='seconds')}: the same "
                    f"certificate was ordered at {last_order.isoformat(timespec='seconds')}"
                )
        return Decision(due, reason, pair, replaces, next_check, issued_at)

    def _renewal_info(
        self, pair: CertPair, now: dt.datetime
    ) -> tuple[dt.datetime | None, dt.datetime | None]:
        """ARI for the pair, fetched at most as often as the CA asks (about twice a day)."""
        try:
            self.status.ari = self.issuer.offers_ari()
        except AcmeError as exc:
            log.warning("cannot reach the ACME directory for renewal information: %s", exc)
            return None, None
        if not self.status.ari:
            return None, None
        if self._ari_serial == pair.serial and self._ari_until and now < self._ari_until:
            return self._ari_time, self._ari_until
        leaf_pem = x509.load_pem_x509_certificate(pair.chain_pem).public_bytes(Encoding.PEM)
        try:
            when, next_poll = self.issuer.renewal_info(leaf_pem)
        except AcmeError as exc:
            log.warning("renewal information: %s", exc)
            return None, now + min(dt.timedelta(hours=1), policy.idle_limit(self.lifetime))
        # The CA's Retry-After is honoured (RFC 9773), within five minutes and twelve hours;
        # the window itself wakes the loop (renewal_time), however short the lifetime.
        next_poll = min(max(next_poll, now + dt.timedelta(minutes=5)), now + MAX_SLEEP)
        self._ari_serial, self._ari_time, self._ari_until = pair.serial, when, next_poll
        return when, next_poll

    # -- one round ---------------------------------------------------------
    async def maintain(
        self, force: bool = False, fresh_since: dt.datetime | None = None, lock_wait: float = 0.0
    ) -> dt.datetime:
        """Renew if due (or forced); returns when to look again.

        ``fresh_since``: a forced order is satisfied by a certificate issued at or after
        this moment (another process sharing the store ordered it meanwhile).
        ``lock_wait``: seconds to wait for another issuer holding the lock (then check
        again); without it a busy lock means "look again soon"."""
        decision = await in_daemon_thread(self.decide)
        now = self.clock()
        self._follow(decision, now)
        if not force:
            if self.status.blocked:
                return now + MAX_SLEEP
            if decision.due_at > now:
                return min(decision.due_at, decision.next_check)
            if self.status.next_attempt and self.status.next_attempt > now:
                return self.status.next_attempt
        waited: list[str] = []
        async with contextlib.AsyncExitStack() as stack:
            try:
                lock = self.store.lock(self.settings.name)
                await stack.enter_async_context(
                    lock.held(lock_wait, waiting=lambda h: self._waiting(h, waited))
                )
            except LockBusy as busy:
                self.lock_busy = busy
                if not lock_wait:
                    self.progress(
                        f"lock: another issuer ({busy.holder}) holds {busy.path}; checking again soon"
                    )
                return self.clock() + dt.timedelta(seconds=LOCK_BUSY_RETRY)
            except StoreError as exc:
                return self._failed(exc)
            self.lock_busy = None
            return await self._under_lock(force, fresh_since, bool(waited))

    def _waiting(self, holder: str, waited: list[str]) -> None:
        waited.append(holder)
        self.progress(f"{self.settings.name}: {holder} is ordering now; waiting for its outcome")

    async def _under_lock(self, force: bool, fresh_since: dt.datetime | None, waited: bool) -> dt.datetime:
        # Check again under the lock: another process may have just renewed.
        decision = await in_daemon_thread(self.decide)
        fresh = (
            force
            and fresh_since is not None
            and decision.issued_at is not None
            and decision.issued_at >= fresh_since
        )
        if (not force and decision.due_at > self.clock()) or fresh:
            self.progress(f"{self.settings.name}: renewed meanwhile by another process")
            self._follow(decision, self.clock())
            return min(decision.due_at, decision.next_check)
        if waited:
            self.progress(
                f"{self.settings.name}: the other issuer finished without a new certificate; ordering now"
            )
        if decision.due_at > self.clock():
            decision = replace(decision, reason="forced")
        return await self._issue(decision)

    def _follow(self, decision: Decision, now: dt.datetime) -> None:
        """The status follows the store (whoever wrote it), and says what renewal waits for."""
        self.status.next_renewal = decision.due_at
        self.status.reason = decision.reason
        if decision.issued_at is not None:
            self.status.last_success = decision.issued_at
        said = (decision.due_at, decision.reason)
        if decision.due_at > now and said != self._said and not self.status.failures:
            log.info(
                "%s: renewal due at %s (%s)",
                self.settings.name,
                decision.due_at.isoformat(timespec="seconds"),
                decision.reason,
            )
        self._said = said

    def store_changed(self) -> None:
        """The store changed (this process or another one wrote it): look again now."""
        self._wake.set()

    async def _issue(self, decision: Decision) -> dt.datetime:
        s = self.settings
        now = self.clock()
        self.status.last_attempt = now
        self.status.attempts += 1
        self.orders += 1
        self.progress(
            f"{s.name}: ordering a certificate for {', '.join(s.domains)} "
            f"from {s.directory} ({decision.reason})"
        )
        try:
            chain, key = await in_daemon_thread(
                self.issuer.issue, s.domains, replaces=decision.replaces, progress=self.progress
            )
            issued = self.clock()
            meta = {
                "directory": s.directory,
                "issued_at": issued.isoformat(),
                "domains": list(s.domains),
                "account": self.issuer.account_uri,
            }
            folder = await asyncio.to_thread(self.store.write_live, s.name, chain, key, meta)
        except (AcmeError, StoreError, PairError) as exc:
            return self._failed(exc)
        self.progress(f"written to {folder}")
        self.status.failures = 0
        self.status.last_error = None
        self.status.next_attempt = None
        self.status.blocked = False
        decision = await in_daemon_thread(self.decide)
        self._follow(decision, self.clock())
        return min(decision.due_at, decision.next_check)

    def _failed(self, exc: Exception) -> dt.datetime:
        now = self.clock()
        self.status.failures += 1
        self.status.failures_total += 1
        self.status.last_error = str(exc)
        retry_after = getattr(exc, "retry_after", None)
        self.status.blocked = bool(getattr(exc, "permanent", False))
        if self.status.blocked:  # no next attempt: only a change of configuration helps
            self.status.next_attempt = None
            log.error("%s: %s; not retrying until the configuration changes", self.settings.name, exc)
            return now + MAX_SLEEP
        next_attempt = policy.next_attempt(
            now,
            self.status.failures,
            retry_after=retry_after,
            jitter=self.jitter(),
            minimum=self.settings.retry_min,
            lifetime=self.lifetime,
        )
        self.status.next_attempt = next_attempt
        log.error(
            "%s: %s; next attempt at %s", self.settings.name, exc, next_attempt.isoformat(timespec="seconds")
        )
        return next_attempt

    # -- the loop ------------------------------------------------------------
    async def run(self) -> None:
        note = self.settings.private_address_note()
        if note:
            log.warning("%s", note)
        while True:
            self._wake.clear()
            try:
                when = await self.maintain()
            except Exception as exc:  # the loop must outlive any surprise
                log.exception("certificate maintenance failed: %s", exc)
                when = self.clock() + dt.timedelta(minutes=5)
            delay = max(1.0, (when - self.clock()).total_seconds())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)


def _parse_time(value: object) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
