"""The registry API read as actions: which repository a request is about and what it
does there (the OCI distribution specification v1.1, which is the Docker registry v2
API plus the referrers endpoint).

How this works: ``classify(method, target)`` reads the request line only, as bytes,
and never decodes the path: the distribution grammar has no escapes, so a path that
needs decoding is not the API. The query is split off first (at the first ``?``) and
kept; only an upload's start reads it, for the cross-repository mount. The endpoint is
read from the end of the path, as the registry's own router matches it, since a
repository name may itself hold a segment such as ``manifests`` or ``blobs``
(``/v2/a/blobs/manifests/v1`` is manifest ``v1`` of repository ``a/blobs``)::

    /v2/  and  /v2                         GET HEAD               ping
    /v2/_catalog                           GET HEAD               catalog
    /v2/NAME/manifests/TAG-OR-DIGEST       GET HEAD               pull
                                           PUT                    push
                                           DELETE                 delete
    /v2/NAME/blobs/DIGEST                  GET HEAD               pull
                                           DELETE                 delete
    /v2/NAME/blobs/uploads/                POST                   push (start; mount)
    /v2/NAME/blobs/uploads/SESSION         GET PATCH PUT DELETE   push (status, continue,
                                                                  finish, cancel)
    /v2/NAME/tags/list                     GET HEAD               pull
    /v2/NAME/referrers/DIGEST              GET HEAD               pull

An upload's status (``GET`` of its session) is push: only the pusher has a session.

The answer is a ``Call``, a ``Refused`` or None. None: the target is not under
``/v2`` (not the registry API; the caller decides). The target is the origin-form
one that goes upstream (``proxy.wire.origin_form`` has reduced an absolute-form
target). A target outside ``/v2`` that a server which decodes and cleans paths
(the registry is written in Go: it decodes ``%XX`` once and cleans ``.``, ``..`` and
``//``) would still route under ``/v2/`` (``/%762/…``, ``//v2/…``, ``/x/../v2/…``) is
refused, not None, so the caller never waves it through as "not the API".

Refusals, with the distribution specification's error codes (the statuses are those
the registry registers for them, except where said):

- 400 ``NAME_INVALID``: the path is not in canonical form (a ``%``, a ``.`` or ``..``
  segment, an empty segment), a repository name the grammar rejects, longer than 255
  characters, or missing; a ``from`` of a mount that is not a valid name, or given
  twice. The registry has no code for a malformed path; the name is what such a path
  hides, and an invalid name is what it is read as.
- 400 ``TAG_INVALID``: a manifest reference without ``:`` that is not a valid tag.
- 400 ``DIGEST_INVALID``: a reference with ``:`` (manifests), any blob or referrers
  reference, or a mount's digest, that is not a valid digest; ``mount`` given twice.
  ``sha256`` and ``sha512`` digests must have their exact length in lower-case hex
  (the registered algorithms of the OCI image spec); other algorithms the generic
  grammar ``[a-z0-9]+([+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+``.
- 404 ``BLOB_UPLOAD_UNKNOWN``: an upload session id outside the registry's own
  grammar ``[a-zA-Z0-9_.=-]+``: no session has such an id.
- 404 ``UNSUPPORTED``: a path under ``/v2/`` that is no endpoint of the API (an
  extension, a trailing slash where none belongs). The code says what it is: an
  operation the registry does not offer; the status is the one an unknown endpoint
  gets.
- 405 ``UNSUPPORTED``: a method the endpoint does not define (``POST`` to a
  manifest, ``PUT`` of a blob, ``OPTIONS``): the registry's own status for the code.
- 400 ``UNSUPPORTED``: an upload's start whose query does not parse the way the
  registry parses it (a ``;``, a malformed ``%`` escape), or that names ``mount``
  without ``from``: OCI 1.1 lets a registry then look for the blob in any repository
  (automatic content discovery), which no policy could check.

A mount (``POST /v2/NAME/blobs/uploads/?mount=DIGEST&from=OTHER``) is read as the
registry reads it: query keys and values percent-decoded, ``+`` as a space, the first
of repeated keys (certproxy refuses repeated ones). The registry also reads ``mount``
and ``from`` from a form-encoded request body (Go's ``FormValue``): ``form_body``
tells the caller when a body would be read that way, and such an upload's start must
not reach the registry unchecked.

``error_body`` writes the distribution error format, compact JSON (ASCII, ``detail``
left out when None, as the registry leaves it out), ending with a newline as the
registry's own bodies do.
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

NAME_MAX = 255

# One segment of a repository name (the distribution grammar's path-component).
_COMPONENT = re.compile(rb"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(rb"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(rb"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")
_REGISTERED = {b"sha256": re.compile(rb"[a-f0-9]{64}"), b"sha512": re.compile(rb"[a-f0-9]{128}")}
_SESSION = re.compile(rb"[a-zA-Z0-9_.=-]+")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")

_READ = {b"GET": "pull", b"HEAD": "pull"}
# Endpoint -> method -> action; "uploads/" is an upload's start, "uploads" its session.
_METHODS: dict[str, dict[bytes, str]] = {
    "ping": {b"GET": "ping", b"HEAD": "ping"},
    "catalog": {b"GET": "catalog", b"HEAD": "catalog"},
    "manifests": {**_READ, b"PUT": "push", b"DELETE": "delete"},
    "blobs": {**_READ, b"DELETE": "delete"},
    "uploads/": {b"POST": "push"},
    "uploads": {b"GET": "push", b"PATCH": "push", b"PUT": "push", b"DELETE": "push"},
    "tags": dict(_READ),
    "referrers": dict(_READ),
}


class Call(NamedTuple):
    """A request of the registry API. ``action``: ``ping``, ``pull``, ``push``,
    ``delete`` or ``catalog``. ``kind``: the endpoint (``ping``, ``catalog``,
    ``manifests``, ``blobs``, ``uploads``, ``tags``, ``referrers``). ``reference``: the
    tag or digest of a manifest, the digest of a blob or of a referrers subject, an
    upload's session id (None at an upload's start). ``mount_from``/``mount_digest``:
    both set for a cross-repository mount, else both None. ``query``: the raw query
    after ``?`` (the catalog's and tag list's ``n``/``last`` stay in it)."""

    action: str
    kind: str
    repository: str | None = None
    reference: str | None = None
    mount_from: str | None = None
    mount_digest: str | None = None
    query: bytes = b""


class Refused(NamedTuple):
    """Not a request of the API: answer ``status`` with ``error_body(code, message)``."""

    status: int
    code: str
    message: str


def classify(method: bytes, target: bytes) -> Call | Refused | None:
    """What a request does to which repository, why it is refused, or None when the
    target is not under ``/v2`` (see the module's docstring)."""
    path, _, query = target.partition(b"?")
    if path != b"/v2" and not path.startswith(b"/v2/"):
        if _reaches_v2(path):
            return Refused(400, "NAME_INVALID", "the path is not in canonical form")
        return None
    if b"%" in path:
        return Refused(400, "NAME_INVALID", "percent-encoding in the path (the API has no escapes)")
    segments = path[4:].split(b"/") if len(path) > 4 else []
    if not segments:
        return _method(method, "ping", Call("ping", "ping", query=query))
    if b"" in segments[:-1]:
        return Refused(400, "NAME_INVALID", "empty segment in the path")
    if b"." in segments or b".." in segments:
        return Refused(400, "NAME_INVALID", "dot segment in the path")
    if segments == [b"_catalog"]:
        return _method(method, "catalog", Call("catalog", "catalog", query=query))

    count = len(segments)
    last = segments[-1]
    if count >= 3 and segments[-1] == b"list" and segments[-2] == b"tags":
        endpoint, name_end, reference = "tags", -2, None
    elif count >= 4 and segments[-2] == b"uploads" and segments[-3] == b"blobs":
        endpoint, name_end, reference = ("uploads" if last else "uploads/"), -3, last
    elif count >= 3 and segments[-2] in (b"manifests", b"blobs", b"referrers"):
        endpoint, name_end, reference = segments[-2].decode("ascii"), -2, last
    else:
        return Refused(404, "UNSUPPORTED", "no such endpoint in the registry API")

    repository = _name(segments[:name_end])
    if isinstance(repository, Refused):
        return repository
    ref: str | None = None
    if endpoint != "tags" and endpoint != "uploads/":
        checked = _reference(endpoint, reference or b"")
        if isinstance(checked, Refused):
            return checked
        ref = checked
    kind = endpoint.rstrip("/")
    action = _METHODS[endpoint].get(method)
    if action is None:
        return _not_allowed(method, kind)
    if endpoint != "uploads/":
        return Call(action, kind, repository, ref, query=query)
    mount = _mount(query)
    if isinstance(mount, Refused):
        return mount
    source, digest = mount or (None, None)
    return Call(action, kind, repository, None, source, digest, query)


def form_body(content_type: bytes | None) -> bool:
    """Whether the registry reads a request body with this ``Content-Type`` (its first
    value) as form fields, where ``mount`` and ``from`` count as much as in the query.
    Errs towards True: parameters and case are ignored, as Go's parser ignores them."""
    if content_type is None:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media in (b"application/x-www-form-urlencoded", b"multipart/form-data")


def error_body(code: str, message: str, detail: object = None) -> bytes:
    """The distribution error format: ``{"errors":[{"code":…,"message":…}]}`` plus
    ``"detail"`` when given; compact ASCII JSON ending with a newline."""
    error: dict[str, object] = {"code": code, "message": message}
    if detail is not None:
        error["detail"] = detail
    return json.dumps({"errors": [error]}, separators=(",", ":")).encode("ascii") + b"\n"


def valid_name(name: bytes) -> bool:
    """Whether ``name`` is a repository name of the distribution grammar."""
    return len(name) <= NAME_MAX and all(_COMPONENT.fullmatch(part) for part in name.split(b"/"))


def valid_digest(digest: bytes) -> bool:
    """Whether ``digest`` is ``algorithm:encoded`` (exact length for sha256/sha512)."""
    match = _DIGEST.fullmatch(digest)
    if match is None:
        return False
    exact = _REGISTERED.get(match.group(1))
    return exact is None or exact.fullmatch(match.group(2)) is not None


def _method(method: bytes, kind: str, call: Call) -> Call | Refused:
    return call if method in _METHODS[kind] else _not_allowed(method, kind)


def _not_allowed(method: bytes, kind: str) -> Refused:
    shown = method.decode("ascii", "replace")[:20]
    return Refused(405, "UNSUPPORTED", f"{shown} is not a method of the {kind} endpoint")


def _name(segments: list[bytes]) -> str | Refused:
    if not segments:
        return Refused(400, "NAME_INVALID", "no repository name")
    for segment in segments:
        if not _COMPONENT.fullmatch(segment):
            return Refused(400, "NAME_INVALID", "invalid repository name")
    name = b"/".join(segments)
    if len(name) > NAME_MAX:
        return Refused(400, "NAME_INVALID", f"repository name longer than {NAME_MAX} characters")
    return name.decode("ascii")


def _reference(endpoint: str, reference: bytes) -> str | Refused:
    if endpoint == "uploads":
        if not _SESSION.fullmatch(reference):
            return Refused(404, "BLOB_UPLOAD_UNKNOWN", "invalid upload session id")
    elif endpoint == "manifests" and b":" not in reference:
        if not _TAG.fullmatch(reference):
            return Refused(400, "TAG_INVALID", "invalid tag")
    elif not valid_digest(reference):
        return Refused(400, "DIGEST_INVALID", "invalid digest")
    return reference.decode("ascii")


def _unquote(raw: bytes) -> bytes | None:
    """A query key or value as Go's ``url.QueryUnescape`` reads it; None where it fails."""
    if _BAD_ESCAPE.search(raw):
        return None
    return unquote_to_bytes(raw.replace(b"+", b" "))


def _mount(query: bytes) -> tuple[str, str] | Refused | None:
    """The ``from`` and ``mount`` of an upload's start, or None when it mounts nothing."""
    mounts: list[bytes] = []
    sources: list[bytes] = []
    for pair in query.split(b"&"):
        if not pair:
            continue
        if b";" in pair:
            return Refused(400, "UNSUPPORTED", "a ';' in the query of an upload's start")
        raw_key, _, raw_value = pair.partition(b"=")
        key, value = _unquote(raw_key), _unquote(raw_value)
        if key is None or value is None:
            return Refused(400, "UNSUPPORTED", "a malformed escape in the query of an upload's start")
        if key == b"mount":
            mounts.append(value)
        elif key == b"from":
            sources.append(value)
    if len(mounts) > 1:
        return Refused(400, "DIGEST_INVALID", "more than one mount parameter")
    if len(sources) > 1:
        return Refused(400, "NAME_INVALID", "more than one from parameter")
    if not mounts:
        return None  # a "from" alone: the registry ignores it
    if not sources:
        return Refused(400, "UNSUPPORTED", "mount without from")
    if not valid_digest(mounts[0]):
        return Refused(400, "DIGEST_INVALID", "invalid digest in mount")
    if not valid_name(sources[0]):
        return Refused(400, "NAME_INVALID", "invalid repository name in from")
    return sources[0].decode("ascii"), mounts[0].decode("ascii")


def without_mount(target: bytes) -> bytes:
    """An upload's start without its ``mount`` and ``from``: a plain upload. The keys
    are compared decoded, as the registry reads them (``%6Dount`` is ``mount`` to it);
    a pair whose key does not decode is dropped too."""
    path, _, query = target.partition(b"?")
    kept = []
    for pair in query.split(b"&"):
        key = _unquote(pair.partition(b"=")[0])
        if pair and key is not None and key not in (b"mount", b"from"):
            kept.append(pair)
    return path + (b"?" + b"&".join(kept) if kept else b"")


def _reaches_v2(path: bytes) -> bool:
    """Whether ``path``, decoded once and with its dot and empty segments cleaned away
    (as the registry's router sees it), is under ``/v2``."""
    kept: list[bytes] = []
    for segment in unquote_to_bytes(path).split(b"/"):
        if segment == b"..":
            if kept:
                kept.pop()
        elif segment not in (b"", b"."):
            kept.append(segment)
    return bool(kept) and kept[0] == b"v2"
