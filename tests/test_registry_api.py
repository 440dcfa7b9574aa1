"""The registry API read as actions (service/access/api.py): the requests real clients
send, hostile paths and their refusals, and properties over arbitrary request lines."""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import given, settings, strategies as st

from certproxy.service.access.api import (
    Call,
    Refused,
    classify,
    error_body,
    form_body,
    valid_digest,
    valid_name,
)

DIGEST = "sha256:" + hashlib.sha256(b"a layer").hexdigest()
OTHER = "sha256:" + hashlib.sha256(b"a config").hexdigest()
ESCAPED = DIGEST.replace(":", "%3A")  # as Go's url.Values.Encode writes it
UUID = "1f3c0a9e-7b1d-4c55-9d6e-3b0f6f0e2a11"
STATE = "_state=eyJOYW1lIjoidGVhbS9hcHAiLCJVVUlEIjoiMWYzYyJ9%3D%3D"  # docker/distribution's upload state

# What docker, podman/containers-image and skopeo send, and what it is.
CLIENT_REQUESTS = [
    ("GET", "/v2/", Call("ping", "ping")),
    ("GET", "/v2", Call("ping", "ping")),
    ("HEAD", "/v2/", Call("ping", "ping")),
    # pull: manifest by tag (HEAD first), by digest, then config and layers
    ("HEAD", "/v2/library/alpine/manifests/latest", Call("pull", "manifests", "library/alpine", "latest")),
    ("GET", "/v2/library/alpine/manifests/3.20", Call("pull", "manifests", "library/alpine", "3.20")),
    ("GET", f"/v2/library/alpine/manifests/{DIGEST}", Call("pull", "manifests", "library/alpine", DIGEST)),
    ("GET", f"/v2/library/alpine/blobs/{OTHER}", Call("pull", "blobs", "library/alpine", OTHER)),
    # push: does the blob exist, start an upload, send it, finish it, then the manifest
    ("HEAD", f"/v2/library/alpine/blobs/{DIGEST}", Call("pull", "blobs", "library/alpine", DIGEST)),
    ("POST", "/v2/team/app/blobs/uploads/", Call("push", "uploads", "team/app")),
    (
        "PATCH",
        f"/v2/team/app/blobs/uploads/{UUID}?{STATE}",
        Call("push", "uploads", "team/app", UUID, query=STATE.encode()),
    ),
    (
        "PUT",
        f"/v2/team/app/blobs/uploads/{UUID}?{STATE}&digest={ESCAPED}",
        Call("push", "uploads", "team/app", UUID, query=f"{STATE}&digest={ESCAPED}".encode()),
    ),
    (  # a monolithic upload (containers-image for small blobs: POST, then one PUT with the body)
        "PUT",
        f"/v2/team/app/blobs/uploads/{UUID}?digest={DIGEST}",
        Call("push", "uploads", "team/app", UUID, query=f"digest={DIGEST}".encode()),
    ),
    ("GET", f"/v2/team/app/blobs/uploads/{UUID}", Call("push", "uploads", "team/app", UUID)),  # its status
    ("DELETE", f"/v2/team/app/blobs/uploads/{UUID}", Call("push", "uploads", "team/app", UUID)),  # cancel
    ("PUT", "/v2/team/app/manifests/v1", Call("push", "manifests", "team/app", "v1")),
    (
        "PUT",
        f"/v2/team/app/manifests/{DIGEST}",
        Call("push", "manifests", "team/app", DIGEST),
    ),  # an index's child
    # cross-repository mount, as url.Values.Encode writes it (sorted, escaped) and written plainly
    (
        "POST",
        f"/v2/mine/blobs/uploads/?from=theirs&mount={ESCAPED}",
        Call("push", "uploads", "mine", None, "theirs", DIGEST, f"from=theirs&mount={ESCAPED}".encode()),
    ),
    (
        "POST",
        f"/v2/mine/blobs/uploads/?from=library%2Falpine&mount={ESCAPED}",
        Call(
            "push",
            "uploads",
            "mine",
            None,
            "library/alpine",
            DIGEST,
            f"from=library%2Falpine&mount={ESCAPED}".encode(),
        ),
    ),
    (
        "POST",
        f"/v2/mine/blobs/uploads/?mount={DIGEST}&from=theirs",
        Call("push", "uploads", "mine", None, "theirs", DIGEST, f"mount={DIGEST}&from=theirs".encode()),
    ),
    (  # a "from" alone mounts nothing (the registry ignores it)
        "POST",
        "/v2/mine/blobs/uploads/?from=theirs",
        Call("push", "uploads", "mine", None, query=b"from=theirs"),
    ),
    # listings
    ("GET", "/v2/team/app/tags/list", Call("pull", "tags", "team/app")),
    ("GET", "/v2/team/app/tags/list?n=100", Call("pull", "tags", "team/app", query=b"n=100")),
    ("GET", "/v2/team/app/tags/list?n=100&last=v1", Call("pull", "tags", "team/app", query=b"n=100&last=v1")),
    ("GET", "/v2/_catalog", Call("catalog", "catalog")),
    ("GET", "/v2/_catalog?n=100&last=a", Call("catalog", "catalog", query=b"n=100&last=a")),
    ("GET", f"/v2/team/app/referrers/{DIGEST}", Call("pull", "referrers", "team/app", DIGEST)),
    (
        "GET",
        f"/v2/team/app/referrers/{DIGEST}?artifactType=application%2Fvnd.example.sbom",
        Call("pull", "referrers", "team/app", DIGEST, query=b"artifactType=application%2Fvnd.example.sbom"),
    ),
    # deletes
    ("DELETE", f"/v2/team/app/manifests/{DIGEST}", Call("delete", "manifests", "team/app", DIGEST)),
    ("DELETE", "/v2/team/app/manifests/v1", Call("delete", "manifests", "team/app", "v1")),
    ("DELETE", f"/v2/team/app/blobs/{DIGEST}", Call("delete", "blobs", "team/app", DIGEST)),
    # the whole name grammar, and names holding the endpoints' own words
    (
        "GET",
        "/v2/my-org/my_app__x/v1.2/a--b/manifests/1.0.0-rc.1_B",
        Call("pull", "manifests", "my-org/my_app__x/v1.2/a--b", "1.0.0-rc.1_B"),
    ),
    ("GET", "/v2/a/blobs/manifests/v1", Call("pull", "manifests", "a/blobs", "v1")),
    ("GET", "/v2/a/manifests/b/tags/list", Call("pull", "tags", "a/manifests/b")),
    ("POST", "/v2/x/blobs/uploads/blobs/uploads/", Call("push", "uploads", "x/blobs/uploads")),
    ("GET", f"/v2/tags/list/blobs/{DIGEST}", Call("pull", "blobs", "tags/list", DIGEST)),
    ("GET", "/v2/" + "a" * 255 + "/tags/list", Call("pull", "tags", "a" * 255)),  # the longest name
    (
        "GET",
        "/v2/" + "/".join(["abcdefg"] * 32) + "/tags/list",  # 255 with its slashes
        Call("pull", "tags", "/".join(["abcdefg"] * 32)),
    ),
    ("GET", "/v2/a/manifests/" + "t" * 128, Call("pull", "manifests", "a", "t" * 128)),  # the longest tag
    (  # another algorithm: the spec's general digest grammar
        "GET",
        "/v2/a/blobs/multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
        Call("pull", "blobs", "a", "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8"),
    ),
]


@pytest.mark.parametrize(
    ("method", "target", "expected"), CLIENT_REQUESTS, ids=[f"{m} {t}"[:70] for m, t, _ in CLIENT_REQUESTS]
)
def test_what_real_clients_send(method: str, target: str, expected: Call) -> None:
    assert classify(method.encode(), target.encode()) == expected


NOT_CANONICAL = Refused(400, "NAME_INVALID", "the path is not in canonical form")
DOTS = Refused(400, "NAME_INVALID", "dot segment in the path")
PERCENT = Refused(400, "NAME_INVALID", "percent-encoding in the path (the API has no escapes)")
EMPTY = Refused(400, "NAME_INVALID", "empty segment in the path")
BAD_NAME = Refused(400, "NAME_INVALID", "invalid repository name")
NO_ENDPOINT = Refused(404, "UNSUPPORTED", "no such endpoint in the registry API")
BAD_DIGEST = Refused(400, "DIGEST_INVALID", "invalid digest")
BAD_TAG = Refused(400, "TAG_INVALID", "invalid tag")

HOSTILE = [
    ("GET", "/v2/a/../b/manifests/x", DOTS),
    ("GET", "/v2/a/./b/manifests/x", DOTS),
    ("GET", "/v2/a/manifests/..", DOTS),
    ("GET", "/v2/..", DOTS),
    ("GET", "/v2/a%2Fb/manifests/x", PERCENT),
    ("GET", "/v2/a%2fb/manifests/x", PERCENT),
    ("GET", "/v2/a/%2E%2E/manifests/x", PERCENT),
    ("GET", "/v2/a/manifests/x%00", PERCENT),
    ("GET", "/v2/%61/manifests/x", PERCENT),  # "a", spelt so the registry would decode it
    ("GET", "/v2//a/manifests/x", EMPTY),
    ("GET", "/v2/a//manifests/x", EMPTY),
    ("GET", "/v2/A/manifests/x", BAD_NAME),  # upper case
    ("GET", "/v2/a-/manifests/x", BAD_NAME),
    ("GET", "/v2/_a/manifests/x", BAD_NAME),
    ("GET", "/v2/a___b/manifests/x", BAD_NAME),  # three underscores
    ("GET", "/v2/a..b/manifests/x", BAD_NAME),
    ("GET", "/v2/a\\b/manifests/x", BAD_NAME),
    ("GET", "/v2/_catalog/manifests/x", BAD_NAME),
    (
        "GET",
        "/v2/" + "a" * 256 + "/manifests/x",
        Refused(400, "NAME_INVALID", "repository name longer than 255 characters"),
    ),
    (
        "GET",
        "/v2/" + "/".join(["abcdefg"] * 32) + "x/tags/list",
        Refused(400, "NAME_INVALID", "repository name longer than 255 characters"),
    ),
    ("GET", "/v2/a/manifests/-x", BAD_TAG),
    ("GET", "/v2/a/manifests/" + "t" * 129, BAD_TAG),
    ("GET", "/v2/a/manifests/", BAD_TAG),
    ("GET", "/v2/a/manifests/sha256:abc", BAD_DIGEST),  # too short for sha256
    ("GET", "/v2/a/manifests/latest:", BAD_DIGEST),
    ("GET", "/v2/a/manifests/Sha256:" + "a" * 64, BAD_DIGEST),  # algorithms are lower case
    ("GET", "/v2/a/blobs/latest", BAD_DIGEST),
    ("GET", "/v2/a/blobs/uploads", BAD_DIGEST),  # no trailing slash: a blob called "uploads"
    ("GET", "/v2/a/blobs/sha256:" + "A" * 64, BAD_DIGEST),  # upper-case hex
    ("GET", "/v2/a/blobs/sha512:" + "a" * 64, BAD_DIGEST),  # sha512 is 128 hex digits
    ("GET", "/v2/a/referrers/v1", BAD_DIGEST),
    ("PATCH", "/v2/a/blobs/uploads/bad:id", Refused(404, "BLOB_UPLOAD_UNKNOWN", "invalid upload session id")),
    (
        "POST",
        "/v2/a/blobs/uploads/?mount=x&mount=y&from=a",
        Refused(400, "DIGEST_INVALID", "more than one mount parameter"),
    ),
    (
        "POST",
        f"/v2/a/blobs/uploads/?mount={DIGEST}&from=b&from=c",
        Refused(400, "NAME_INVALID", "more than one from parameter"),
    ),
    (  # the same key, spelt with an escape: still a second mount
        "POST",
        f"/v2/a/blobs/uploads/?mount={DIGEST}&%6Dount={OTHER}&from=b",
        Refused(400, "DIGEST_INVALID", "more than one mount parameter"),
    ),
    ("POST", f"/v2/a/blobs/uploads/?mount={DIGEST}", Refused(400, "UNSUPPORTED", "mount without from")),
    (
        "POST",
        f"/v2/a/blobs/uploads/?mount={DIGEST}&from=B",
        Refused(400, "NAME_INVALID", "invalid repository name in from"),
    ),
    (
        "POST",
        f"/v2/a/blobs/uploads/?mount={DIGEST}&from=b/../c",
        Refused(400, "NAME_INVALID", "invalid repository name in from"),
    ),
    (
        "POST",
        "/v2/a/blobs/uploads/?mount=sha256:abc&from=b",
        Refused(400, "DIGEST_INVALID", "invalid digest in mount"),
    ),
    ("POST", "/v2/a/blobs/uploads/?mount=&from=b", Refused(400, "DIGEST_INVALID", "invalid digest in mount")),
    (
        "POST",
        f"/v2/a/blobs/uploads/?mount={DIGEST};&from=b",
        Refused(400, "UNSUPPORTED", "a ';' in the query of an upload's start"),
    ),
    (
        "POST",
        "/v2/a/blobs/uploads/?mount=%zz&from=b",
        Refused(400, "UNSUPPORTED", "a malformed escape in the query of an upload's start"),
    ),
    (
        "POST",
        "/v2/a/manifests/v1",
        Refused(405, "UNSUPPORTED", "POST is not a method of the manifests endpoint"),
    ),
    (
        "PUT",
        f"/v2/a/blobs/{DIGEST}",
        Refused(405, "UNSUPPORTED", "PUT is not a method of the blobs endpoint"),
    ),
    (
        "GET",
        "/v2/a/blobs/uploads/",
        Refused(405, "UNSUPPORTED", "GET is not a method of the uploads endpoint"),
    ),
    (
        "POST",
        f"/v2/a/blobs/uploads/{UUID}",
        Refused(405, "UNSUPPORTED", "POST is not a method of the uploads endpoint"),
    ),
    ("DELETE", "/v2/a/tags/list", Refused(405, "UNSUPPORTED", "DELETE is not a method of the tags endpoint")),
    ("DELETE", "/v2/_catalog", Refused(405, "UNSUPPORTED", "DELETE is not a method of the catalog endpoint")),
    ("OPTIONS", "/v2/", Refused(405, "UNSUPPORTED", "OPTIONS is not a method of the ping endpoint")),
    (
        "get",
        "/v2/a/manifests/v1",
        Refused(405, "UNSUPPORTED", "get is not a method of the manifests endpoint"),
    ),
    ("GET", "/v2/_oci/ext/discover", NO_ENDPOINT),
    ("GET", "/v2/a/manifests/x/", NO_ENDPOINT),
    ("GET", "/v2/_catalog/", NO_ENDPOINT),
    ("GET", "/v2/a/tags", NO_ENDPOINT),
    ("GET", "/v2/manifests/x", NO_ENDPOINT),
    ("GET", "/v2/a", NO_ENDPOINT),
    # outside /v2 as written, inside it once decoded and cleaned as the registry's router does
    ("GET", "//v2/a/manifests/x", NOT_CANONICAL),
    ("GET", "/./v2/a/manifests/x", NOT_CANONICAL),
    ("GET", "/x/../v2/a/manifests/x", NOT_CANONICAL),
    ("GET", "/%762/a/manifests/x", NOT_CANONICAL),
    ("GET", "/v2%2Fa/manifests/x", NOT_CANONICAL),
    ("GET", "/%2E/v2", NOT_CANONICAL),
    ("GET", "v2/a/manifests/x", NOT_CANONICAL),
]


@pytest.mark.parametrize(
    ("method", "target", "expected"), HOSTILE, ids=[f"{m} {t}"[:70] for m, t, _ in HOSTILE]
)
def test_hostile_paths_are_refused_in_the_registry_dialect(
    method: str, target: str, expected: Refused
) -> None:
    assert classify(method.encode(), target.encode()) == expected


@pytest.mark.parametrize(
    "target",
    [
        "/",
        "/token?service=reg&scope=repository:a:pull",
        "/v2foo",
        "/V2/",
        "/healthz",
        "/v3/",
        "",
        "*",
        "/v20/a",
    ],
)
def test_targets_outside_v2_are_not_the_registry_api(target: str) -> None:
    assert classify(b"GET", target.encode()) is None


def test_the_error_body_is_the_distribution_format() -> None:
    body = error_body("DENIED", "requested access to the resource is denied")
    assert body == b'{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}\n'
    detail = [{"Type": "repository", "Name": "team/app", "Action": "push"}]
    body = error_body("UNAUTHORIZED", "authentication required", detail)
    assert json.loads(body) == {
        "errors": [{"code": "UNAUTHORIZED", "message": "authentication required", "detail": detail}]
    }
    assert body.endswith(b"}\n") and b" " not in body.replace(b"authentication required", b"")
    assert error_body("NAME_INVALID", "caf\u00e9 \u2028").isascii()


@pytest.mark.parametrize(
    ("content_type", "read_as_form"),
    [
        (None, False),
        (b"application/octet-stream", False),
        (b"application/vnd.oci.image.manifest.v1+json", False),
        (b"application/x-www-form-urlencoded", True),
        (b"Application/X-WWW-Form-Urlencoded; charset=utf-8", True),
        (b" multipart/form-data; boundary=x", True),
    ],
)
def test_bodies_the_registry_would_read_as_form_fields(
    content_type: bytes | None, read_as_form: bool
) -> None:
    assert form_body(content_type) is read_as_form


# --- properties -----------------------------------------------------------------------------

NAME = re.compile(r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*")
METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"get", b"BREW"]
PIECES = [
    b"a",
    b"b0",
    b"library",
    b"alpine",
    b"my-app",
    b"a__b",
    b"a.b",
    b"a_b",
    b"A",
    b"a-",
    b"_catalog",
    b"manifests",
    b"blobs",
    b"uploads",
    b"tags",
    b"list",
    b"referrers",
    b"v2",
    b"latest",
    b"v1.0",
    DIGEST.encode(),
    b"sha256:abc",
    UUID.encode(),
    b"..",
    b".",
    b"",
    b"%2F",
    b"%2e%2e",
    b"%",
    b";",
    b"?",
    b"#",
    b"\\",
    b"\x00",
    b"\xff",
    b" ",
    b"a" * 130,
]
QUERIES = [
    b"",
    b"?",
    b"?n=1",
    b"?mount=" + DIGEST.encode() + b"&from=a",
    b"?from=a%2Fb&mount=" + DIGEST.encode(),
    b"?mount=x&mount=y",
    b"?mount=" + DIGEST.encode(),
    b"?from=../x&mount=" + DIGEST.encode(),
    b"?%",
    b"?a;b",
]

# Names from the whole grammar, mixed with pieces a hostile client might try, before an
# endpoint's tail: most targets are close to the API, so that many are accepted.
LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"
WORD = LOWER + "ABCDEFGHIJKLMNOPQRSTUVWXYZ_"
alnum = st.text(alphabet=LOWER, min_size=1, max_size=6).map(str.encode)
separators = st.sampled_from([b".", b"_", b"__", b"-", b"--", b"-----"])
# a name segment: alphanumerics joined by one of the grammar's separators
components = st.builds(
    lambda first, rest: first + b"".join(sep + part for sep, part in rest),
    alnum,
    st.lists(st.tuples(separators, alnum), max_size=3),
)
tags = st.builds(
    lambda first, rest: (first + rest).encode(),
    st.sampled_from(WORD),
    st.text(alphabet=WORD + ".-", max_size=127),
)
digests = st.builds(
    lambda algorithm, encoded: algorithm + b":" + encoded.encode(),
    st.lists(alnum, min_size=1, max_size=2).map(b"+".join),
    st.text(alphabet=WORD + "=-", min_size=1, max_size=70),
)
references = st.one_of(
    st.sampled_from([DIGEST.encode(), UUID.encode(), b"latest", b"sha256:abc", b"..", b"", b"%2F", b"a/b"]),
    tags,
    digests,
)
tails = st.one_of(
    *(
        st.builds(lambda r, e=e: e + r, references)
        for e in (b"manifests/", b"blobs/", b"blobs/uploads/", b"referrers/")
    ),
    st.sampled_from([b"blobs/uploads/", b"blobs/uploads/", b"tags/list", b"_catalog", b""]),
    st.lists(st.sampled_from(PIECES), max_size=3).map(b"/".join),
)


@st.composite
def names(draw: st.DrawFn) -> list[bytes]:
    """A name's segments from the grammar; half of the time with a hostile piece among them."""
    parts = draw(st.lists(components, min_size=1, max_size=4))
    if draw(st.booleans()):
        parts.insert(draw(st.integers(0, len(parts))), draw(st.sampled_from(PIECES)))
    return parts


api_targets = st.builds(  # under /v2/ as written
    lambda parts, tail, query: b"/v2/" + b"/".join([*parts, tail]) + query,
    names(),
    tails,
    st.sampled_from(QUERIES),
)
structured = st.one_of(
    api_targets,
    st.builds(
        lambda prefix, parts, tail, query: prefix + b"/".join([*parts, tail]) + query,
        st.sampled_from([b"/v2", b"//v2/", b"/", b"/x/../v2/", b"/%762/", b"/./v2/", b"/v2%2F"]),
        names(),
        tails,
        st.sampled_from(QUERIES),
    ),
)
methods = st.one_of(st.sampled_from(METHODS), st.binary(max_size=10))
targets = st.one_of(st.binary(max_size=300), structured)


def check(result: Call | Refused | None, target: bytes) -> None:
    path = target.partition(b"?")[0]
    if result is None:
        # not the API: not even once decoded and cleaned, as the registry's router sees it
        cleaned = posixpath.normpath(b"/" + unquote_to_bytes(path).lstrip(b"/"))
        assert not (cleaned == b"/v2" or cleaned.startswith(b"/v2/")), target
        return
    if isinstance(result, Refused):
        assert 400 <= result.status < 500 and result.code.isupper() and result.message
        return
    assert result.action in ("ping", "pull", "push", "delete", "catalog")
    assert path == b"/v2" or path.startswith(b"/v2/")
    assert b"%" not in path and b"//" not in path[1:-1]
    for name in (result.repository, result.mount_from):
        if name is not None:
            assert NAME.fullmatch(name) and len(name) <= 255, name
            assert ".." not in name and "%" not in name
            assert valid_name(name.encode())
    if result.repository is not None:
        assert path.startswith(b"/v2/" + result.repository.encode() + b"/")
    if result.reference is not None:
        assert (
            "/" not in result.reference
            and "%" not in result.reference
            and result.reference not in (".", "..")
        )
        assert path.endswith(b"/" + result.reference.encode())
    assert (result.mount_from is None) == (result.mount_digest is None)
    if result.mount_digest is not None:
        assert result.kind == "uploads" and result.action == "push"
        assert valid_digest(result.mount_digest.encode())


@settings(max_examples=3000, deadline=None)
@given(methods, targets)
def test_classify_never_raises_and_every_call_names_a_valid_repository(method: bytes, target: bytes) -> None:
    check(classify(method, target), target)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"]), api_targets)
def test_a_call_is_what_its_path_says(method: bytes, target: bytes) -> None:
    """A structured target that is accepted reads back to the same request: its path is
    /v2/, the repository, the endpoint and the reference, nothing else."""
    result = classify(method, target)
    check(result, target)
    if not isinstance(result, Call) or result.kind in ("ping", "catalog"):
        return
    if result.kind == "tags":
        rebuilt = f"/v2/{result.repository}/tags/list"
    elif result.kind == "uploads":
        rebuilt = f"/v2/{result.repository}/blobs/uploads/{result.reference or ''}"
    else:
        rebuilt = f"/v2/{result.repository}/{result.kind}/{result.reference}"
    assert target.partition(b"?")[0] == rebuilt.encode()


KEYS = [b"mount", b"from", b"%6Dount", b"fr%6Fm", b"Mount", b"digest", b"_state", b""]
VALUES = [
    DIGEST.encode(),
    ESCAPED.encode(),
    b"theirs",
    b"library%2Falpine",
    b"a/b",
    b"A",
    b"",
    b"x",
    b"%zz",
    b"a+b",
]
pairs = st.builds(
    lambda key, sep, value: key + sep + value,
    st.sampled_from(KEYS),
    st.sampled_from([b"=", b"=", b""]),
    st.sampled_from(VALUES),
)


@st.composite
def mount_queries(draw: st.DrawFn) -> bytes:
    """Queries of an upload's start: often a well-formed mount, among other pairs."""
    chosen = draw(st.lists(pairs, max_size=3))
    if draw(st.booleans()):
        chosen.append(b"mount=" + draw(st.sampled_from([DIGEST.encode(), ESCAPED.encode(), OTHER.encode()])))
    if draw(st.booleans()):
        chosen.append(b"from=" + draw(st.one_of(components, st.sampled_from([b"library%2Falpine", b"a+b"]))))
    return b"&".join(draw(st.permutations(chosen)))


@settings(max_examples=1000, deadline=None)
@given(components, mount_queries())
def test_a_mount_is_what_a_form_parser_reads_in_the_query(name: bytes, query: bytes) -> None:
    """An accepted upload's start mounts exactly the one ``mount`` and ``from`` that a
    query parser finds (Python's here, against certproxy's own reading of Go's rules)."""
    from urllib.parse import parse_qsl

    target = b"/v2/" + name + b"/blobs/uploads/?" + query
    result = classify(b"POST", target)
    check(result, target)
    if not isinstance(result, Call):
        return
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
    mounts = [value for key, value in pairs if key == "mount"]
    sources = [value for key, value in pairs if key == "from"]
    if result.mount_digest is None:
        assert mounts == []
    else:
        assert mounts == [result.mount_digest] and sources == [result.mount_from]
