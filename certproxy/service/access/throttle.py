"""Failed logins, counted per client address, and the addresses held back for them.

How this works: each address has a window that starts at its first failure;
within ``WINDOW`` seconds at most ``LIMIT`` failures are allowed (a login being
checked counts until its outcome is known), and past that
the address's login attempts are answered 429 with ``Retry-After`` (the seconds
left in its window) without checking a password, so a flood of wrong passwords
costs no bcrypt. Wrong credentials at the token endpoint and in direct Basic
count together; an invalid or expired token is not a failed login. What is
remembered is bounded (``MAX_ADDRESSES``: the oldest windows go first), and each
address's throttling is logged once per window.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("certproxy.access")

LIMIT = 10
WINDOW = 60.0
MAX_ADDRESSES = 10_000


@dataclass
class _Window:
    started: float
    failures: int = 0
    pending: int = 0  # logins being checked now: they count until their outcome is known
    logged: bool = False


@dataclass
class Throttle:
    limit: int = LIMIT
    window: float = WINDOW
    clock: Callable[[], float] = time.monotonic
    _windows: OrderedDict[str, _Window] = field(default_factory=OrderedDict)

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try to log in again; None when it may now."""
        w = self._windows.get(address)
        if w is None:
            return None
        left = w.started + self.window - self.clock()
        if left <= 0:
            del self._windows[address]
            return None
        if w.failures + w.pending < self.limit:
            return None
        if not w.logged:
            w.logged = True
            log.warning(
                "throttled logins from %s: %d failed within %g s (for %d s more)",
                address,
                w.failures,
                self.window,
                math.ceil(left),
            )
        return max(1, math.ceil(left))

    def begin(self, address: str) -> int | None:
        """A login from ``address`` is about to be checked: seconds to wait instead, or
        None, and then the attempt counts against the limit until ``end`` says how it went
        (so guesses sent all at once cannot all be checked)."""
        retry = self.retry_after(address)
        if retry is None:
            self._window(address).pending += 1
        return retry

    def end(self, address: str, failed: bool) -> None:
        w = self._window(address)
        w.pending = max(0, w.pending - 1)
        if failed:
            w.failures += 1
        elif not w.failures and not w.pending:  # nothing to remember of this address
            del self._windows[address]

    def failed(self, address: str) -> None:
        """One more failed login from ``address``."""
        self._window(address).failures += 1

    def _window(self, address: str) -> _Window:
        now = self.clock()
        w = self._windows.get(address)
        if w is None or now - w.started >= self.window:
            pending = w.pending if w is not None else 0
            w = self._windows[address] = _Window(now, pending=pending)
            self._windows.move_to_end(address)
            while len(self._windows) > MAX_ADDRESSES:
                self._windows.popitem(last=False)
        return w
