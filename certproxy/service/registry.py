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
either, on a call of the API that the registry answered with success, the name in the
request's credentials (the user of ``Basic`` credentials, the ``sub`` of a bearer
token): checked by the registry when it has auth of its own, only what the client
says when it has none. Never the credentials themselves; nothing outside printable
ASCII (a forged line break or space becomes ``?``). None is anonymous.

Uploads are followed by session: started (a ``POST`` answered 202, or a session this
process first sees continue), completed (its ``PUT`` answered 201; a ``POST`` answered
201, a mount or a monolithic upload, is started and completed at once), failed:

- ``aborted``: the client went away in the middle of one of its requests;
- ``cancelled``: the client deleted the session;
- ``error``: the registry refused a step (a status from 400 on, but 401, which only
  sends the client for a fresh token, and 429); or a step failed (5xx, 429) and no
  request of the session followed within ``ERROR_GRACE`` (a client may retry a step);
- ``abandoned``: no request of the session for ``CERTPROXY_METRICS_UPLOAD_WINDOW``
  (none in flight either), or pushed out by ``SESSIONS_MAX`` newer sessions.

Per-repository series are bounded (``RepositoryLabels``), and only a request the
registry answered with success (2xx, 3xx) gives a repository its series, so made-up
names cannot take them: the repositories named by ``CERTPROXY_METRICS_REPOSITORIES``
(names, and at most ``PATTERN_NAMES_MAX`` repositories matched by its ``*``
patterns), or the busiest N (that setting as a number): the first N repositories get a
series; every ``REBALANCE`` seconds a repository that got more requests in that time
than the quietest of them takes its place (a series that moves starts at zero, and what
was counted under ``other`` stays there, so no counter ever goes down). Every other
repository counts as ``other``; calls that name none as ``-``. The ``status`` label is
a registered status code (or 499: the client went away first), else its class
(``5xx``).

All of this runs on the event loop; the metrics are copied out at scrape time.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import fnmatch
import http
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from urllib.parse import unquote_to_bytes

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ..proxy.accessline import LATENCY_BUCKETS
from ..proxy.routes import AccessRecord, Request
from .access.api import Call, classify, valid_digest
from .metrics import BUCKET_LABELS

ACTIONS = ("ping", "pull", "push", "delete", "catalog", "other")
OTHER = "other"  # a repository beyond the bounded set; an action that is no call of the API
NONE = "-"  # a call that names no repository
UPLOAD_HEADER = b"docker-upload-uuid"
SESSIONS_MAX = 10_000
REBALANCE = 600.0  # seconds between rankings of the busiest repositories
SWEEP_EVERY = 1.0  # seconds between looks for abandoned uploads
MATCHES_MAX = 4096  # remembered pattern results
PATTERN_NAMES_MAX = 1000  # repositories that a pattern of CERTPROXY_METRICS_REPOSITORIES may name
SUBJECT_MAX = 4096  # longer bearer tokens are not read for a user
ERROR_GRACE = 300.0  # seconds an upload whose step failed (5xx, 429) has to go on before it counts as failed
_SAFE = re.compile(r"[^\x21-\x7e]|\\")  # in a user name: what could forge a log line or a field
_SESSION = re.compile(r"[A-Za-z0-9_.=-]{1,128}")
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

    def label(self, repository: str | None, admit: bool = True) -> str:
        """The label of a request's repository, counting the request for the ranking.
        ``admit``: the registry answered it with success; only such a request may give a
        repository a series (a scanner's made-up names get 401s and 404s)."""
        if repository is None:
            return NONE
        named = self._named
        count = named.get(repository)
        if count is not None:
            named[repository] = count + 1
            return repository
        if not admit:
            return OTHER
        if self.patterns is not None:
            if len(named) < PATTERN_NAMES_MAX and self._match(repository):
                named[repository] = 1
                return repository
            return OTHER
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
        return repository if repository in self._named else OTHER

    def rebalance(self) -> list[str]:
        """Every ``REBALANCE`` seconds: let busier repositories take the places of quieter
        ones; the repositories that lost their series (their counters are dropped)."""
        now = self._clock()
        if self.patterns is not None or now - self._ranked < REBALANCE:
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
    __slots__ = ("repository", "last", "in_flight", "failing")

    def __init__(self, repository: str | None, now: float) -> None:
        self.repository = repository
        self.last = now
        self.in_flight = 0
        self.failing = False  # its last step got a 5xx or 429


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
        self._failing: OrderedDict[str, float] = OrderedDict()  # session -> when its step failed

    # -- the request path -----------------------------------------------------------
    def begin(self, request: Request) -> None:
        """A request arrives: an upload's session with a request in flight is alive."""
        session = self._sessions.get(_session_of(request.target))
        if session is not None:
            session.in_flight += 1
            session.last = self._clock()

    def observe(self, request: Request, record: AccessRecord) -> AccessRecord:
        """What the request did; counted, and returned as the fields of its access line."""
        bumped = self._sessions.get(_session_of(request.target))
        if bumped is not None:  # what begin() counted, undone whatever the request was
            bumped.in_flight = max(0, bumped.in_flight - 1)
        line = (request.method, request.target)
        call = self._calls[line] if line in self._calls else self._read(line)
        status = record.status
        success = 200 <= status < 400
        if call is not None:
            action, repository, reference = call.action, call.repository, call.reference
        else:
            action, repository, reference = OTHER, None, None
        # first: a repository the registry accepted may get its place now
        label = self.labels.label(repository, success)
        upload = None
        if call is not None and call.kind == "uploads":
            upload, reference = self._upload(request, call, status, label)
        if record.action is not None:  # what the access policy checked
            user = record.user
        else:
            user = self._user(request) if success and call is not None else None
        figures = self._figures
        counted = (action, label, _status_label(status))
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

    def _upload(self, request: Request, call: Call, status: int, label: str) -> tuple[str | None, str | None]:
        """An upload's request: counted; its session id and the digest it names."""
        digest = call.mount_digest or _digest(call.query)
        if call.reference is None:  # the POST that opens it
            kept = request.kept
            upload = None
            if kept is not None and status == 202 and _SESSION.fullmatch(kept.decode("latin-1")):
                upload = kept.decode("latin-1")
            if status == 201 or upload is not None:
                _add(self._figures.started, label)
            if status == 201:
                _add(self._figures.completed, label)
            elif upload is not None:
                self._open(upload, call.repository)
            return upload, digest
        self._step(call, request.method, status, label)
        return call.reference, digest

    def _open(self, upload: str, repository: str | None) -> _Session:
        sessions = self._sessions
        session = sessions[upload] = _Session(repository, self._clock())
        while len(sessions) > SESSIONS_MAX:
            _, oldest = sessions.popitem(last=False)
            self._fail(oldest.repository, "abandoned")
        return session

    def _step(self, call: Call, method: bytes, status: int, label: str) -> None:
        """A request of an open session (``PATCH``, ``PUT``, ``GET``, ``DELETE``)."""
        upload = call.reference
        assert upload is not None
        session = self._sessions.get(upload)
        if session is None:
            if status >= 400:
                return  # a session this process never saw working: nothing to follow
            _add(self._figures.started, label)
            session = self._open(upload, call.repository)
        else:
            session.last = self._clock()
            self._sessions.move_to_end(upload)
        if status >= 500 or status == 429:
            # the client may try the step again: failed only if nothing follows in time
            session.failing = True
            self._failing[upload] = session.last
            return
        session.failing = False
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
        """Count the uploads abandoned or failed by now, and rank the busiest repositories
        when it is time (at most every ``SWEEP_EVERY`` seconds; on the event loop)."""
        now = self._clock()
        if now - self._swept < SWEEP_EVERY:
            return
        self._swept = now
        for dropped in self.labels.rebalance():
            self._figures.drop(dropped)
        self._end_failing(now)
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

    def _end_failing(self, now: float) -> None:
        """Sessions whose last step failed (5xx, 429) and that did not go on within
        ``ERROR_GRACE``: failed, reason ``error``."""
        failing = self._failing
        while failing:
            upload, since = next(iter(failing.items()))
            if since > now - ERROR_GRACE:
                break
            del failing[upload]
            session = self._sessions.get(upload)
            if session is not None and session.failing and not session.in_flight and session.last <= since:
                del self._sessions[upload]
                self._fail(session.repository, "error")

    def _user(self, request: Request) -> str | None:
        """The name in the request's credentials (see the module's docstring), made safe
        for a log line: nothing outside printable ASCII, at most 128 characters."""
        header = request.header(b"authorization")
        if len(header) != 1:
            return None
        scheme, _, value = header[0].partition(b" ")
        scheme = scheme.lower()
        name: str | None = None
        if scheme == b"basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                return None
            user, sep, _ = decoded.partition(b":")
            name = user.decode("utf-8", "replace") if sep and user else None
        elif scheme == b"bearer":
            name = self._subject(value.strip().decode("latin-1"))
        return _SAFE.sub("?", name[:128]) if name else None

    def _subject(self, token: str) -> str | None:
        """A JWT's ``sub`` (unverified: the registry verified the token), remembered."""
        subjects = self._subjects
        if token in subjects:
            return subjects[token]
        subject: str | None = None
        parts = token.split(".")
        if len(token) <= SUBJECT_MAX and len(parts) == 3:
            try:
                claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
                found = claims.get("sub") if isinstance(claims, dict) else None
                subject = found if isinstance(found, str) and found else None
            except Exception:  # noqa: BLE001 - whatever a client made up: no user
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


def _session_of(target: bytes) -> str:
    """The upload session a target names ("" when none): its last path segment."""
    if b"/blobs/uploads/" not in target:
        return ""
    return target.partition(b"?")[0].rpartition(b"/")[2].decode("latin-1")


# the registered codes, and 499 (the client went away first): a bounded label
_REGISTERED_STATUSES = {str(int(code)) for code in http.HTTPStatus} | {str(CLIENT_GONE)}


def _status_label(status: int) -> str:
    """The ``status`` label: the code, or its class outside the registered ones."""
    text = str(status)
    if text in _REGISTERED_STATUSES:
        return text
    return f"{min(max(status // 100, 1), 5)}xx"


def _digest(query: bytes) -> str | None:
    """The ``digest`` of an upload's query (the one that finishes it), when valid."""
    for pair in query.split(b"&"):
        if pair.startswith(b"digest="):
            value = unquote_to_bytes(pair[7:])
            return value.decode("ascii") if valid_digest(value) else None
    return None


__all__ = ["ACTIONS", "RegistryObserver", "RepositoryLabels"]
