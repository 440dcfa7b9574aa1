"""A throwaway push and pull through the front, and what they show about it.

How this works: two random blobs of ``--size`` bytes go to a throwaway repository, one
through the chunked path (``POST``, one ``PATCH`` with the body, ``PUT ?digest=``),
one through the monolithic path (``POST``, one ``PUT ?digest=`` with the body); every
``Location`` the registry hands out is compared with the URL the client used. Probes
with small bodies then look at the front itself:

- buffering: a ``PATCH`` to an upload that does not exist, with a body that pauses
  after ``HEAD_START`` bytes. The registry answers such a request as soon as it reads
  its head; through a streaming front that answer comes during the pause, through a
  front that holds bodies until complete only once the rest is sent;
- idle timeout: a real upload's ``PATCH`` that pauses ``--idle`` seconds mid-body;
  a front that cuts the connection meanwhile is named with the time it waited;
- body cap (after a 413 or a cut push): ``PATCH`` heads alone, with growing
  ``Content-Length``, to the upload that does not exist: a cap answers 413 to the head.

Then each blob is pulled back and its sha256 compared, and deleted where allowed.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from .report import FAIL, INFO, OK, mib
from .session import Session
from .wire import Answer, RandomBlob, Request

OCTETS = {"Content-Type": "application/octet-stream"}
# Below nginx's default 1 MiB cap, so the probes run behind it; and above the 256 KiB a Go
# server (the registry) reads of a body its handler left before it answers: past that it
# answers at once (and closes the connection, so a front may lose the answer: the probe
# is tried again when no answer of the registry's comes).
PROBE_BODY = 768 * 1024
HEAD_START = 64 * 1024
BUFFER_WAIT = 5.0  # how long the registry's early answer may take through a streaming front
CAP_WAIT = 3.0


@dataclass
class Head:
    """A body that only announces its length (the cap probe sends none of it)."""

    length: int

    def pieces(self) -> Iterator[bytes]:
        return iter(())


def _name(s: Session) -> str:
    front = s.front()
    return f"the front ({s.server})" if front else "a proxy in front of the registry"


def _uploads(s: Session) -> str:
    return f"/v2/{s.repository}/blobs/uploads/"


def _start(s: Session, what: str) -> tuple[str | None, Answer]:
    answer = s.send(Request("POST", _uploads(s)))
    path = s.follow(f"POST ({what})", answer.header("location")) if answer.status == 202 else None
    return path, answer


def _with_digest(path: str, digest: str) -> str:
    return path + ("&" if "?" in path else "?") + "digest=" + quote(digest)


def _failed(s: Session, id: str, what: str, answer: Answer, size: int) -> None:
    """A push step that did not work: said, and a 413 or a cut noted for the cap check."""
    if answer.status == 413 or (answer.status is None and 0 < answer.sent < size):
        s.capped.append(f"{what} got {answer.status or answer.error} after {mib(answer.sent)}")
    if answer.status in (401, 403):
        s.report.add(
            id,
            FAIL,
            f"{what}: refused ({answer.status}) for {s.options.user or 'anonymous'} on {s.repository}",
            "The user needs push on the repository; --repository NAME picks one they may push to.",
        )
    elif answer.status is None:
        s.report.add(
            id,
            FAIL,
            f"{what}: {answer.error} after {mib(answer.sent)} of {mib(size)}",
            "See the cap and idle-timeout checks below.",
        )
    else:
        detail = answer.reason
        s.report.add(
            id,
            FAIL,
            f"{what}: {answer.status} {detail}".strip(),
            "See the checks below; the registry's log has the rest.",
        )


def _rate(size: int, seconds: float) -> str:
    return f"{size / max(seconds, 1e-3) / 1e6:.0f} MB/s"


def push_chunked(s: Session, blob: RandomBlob) -> None:
    path, answer = _start(s, "chunked")
    if path is None:
        _failed(s, "push.chunked", "POST (start of the upload)", answer, 0)
        return
    digest, began = blob.digest, time.monotonic()
    answer = s.send(Request("PATCH", path, dict(OCTETS), blob))
    if answer.status != 202:
        _failed(s, "push.chunked", f"PATCH of {mib(blob.size)}", answer, blob.size)
        return
    path = s.follow("PATCH", answer.header("location")) or path
    answer = s.send(Request("PUT", _with_digest(path, digest)))
    if answer.status != 201:
        _failed(s, "push.chunked", "PUT ?digest= (the upload's end)", answer, 0)
        return
    _pushed(s, "push.chunked", "chunked push (PATCH)", blob, began)


def push_monolithic(s: Session, blob: RandomBlob) -> None:
    path, answer = _start(s, "monolithic")
    if path is None:
        _failed(s, "push.monolithic", "POST (start of the upload)", answer, 0)
        return
    digest, began = blob.digest, time.monotonic()
    answer = s.send(Request("PUT", _with_digest(path, digest), dict(OCTETS), blob))
    if answer.status != 201:
        _failed(s, "push.monolithic", f"PUT ?digest= with {mib(blob.size)}", answer, blob.size)
        return
    _pushed(s, "push.monolithic", "monolithic push (PUT)", blob, began)


def _pushed(s: Session, check: str, what: str, blob: RandomBlob, began: float) -> None:
    """A probe blob is in the registry: said, with its rate, and kept for the pull."""
    seconds = time.monotonic() - began
    s.pushed.append(blob.digest)
    s.report.add(
        check,
        OK,
        f"{what} of {mib(blob.size)} in {seconds:.1f} s ({_rate(blob.size, seconds)})",
        seconds=round(seconds, 2),
        bytes=blob.size,
    )


def _nowhere(s: Session) -> str:
    """An upload that does not exist (the registry answers its PATCH at once)."""
    return f"{_uploads(s)}{uuid.uuid4()}"


def _answers_head(s: Session, length: int) -> int | None:
    """The status a PATCH head announcing ``length`` bytes gets before any of them is
    sent; None when the front waits for the body."""
    request = Request(
        "PATCH", _nowhere(s), dict(OCTETS), Head(length), pause_after=0, pause=CAP_WAIT, stop_after_pause=True
    )
    answer = s.send(request, timeout=CAP_WAIT + 10)
    return answer.status


def check_cap(s: Session) -> None:
    size = s.options.size
    if not s.capped:
        if s.pushed:
            s.report.add("push.cap", OK, f"no body cap up to {mib(size)}")
        else:
            s.report.add("push.cap", INFO, "body cap: cannot tell (nothing was pushed)")
        return
    low, high = 1024, size  # passes, capped
    if _answers_head(s, high) != 413:
        s.report.add(
            "push.cap",
            FAIL,
            f"a cap in front of the registry cut the push ({s.capped[0]})",
            _cap_remedy(s),
            cuts=s.capped,
        )
        return
    while high / low > 1.1:
        middle = int((low * high) ** 0.5)
        if _answers_head(s, middle) == 413:
            high = middle
        else:
            low = middle
    cap = (low + high) // 2
    s.report.add(
        "push.cap",
        FAIL,
        f"a cap at about {_mb(cap)} in front of the registry: bodies over {_mb(low)} get 413 ({s.capped[0]})",
        _cap_remedy(s),
        cap_bytes=cap,
        cuts=s.capped,
    )


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size < 10e6 else f"{size / 1e6:.0f} MB"


def _cap_remedy(s: Session) -> str:
    lines = f"Layers bigger than that cannot be pushed through {_name(s)}."
    if s.front() == "nginx":
        return lines + "\nnginx: client_max_body_size 0; in the server block (its default is 1m)."
    return (
        lines + "\nnginx: client_max_body_size 0; a CDN (Cloudflare caps bodies at 100 MB): let the "
        "registry's port bypass it (DNS only)."
    )


def _streamed(answer: Answer) -> bool:
    """An answer before the whole body (during the pause, or even before it): the front
    passed the head on before the body was complete.
    A 502 counts: the front lost the registry's answer when the registry closed the
    connection (see the comment at PROBE_BODY), which a front that holds the body would not
    have opened yet."""
    return answer.sent < PROBE_BODY and answer.status not in (None, 401, 403, 408, 413)


def _buffer_probe(s: Session) -> tuple[str, Answer]:
    """The probe (see the module's comment): "streams", "buffers" (twice the registry's
    answer only after the whole body) or "unknown"."""
    late = 0
    for _ in range(3):
        body = RandomBlob(PROBE_BODY, secrets.token_hex(4))
        request = Request("PATCH", _nowhere(s), dict(OCTETS), body, pause_after=HEAD_START, pause=BUFFER_WAIT)
        answer = s.send(request)
        if _streamed(answer):
            return "streams", answer
        if answer.status in (401, 403, 413):
            break
        if _from_registry(answer):
            late += 1
            if late == 2:
                return "buffers", answer
    return "unknown", answer


def _from_registry(answer: Answer) -> bool:
    return answer.status in (400, 404) and bool(answer.header("docker-distribution-api-version"))


def check_buffering(s: Session) -> None:
    verdict, answer = _buffer_probe(s)
    if verdict == "unknown":
        s.report.add(
            "push.buffering",
            INFO,
            f"request buffering: cannot tell (the probe got {answer.status or answer.error})",
            status=answer.status,
        )
    elif verdict == "streams":
        s.report.add(
            "push.buffering",
            OK,
            f"the front streams request bodies (an answer came after {mib(answer.sent)} of "
            f"{mib(PROBE_BODY)}, in {answer.seconds * 1000:.0f} ms)",
            seconds=round(answer.seconds, 2),
            sent=answer.sent,
        )
    else:
        s.report.add(
            "push.buffering",
            FAIL,
            f"{_name(s)} buffers request bodies: the registry's answer came only after the whole body "
            f"({BUFFER_WAIT:g} s without an answer after the first {mib(HEAD_START)} of {mib(PROBE_BODY)})",
            _buffer_remedy(s),
            sent=answer.sent,
        )


def _buffer_remedy(s: Session) -> str:
    said = "Each layer is held on the front until complete: slow pushes, timeouts on big layers, disk use."
    if s.front() == "nginx":
        return said + "\nnginx: proxy_request_buffering off; (and proxy_http_version 1.1;) in the location."
    return said + "\nnginx: proxy_request_buffering off;  Traefik/HAProxy: no buffering middleware/option."


def check_idle(s: Session) -> None:
    idle = s.options.idle
    if idle <= 0:
        s.report.add("push.idle", INFO, "idle timeout: not checked (--idle 0)")
        return
    path, answer = _start(s, "idle probe")
    if path is None:
        s.report.add(
            "push.idle",
            INFO,
            f"idle timeout: cannot tell (the upload did not start: {answer.status or answer.error})",
        )
        return
    body = RandomBlob(PROBE_BODY, secrets.token_hex(4))
    answer = s.send(
        Request("PATCH", path, dict(OCTETS), body, pause_after=PROBE_BODY // 3, pause=idle), timeout=idle + 60
    )
    s.send(Request("DELETE", s.follow("PATCH", answer.header("location")) or path))
    if answer.status == 202 and answer.pause_event is None:
        s.report.add("push.idle", OK, f"a pause of {idle:g} s mid-body was held (--idle for a longer one)")
        return
    if answer.pause_event is not None and (answer.status is None or answer.status == 408):
        waited = answer.pause_event
        s.report.add(
            "push.idle",
            FAIL,
            f"{_name(s)} cut the connection after about {waited:.0f} s without "
            f"data (a pause of {idle:g} s mid-body): its idle timeout is shorter than a slow "
            "client's pause or a big layer's finalize",
            _idle_remedy(s),
            seconds=round(waited, 1),
        )
        return
    s.report.add(
        "push.idle",
        INFO,
        f"idle timeout: cannot tell (the paused upload got {answer.status or answer.error})",
        status=answer.status,
    )


def _idle_remedy(s: Session) -> str:
    if s.front() == "nginx":
        return (
            "nginx: client_body_timeout, proxy_read_timeout and proxy_send_timeout 600s (or more) "
            "in the registry's location."
        )
    return (
        "Raise the front's idle timeouts to 10 minutes or more (nginx: client_body_timeout, "
        "proxy_read_timeout; HAProxy: timeout client/server; a cloud load balancer's idle timeout)."
    )


def check_location(s: Session) -> None:
    if not s.locations:
        s.report.add("push.location", INFO, "upload Location: none seen (no upload started)")
        return
    wrong = [(what, loc) for what, loc in s.locations if _wrong(s, loc)]
    if not wrong:
        relative = all(not urlsplit(loc).scheme for _, loc in s.locations)
        said = "relative" if relative else f"on {s.target.url('/')}"
        s.report.add("push.location", OK, f"upload Locations {said} ({len(s.locations)} seen)")
        return
    what, loc = wrong[0]
    parts = urlsplit(loc)
    shown = f"{parts.scheme}://{parts.netloc}/v2/…"
    if parts.scheme == "http":
        s.report.add(
            "push.location",
            FAIL,
            f"the {what} answer's Location is http:// ({shown}) behind a TLS "
            "front: the front does not send X-Forwarded-Proto: https",
            "Clients follow it to plain HTTP and the push fails. nginx: proxy_set_header "
            "X-Forwarded-Proto $scheme; (certproxy sets it); or REGISTRY_HTTP_HOST is an http:// URL.",
            location=shown,
        )
        return
    s.report.add(
        "push.location",
        FAIL,
        f"the {what} answer's Location names {parts.netloc}, the client used {s.target.authority} ({shown})",
        "The front does not pass the client's Host with its port (nginx: proxy_set_header Host "
        "$http_host;), or REGISTRY_HTTP_HOST names another address.",
        location=shown,
    )


def _wrong(s: Session, location: str) -> bool:
    parts = urlsplit(location)
    if not parts.scheme and not parts.netloc:
        return False
    if parts.scheme != "https":
        return True
    port = parts.port or 443
    return (parts.hostname or "").lower() != s.target.host.lower() or port != s.target.port


def check_pull(s: Session, blobs: list[RandomBlob]) -> None:
    pushed = [b for b in blobs if b.digest in s.pushed]
    if not pushed:
        s.report.add("pull.digest", INFO, "pull: nothing to pull (the push did not work)")
        return
    began, total = time.monotonic(), 0
    for blob in pushed:
        sha = hashlib.sha256()
        answer = _get(s, f"/v2/{s.repository}/blobs/{blob.digest}", sha)
        got = f"sha256:{sha.hexdigest()}"
        if answer.status != 200 or got != blob.digest:
            said = f"{answer.status or answer.error}" if answer.status != 200 else f"a digest of {got[:19]}…"
            s.report.add(
                "pull.digest",
                FAIL,
                f"pull of {blob.digest[:19]}… got {said}",
                "The front changed or cut the blob on its way back: look at its log.",
            )
            return
        total += blob.size
    seconds = time.monotonic() - began
    s.report.add(
        "pull.digest",
        OK,
        f"pulled {mib(total)} back in {seconds:.1f} s ({_rate(total, seconds)}), sha256 matches",
        seconds=round(seconds, 2),
        bytes=total,
    )


def _get(s: Session, path: str, sha: hashlib._Hash) -> Answer:
    """A blob's GET, following the registry's redirects to its storage on this origin."""
    for _ in range(3):
        answer = s.send(Request("GET", path, sink=sha.update))
        location = answer.header("location")
        if answer.status not in (301, 302, 303, 307, 308) or not location:
            return answer
        parts = urlsplit(location)
        if parts.netloc and parts.netloc != s.target.authority:
            answer.error = f"a redirect to {parts.scheme}://{parts.netloc} (storage elsewhere: not followed)"
            answer.status = None
            return answer
        path = parts.path + (f"?{parts.query}" if parts.query else "")
    return answer


def cleanup(s: Session) -> None:
    if not s.pushed:
        return
    statuses = [s.send(Request("DELETE", f"/v2/{s.repository}/blobs/{d}")).status for d in s.pushed]
    if all(code == 202 for code in statuses):
        s.report.add("cleanup", OK, f"the probe blobs are deleted from {s.repository}")
    elif 405 in statuses:
        s.report.add(
            "cleanup",
            INFO,
            f"the probe blobs stay in {s.repository}: the registry has deletes disabled",
            "REGISTRY_STORAGE_DELETE_ENABLED=true allows them; `registry garbage-collect "
            "CONFIG` frees blobs no manifest references.",
        )
    else:
        s.report.add(
            "cleanup",
            INFO,
            f"the probe blobs stay in {s.repository} (DELETE answered "
            f"{', '.join(str(c) for c in sorted(set(statuses), key=str))}: no delete right?)",
            "`registry garbage-collect CONFIG` frees blobs no manifest references.",
        )


def check_push(s: Session) -> None:
    """The whole push part, in order."""
    seed = secrets.token_hex(8)
    blobs = [RandomBlob(s.options.size, f"{seed}:chunked"), RandomBlob(s.options.size, f"{seed}:monolithic")]
    push_chunked(s, blobs[0])
    push_monolithic(s, blobs[1])
    check_cap(s)
    check_buffering(s)
    check_idle(s)
    check_location(s)
    check_pull(s, blobs)
    cleanup(s)
