"""When to renew, and when to try again: pure functions of the time passed in.

Renewal follows Let's Encrypt's integration guide: use the CA's ACME Renewal
Information (RFC 9773) when it offers it; otherwise renew when the last third
of the certificate's lifetime begins, or the last half for lifetimes under ten
days (short-lived certificates), at a point within the first half of that
period that each installation draws once and keeps (``spread``). A certificate that must be replaced (the
bootstrap one, one that does not cover the configured names, one from another
CA directory) is due at once. However odd the CA's window, the same request
(same directory, same names) is never ordered again sooner than
``min(1 h, lifetime / 4)`` after its last order unless forced; a changed
configuration is a new request and is not held back.

Failures retry on a front-weighted schedule (a minute, then a few minutes,
growing to six hours) with jitter, never sooner than the CA's Retry-After.
Short lifetimes shorten both the longest step and the longest the loop
sleeps without looking (``idle_limit``): a 160-hour certificate is retried at
least every 1 h 40 min (a 96th of its lifetime) and looked at every 2.5 h (a
64th), so a failing renewal is tried many times in the days left before
expiry. An ARI window wakes the loop at the moment drawn in it, however short.
"""

from __future__ import annotations

import datetime as dt

SHORT_LIFETIME = dt.timedelta(days=10)
SHORTLIVED = dt.timedelta(hours=160)  # Let's Encrypt's shortlived profile, the one for IP addresses
REORDER_GUARD = dt.timedelta(hours=1)
# Seconds to wait after the n-th consecutive failure (then the last one, repeated).
RETRY_SCHEDULE = (60, 120, 120, 300, 600, 600, 1200, 1800, 3600, 3600, 7200, 14400, 21600)
JITTER = 0.1
MAX_IDLE = dt.timedelta(hours=12)  # the loop looks at least this often
IDLE_SHARE = 64  # ... and at least 64 times per lifetime
RETRY_SHARE = 96  # a retry step is at most this share of the lifetime
MIN_STEP = 1.0  # seconds: the shortest step either is ever cut to


def idle_limit(lifetime: dt.timedelta | None) -> dt.timedelta:
    """The longest the maintenance loop sleeps without looking: twelve hours, or a 64th
    of a shorter certificate's lifetime (2.5 h for 160 hours), never under a second."""
    if lifetime is None or lifetime <= dt.timedelta(0):
        return MAX_IDLE
    return max(min(MAX_IDLE, lifetime / IDLE_SHARE), dt.timedelta(seconds=MIN_STEP))


def lifetime_renewal_time(
    not_before: dt.datetime, not_after: dt.datetime, spread: float = 0.0
) -> dt.datetime:
    """A moment in the first half of the last third (or last half, under ten days) of
    the lifetime: ``spread`` in [0, 1) places it, so installations that got their
    certificates at the same moment do not all renew at the same moment, and the
    second half of the period is left for retries."""
    lifetime = not_after - not_before
    share = 2 if lifetime < SHORT_LIFETIME else 3
    period = lifetime / share
    return not_after - period + period / 2 * min(max(spread, 0.0), 1.0)


def renewal_time(
    not_before: dt.datetime,
    not_after: dt.datetime,
    *,
    ari_time: dt.datetime | None = None,
    must_replace: bool = False,
    last_order: dt.datetime | None = None,
    spread: float = 0.0,
    now: dt.datetime,
) -> dt.datetime:
    """When the certificate valid from ``not_before`` to ``not_after`` should be renewed.

    ``ari_time`` is a moment the CA's renewal window suggests (already chosen
    at random within it); ``must_replace`` marks a certificate that has to go
    now; ``last_order`` is when the same request was last ordered (the guard
    against re-ordering it); ``spread`` is this installation's place in the
    lifetime's renewal period (ARI windows are already random).
    """
    if must_replace:
        when = now
    elif ari_time is not None and ari_time < not_after:
        when = ari_time  # a past window means "now"; the guard below bounds re-orders
    else:  # no ARI, or a window after expiry: never let the certificate lapse
        when = lifetime_renewal_time(not_before, not_after, spread)
    if last_order is not None:
        guard = min(REORDER_GUARD, (not_after - not_before) / 4)
        when = max(when, last_order + guard)
    return when


def retry_delay(
    failures: int, *, jitter: float = 0.5, minimum: float = 0.0, lifetime: dt.timedelta | None = None
) -> float:
    """Seconds before the next attempt after ``failures`` consecutive failures.

    ``jitter`` in [0, 1) spreads replicas apart (+-10 %); ``minimum`` scales the
    whole schedule down (tests) or is the floor the configuration asks for;
    ``lifetime`` (of the certificate in service) caps a step at a 96th of it.
    """
    if failures <= 0:
        return 0.0
    base = float(RETRY_SCHEDULE[min(failures, len(RETRY_SCHEDULE)) - 1])
    if minimum:
        base = base * minimum / RETRY_SCHEDULE[0]
    if lifetime is not None and lifetime > dt.timedelta(0):
        base = min(base, max(lifetime.total_seconds() / RETRY_SHARE, MIN_STEP))
    return base * (1 - JITTER + 2 * JITTER * jitter)


def next_attempt(
    now: dt.datetime,
    failures: int,
    *,
    retry_after: dt.datetime | None = None,
    jitter: float = 0.5,
    minimum: float = 0.0,
    lifetime: dt.timedelta | None = None,
) -> dt.datetime:
    """The next attempt after a failure, honouring the CA's Retry-After."""
    delay = retry_delay(failures, jitter=jitter, minimum=minimum, lifetime=lifetime)
    when = now + dt.timedelta(seconds=delay)
    if retry_after is not None and retry_after > when:
        when = retry_after
    return when
