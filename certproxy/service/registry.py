"""The registry routes read as the registry: what each request did, for its access
line and for the metrics (``proxy.routes.Observer``).

How this works: when a request of a registry route (``CERTPROXY_REGISTRY_PORTS``)
ends, its request line is read as a call of the registry API (``access.api.classify``):
the action (``ping``, ``pull``, ``push``, ``delete``, ``catalog``, or ``other`` for
anything that is not a call of the API, the access policy's token endpoint included),
the repository and the reference (a manifest's tag or digest, a blob's digest, the
digest that finishes an upload or that a mount names). An upload's session id comes
from the path of its ``PATCH``, ``PUT``, ``GET`` and ``DELETE``, and, for the ``POST``
that opens it, from the answer's ``Docker-Upload-UUID``: one ``grep`` for the id
follows a layer through its requests.

The user: the one the access policy (or certproxy's basic auth) checked; without
either, the user whose credentials the registry accepted (the name in ``Basic``
credentials, or the ``sub`` of a bearer token, when the answer is not a 401), never
the credentials themselves. None is anonymous.

Uploads are followed by session: started (a ``POST`` answered 202, or a session this
process first sees continue), completed (its ``PUT`` answered 201; a ``POST`` answered
201, a mount or a monolithic upload, is started and completed at once), failed:

- ``aborted``: the client went away in the middle of one of its requests;
- ``cancelled``: the client deleted the session;
- ``error``: the registry refused or failed a step (any status from 400 on but 401,
  which only sends the client for a fresh token);
- ``abandoned``: no request of the session for ``CERTPROXY_METRICS_UPLOAD_WINDOW``
  (none in flight either), or pushed out by ``SESSIONS_MAX`` newer sessions.

Per-repository series are bounded (``RepositoryLabels``): the repositories named by
``CERTPROXY_METRICS_REPOSITORIES`` (names, ``*`` patterns), or the busiest N (that
setting as a number): the first N repositories seen get a series; every
``REBALANCE`` seconds a repository that got more requests in that time than the
quietest of them takes its place (a series that moves starts at zero, and what was
counted under ``other`` stays there, so no counter ever goes down). Every other
repository counts as ``other``; calls that name none as ``-``.

All of this runs on the event loop; the metrics are copied out at scrape time.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import fnmatch
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from urllib.parse import unquote_to_bytes

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ..proxy.routes import AccessRecord, Request
from .access.api import Call, classify, valid_digest
from .metrics import BUCKET_LABELS, LATENCY_BUCKETS

ACTIONS = ("ping", "pull", "push", "delete", "catalog", "other")
OTHER = "other"  # a repository beyond the bounded set; an action that is no call of the API
NONE = "-"  # a call that names no repository
UPLOAD_HEADER = b"docker-upload-uuid"
SESSIONS_MAX = 10_000
REBALANCE = 600.0  # seconds between rankings of the busiest repositories
SWEEP_EVERY = 1.0  # seconds between looks for abandoned uploads
MATCHES_MAX = 4096  # remembered pattern results
USERS_MAX = 1024  # remembered bearer tokens' subjects
CALLS_MAX = 4096  # remembered request lines
CALL_KEY_MAX = 512  # longer targets are read every time
CLIENT_GONE = 499


class RepositoryLabels:
    """Which repositories have series of their own (see the module's docstring)."""

    def __init__(self, chosen: tuple[str, ...] | int, clock: Callable[[], float] = time.monotonic) -> None:
        self.patterns: tuple[str, ...] | None = None if isinstance(chosen, int) else chosen
        self.top = chosen if isinstance(chosen, int) else 0
        self._clock = clock
        self._named: dict[str, int] = {}  # repository -> requests since the last ranking
        self._candidates: dict[str, int] = {}
        self._matches: dict[str, bool] = {}
        self._ranked = clock()

    def label(self, repository: str | None) -> str:
        """The label of a request's repository, counting the request for the ranking."""
        if repository is None:
            return NONE
        if self.patterns is not None:
            return repository if self._match(repository) else OTHER
        named = self._named
        count = named.get(repository)
        if count is not None:
            named[repository] = count + 1
            return repository
        if len(named) < self.top:
            named[repository] = 1
            return repository
        candidates = self._candidates
        if repository in candidates:
            candidates[repository] += 1
        elif len(candidates) < 4 * self.top:
            candidates[repository] = 1
        return OTHER

    def peek(self, repository: str | None) -> str:
        """The label of ``repository`` now, counting nothing."""
        if repository is None:
            return NONE
        if self.patterns is not None:
            return repository if self._match(repository) else OTHER
        return repository if repository in self._named else OTHER

    def rebalance(self) -> list[str]:
        """Every ``REBALANCE`` seconds: let busier repositories take the places of quieter
        ones; the repositories that lost their series (their counters are dropped)."""
        now = self._clock()
        if now - self._ranked < REBALANCE:
            return []
        self._ranked = now
        dropped: list[str] = []
        quiet = sorted(self._named.items(), key=lambda kv: kv[1])
        busy = sorted(self._candidates.items(), key=lambda kv: -kv[1])
        for (old, had), (new, got) in zip(quiet, busy, strict=False):
            if got <= had:
                break
            del self._named[old]
            self._named[new] = 0
            dropped.append(old)
        self._named = dict.fromkeys(self._named, 0)
        self._candidates.clear()
        return dropped

    def _match(self, repository: str) -> bool:
        known = self._matches.get(repository)
        if known is None:
            assert self.patterns is not None
            known = any(fnmatch.fnmatchcase(repository, p) for p in self.patterns)
            if len(self._matches) >= MATCHES_MAX:
                self._matches.clear()
            self._matches[repository] = known
        return known


class _Session:
    __slots__ = ("repository", "last", "in_flight")

    def __init__(self, repository: str | None, now: float) -> None:
        self.repository = repository
        self.last = now
        self.in_flight = 0


class _Figures:
    """The counters, keyed by their label values (copied out at scrape time)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}
        self.durations = {action: [0] * (len(LATENCY_BUCKETS) + 1) for action in ACTIONS}
        self.duration_sums = dict.fromkeys(ACTIONS, 0.0)
        self.pushed: dict[str, int] = {}
        self.pulled: dict[str, int] = {}
        self.started: dict[str, int] = {}
        self.completed: dict[str, int] = {}
        self.failed: dict[tuple[str, str], int] = {}

    def drop(self, label: str) -> None:
        """Forget the series of a repository that lost its place."""
        for table in (self.pushed, self.pulled, self.started, self.completed):
            table.pop(label, None)
        for request in [k for k in self.requests if k[1] == label]:
            del self.requests[request]
        for failure in [k for k in self.failed if k[0] == label]:
            del self.failed[failure]


def _add(table: dict[str, int], key: str, amount: int = 1) -> None:
    table[key] = table.get(key, 0) + amount


class RegistryObserver:
    """A registry route's ``Observer``: the access line's registry fields, and the
    registry metrics (``collect``)."""

    keep = UPLOAD_HEADER

    def __init__(
        self,
        repositories: tuple[str, ...] | int,
        upload_window: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.labels = RepositoryLabels(repositories, clock)
        self.upload_window = upload_window
        self._clock = clock
        self._figures = _Figures()
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._swept = clock()
        self._subjects: dict[str, str | None] = {}
        self._calls: dict[tuple[bytes, bytes], Call | None] = {}

    # -- the request path -----------------------------------------------------------
    def begin(self, request: Request) -> None:
        """A request arrives: an upload's session with a request in flight is alive."""
        target = request.target
        if b"/blobs/uploads/" not in target:
            return
        session = self._sessions.get(target.partition(b"?")[0].rpartition(b"/")[2].decode("latin-1"))
        if session is not None:
            session.in_flight += 1
            session.last = self._clock()

    def observe(self, request: Request, record: AccessRecord) -> AccessRecord:
        """What the request did; counted, and returned as the fields of its access line."""
        line = (request.method, request.target)
        call = self._calls[line] if line in self._calls else self._read(line)
        if call is not None:
            action, repository, reference = call.action, call.repository, call.reference
        else:
            action, repository, reference = OTHER, None, None
        label = self.labels.label(repository)  # first: a new repository may get its place now
        upload = None
        if call is not None and call.kind == "uploads":
            upload, reference = self._upload(request, call, record.status)
        status = record.status
        user = record.user if record.action is not None else self._user(request, status)
        figures = self._figures
        counted = (action, label, str(status))
        figures.requests[counted] = figures.requests.get(counted, 0) + 1
        figures.durations[action][bisect.bisect_left(LATENCY_BUCKETS, record.seconds)] += 1
        figures.duration_sums[action] += record.seconds
        if action == "push" and record.bytes_in:
            _add(figures.pushed, label, record.bytes_in)
        elif action == "pull" and record.bytes_out:
            _add(figures.pulled, label, record.bytes_out)
        self.sweep()
        return AccessRecord(*record[:10], user, action, repository, reference, upload)

    def _read(self, key: tuple[bytes, bytes]) -> Call | None:
        """The call a request line makes (None: none of the API); recent ones remembered
        (bounded): many clients pull the same manifests and blobs."""
        read = classify(*key)
        call = read if isinstance(read, Call) else None
        if len(key[1]) <= CALL_KEY_MAX:
            if len(self._calls) >= CALLS_MAX:
                self._calls.clear()
            self._calls[key] = call
        return call

    def _upload(self, request: Request, call: Call, status: int) -> tuple[str | None, str | None]:
        """An upload's request: counted; its session id and the digest it names."""
        digest = call.mount_digest or _digest(call.query)
        if call.reference is None:  # the POST that opens it
            kept = request.kept
            upload = kept.decode("latin-1") if kept is not None and status == 202 else None
            if status == 201 or upload is not None:
                _add(self._figures.started, self.labels.peek(call.repository))
            if status == 201:
                _add(self._figures.completed, self.labels.peek(call.repository))
            elif upload is not None:
                self._open(upload, call.repository)
            return upload, digest
        self._step(call, request.method, status)
        return call.reference, digest

    def _open(self, upload: str, repository: str | None) -> _Session:
        sessions = self._sessions
        session = sessions[upload] = _Session(repository, self._clock())
        while len(sessions) > SESSIONS_MAX:
            _, oldest = sessions.popitem(last=False)
            self._fail(oldest.repository, "abandoned")
        return session

    def _step(self, call: Call, method: bytes, status: int) -> None:
        """A request of an open session (``PATCH``, ``PUT``, ``GET``, ``DELETE``)."""
        upload = call.reference
        assert upload is not None
        session = self._sessions.get(upload)
        if session is None:
            if status >= 400:
                return  # a session this process never saw working: nothing to follow
            _add(self._figures.started, self.labels.peek(call.repository))
            session = self._open(upload, call.repository)
        else:
            session.in_flight = max(0, session.in_flight - 1)
            session.last = self._clock()
            self._sessions.move_to_end(upload)
        if status == CLIENT_GONE:
            outcome = "aborted"
        elif method == b"PUT" and status == 201:
            outcome = "completed"
        elif method == b"DELETE" and status < 300:
            outcome = "cancelled"
        elif status >= 400 and status != 401:
            outcome = "error"
        else:
            return
        del self._sessions[upload]
        if outcome == "completed":
            _add(self._figures.completed, self.labels.peek(session.repository))
        else:
            self._fail(session.repository, outcome)

    def _fail(self, repository: str | None, reason: str) -> None:
        key = (self.labels.peek(repository), reason)
        self._figures.failed[key] = self._figures.failed.get(key, 0) + 1

    def sweep(self) -> None:
        """Count the uploads abandoned by now, and rank the busiest repositories when
        it is time (at most every ``SWEEP_EVERY`` seconds; on the event loop)."""
        now = self._clock()
        if now - self._swept < SWEEP_EVERY:
            return
        self._swept = now
        for dropped in self.labels.rebalance():
            self._figures.drop(dropped)
        limit = now - self.upload_window
        sessions = self._sessions
        for _ in range(len(sessions)):
            upload, session = next(iter(sessions.items()))
            if session.last > limit:
                break
            if session.in_flight:  # a long request: alive
                session.last = now
                sessions.move_to_end(upload)
                continue
            del sessions[upload]
            self._fail(session.repository, "abandoned")

    def _user(self, request: Request, status: int) -> str | None:
        """The user the registry accepted (see the module's docstring)."""
        if status == 401:
            return None
        header = request.header(b"authorization")
        if len(header) != 1:
            return None
        scheme, _, value = header[0].partition(b" ")
        scheme = scheme.lower()
        if scheme == b"basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                return None
            user, sep, _ = decoded.partition(b":")
            return user.decode("utf-8", "replace") if sep and user else None
        if scheme == b"bearer":
            return self._subject(value.strip().decode("latin-1"))
        return None

    def _subject(self, token: str) -> str | None:
        """A JWT's ``sub`` (unverified: the registry verified the token), remembered."""
        subjects = self._subjects
        if token in subjects:
            return subjects[token]
        subject: str | None = None
        parts = token.split(".")
        if len(parts) == 3:
            try:
                claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
                found = claims.get("sub") if isinstance(claims, dict) else None
                subject = found[:256] if isinstance(found, str) and found else None
            except (ValueError, binascii.Error):
                subject = None
        if len(subjects) >= USERS_MAX:
            subjects.clear()
        subjects[token] = subject
        return subject

    # -- the scrape ----------------------------------------------------------------
    def collect(self) -> Iterable[Metric]:
        """The registry metric families (called by ``metrics.Metrics`` at scrape time,
        in a thread: every table is copied first)."""
        figures = self._figures
        requests = CounterMetricFamily(
            "certproxy_registry_requests",
            "Registry requests answered, by action, repository and status",
            labels=["action", "repository", "status"],
        )
        for (action, label, status), count in figures.requests.copy().items():
            requests.add_metric([action, label, status], count)
        yield requests
        durations = HistogramMetricFamily(
            "certproxy_registry_request_duration_seconds",
            "Registry requests from their head to the end of their answer, by action",
            labels=["action"],
        )
        for action in ACTIONS:
            cumulative, buckets = 0, []
            for bucket, count in zip(BUCKET_LABELS, list(figures.durations[action]), strict=True):
                cumulative += count
                buckets.append((bucket, cumulative))
            durations.add_metric([action], buckets, figures.duration_sums[action])
        yield durations
        yield _by_repository("pushed_bytes", "Request body bytes of pushes", figures.pushed)
        yield _by_repository("pulled_bytes", "Response body bytes of pulls", figures.pulled)
        yield _by_repository("uploads_started", "Blob uploads started", figures.started)
        yield _by_repository("uploads_completed", "Blob uploads completed", figures.completed)
        failed = CounterMetricFamily(
            "certproxy_registry_uploads_failed",
            "Blob uploads that failed: aborted, cancelled, error or abandoned",
            labels=["repository", "reason"],
        )
        for (label, reason), count in figures.failed.copy().items():
            failed.add_metric([label, reason], count)
        yield failed
        yield GaugeMetricFamily(
            "certproxy_registry_uploads_in_progress",
            "Blob uploads started and not yet completed, failed or abandoned",
            value=len(self._sessions),
        )


def _by_repository(name: str, documentation: str, table: dict[str, int]) -> Metric:
    family = CounterMetricFamily(f"certproxy_registry_{name}", documentation, labels=["repository"])
    for label, count in table.copy().items():
        family.add_metric([label], count)
    return family


def _digest(query: bytes) -> str | None:
    """The ``digest`` of an upload's query (the one that finishes it), when valid."""
    for pair in query.split(b"&"):
        if pair.startswith(b"digest="):
            value = unquote_to_bytes(pair[7:])
            return value.decode("ascii") if valid_digest(value) else None
    return None


__all__ = ["ACTIONS", "RegistryObserver", "RepositoryLabels"]
