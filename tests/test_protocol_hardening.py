"""The data plane in-process, against peers that try to steer it: a Connection list
that names the fields framing a message (both ways), an upstream whose answer is
malformed or unexpected (never a retry: the request was sent once and stays sent
once), and an upstream silent for minutes before it answers a final PUT."""

from __future__ import annotations

import asyncio
import logging

import pytest

from certproxy.proxy.upstream import MAX_INTERIM, PoolSettings
from certproxy.proxy.wire import MAX_HEAD_SIZE
from certproxy.service.config import Config
from support.inproc import Plane, make_plane, settle
from test_protocol import GET, OK, responses

SMUGGLED = b"GET /SMUGGLED HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"


def requests_seen(plane: Plane) -> list[bytes]:
    """The request lines every upstream connection received (what was not taken yet)."""
    seen = b"".join(t.take() for t in plane.upstreams)
    return [line for line in seen.split(b"\r\n") if line.endswith(b" HTTP/1.1")]


# -- Connection never removes what frames a request -------------------------------

@pytest.mark.parametrize("request_bytes, named", [
    # the body is a whole request: dropping Content-Length would make it a second one
    (b"POST /v2/a HTTP/1.1\r\nHost: registry.test\r\nConnection: Content-Length\r\n"
     b"Content-Length: %d\r\n\r\n%s" % (len(SMUGGLED), SMUGGLED), b"content-length"),
    # the start of a request, which would wait upstream for the next client's head
    (b"POST /v2/a HTTP/1.1\r\nHost: registry.test\r\nConnection: keep-alive, content-length\r\n"
     b"Content-Length: 23\r\n\r\nGET /SMUGGLED HTTP/1.1\r\n", b"content-length"),
    (b"GET /v2/ HTTP/1.1\r\nHost: registry.test\r\nConnection: keep-alive, Host\r\n\r\n", b"host"),
    (b"PATCH /v2/a/blobs/uploads/u HTTP/1.1\r\nHost: registry.test\r\nConnection: Transfer-Encoding\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", b"transfer-encoding"),
])
async def test_a_connection_naming_a_framing_field_is_refused_and_nothing_is_forwarded(
        request_bytes: bytes, named: bytes) -> None:
    plane = make_plane()
    conn, client = plane.connect_client()
    conn.data_received(request_bytes)
    await settle()
    out = client.take()
    (status, head, body), = responses(out)
    assert status == 400 and b"connection: close" in head
    assert body == b"certproxy: 400 Bad Request: Connection must not name %s\n" % named
    assert client.closed and plane.upstreams == []  # no upstream connection was even opened


async def test_a_refused_request_behind_others_is_answered_in_its_turn() -> None:
    """Pipelined: the request before it gets its answer first; nothing after it is read."""
    plane = make_plane()
    conn, client = plane.connect_client()
    conn.data_received(GET + b"GET /v2/ HTTP/1.1\r\nHost: reg\r\nConnection: Host\r\n\r\n" + GET)
    await settle()
    assert requests_seen(plane) == [b"GET /v2/ HTTP/1.1"]
    plane.upstream_protocol().data_received(OK)
    await settle()
    assert [r[0] for r in responses(client.take())] == [200, 400]
    assert client.closed and requests_seen(plane) == []


async def test_nothing_in_the_same_read_after_a_closing_answer_is_forwarded() -> None:
    """The answer closes the connection while llhttp still has the read's next request."""
    plane = make_plane()
    conn, client = plane.connect_client()
    conn.data_received(b"GET /v2/ HTTP/1.1\r\nHost: reg\r\nConnection: Host\r\n\r\n" + GET + GET)
    await settle()
    assert [r[0] for r in responses(client.take())] == [400]
    assert client.closed and plane.upstreams == []


async def test_fields_certproxy_sets_stay_whatever_connection_names() -> None:
    plane = make_plane()
    conn, client = plane.connect_client()
    conn.data_received(b"GET /v2/ HTTP/1.1\r\nHost: reg\r\nX-Forwarded-For: 6.6.6.6\r\n"
                       b"Connection: X-Forwarded-For, X-Real-IP, X-Forwarded-Proto, X-Hop\r\nX-Hop: 1\r\n\r\n")
    await settle()
    sent = plane.upstreams[0].take()
    assert b"\r\nHost: reg\r\n" in sent and b"X-Hop" not in sent and b"6.6.6.6" not in sent
    assert b"X-Forwarded-For: 192.0.2.7\r\nX-Real-IP: 192.0.2.7\r\nX-Forwarded-Proto: https\r\n" in sent


@pytest.mark.parametrize("answer, body", [
    (b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello", b"hello"),
    (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
])
async def test_an_upstream_naming_its_framing_in_connection_keeps_its_framing(answer: bytes, body: bytes) -> None:
    plane = make_plane()
    conn, client = plane.connect_client()
    conn.data_received(GET)
    await settle()
    plane.upstream_protocol().data_received(answer)
    conn.data_received(GET)  # the connection goes on: the answer was framed
    await settle()
    plane.upstream_protocol().data_received(OK)
    assert [(r[0], r[2]) for r in responses(client.take())] == [(200, body), (200, b"ok")]
    assert len(plane.upstreams) == 1 and not client.closed


# -- a malformed or unexpected upstream answer is a 502, never a retry --------------

MALFORMED = {
    "invalid status line": b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    "not HTTP": b"SSH-2.0-OpenSSH_9.2\r\n",
    "unsolicited 101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nxx",
    "1xx flood": b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * (MAX_INTERIM + 5),
    "overlong head": b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 8000 + b"\r\n" * 1
                     + b"".join(b"X-%d: %s\r\n" % (i, b"b" * 8000) for i in range(MAX_HEAD_SIZE // 8000)),
    "both framings": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "two content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
}


async def pooled_request(plane: Plane) -> tuple[object, object]:
    """A client whose second GET goes out on a pooled connection (the case that used to be retried)."""
    conn, client = plane.connect_client()
    conn.data_received(GET)
    await settle()
    plane.upstream_protocol().data_received(OK)
    client.take()
    plane.upstreams[0].take()
    conn.data_received(GET)
    await settle()
    return conn, client


@pytest.mark.parametrize("answer", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_a_malformed_answer_is_a_502_sent_upstream_once(answer: bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    errors: list[object] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    plane = make_plane()
    conn, client = await pooled_request(plane)
    up = plane.upstream_protocol()
    assert up.reused
    for i in range(0, len(answer), 4096):  # as reads of a socket would bring it
        up.data_received(answer[i:i + 4096])
    await settle()
    assert requests_seen(plane) == [b"GET /v2/ HTTP/1.1"]  # the one already taken: no resend
    assert len(plane.upstreams) == 1 and plane.upstreams[0].aborted  # the connection ended
    (status, _, body), = [r for r in responses(client.take()) if r[0] >= 200]
    assert status == 502 and body.startswith(b"certproxy: 502 Bad Gateway: ")
    assert "sent a malformed response" in caplog.text
    assert errors == [] and "Traceback" not in caplog.text  # nothing escaped a callback
    conn.data_received(GET)  # the client connection goes on, on a new upstream connection
    await settle()
    assert len(plane.upstreams) == 2 and requests_seen(plane) == [b"GET /v2/ HTTP/1.1"]


async def test_a_head_over_the_limit_in_one_read_is_a_502_without_waiting_for_more() -> None:
    """A socket read brings up to 256 KiB: a head that has not ended within it is not
    waited for (llhttp would keep the unfinished field)."""
    plane = make_plane()
    conn, client = await pooled_request(plane)
    plane.upstream_protocol().data_received(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (MAX_HEAD_SIZE + 10))
    await settle()
    assert [r[0] for r in responses(client.take())] == [502] and plane.upstreams[0].aborted


async def test_a_malformed_body_after_the_head_cuts_the_client_and_is_not_resent() -> None:
    plane = make_plane()
    conn, client = await pooled_request(plane)
    plane.upstream_protocol().data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                             b"2\r\nok\r\nzz\r\n")
    await settle()
    out = client.take()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\n0\r\n\r\n" not in out  # never looks whole
    assert client.aborted and plane.upstreams[0].aborted
    assert len(plane.upstreams) == 1 and requests_seen(plane) == [b"GET /v2/ HTTP/1.1"]  # sent once


async def test_a_head_in_pieces_keeps_its_reason_phrase() -> None:
    plane = make_plane()
    conn, client = plane.connect_client()
    conn.data_received(GET)
    await settle()
    for piece in (b"HTTP/1.1 201 Cre", b"ated\r\nContent-Length: 0\r\n\r\n"):
        plane.upstream_protocol().data_received(piece)
    assert client.take().startswith(b"HTTP/1.1 201 Created\r\n")


# -- a registry may be silent for minutes before it answers a final PUT --------------

async def test_the_default_read_timeout_waits_for_a_slow_finalize() -> None:
    """The final PUT of a large layer: the registry moves and verifies the blob before it
    answers. Silent past the old default (300 s), it is still waited for; past the
    default (900 s), it is a 504."""
    assert Config().upstream_read_timeout == PoolSettings().read_timeout == 900
    plane = make_plane(settings=Config().pool_settings())
    conn, client = plane.connect_client()
    conn.data_received(b"PUT /v2/r/blobs/uploads/u?digest=sha256:00 HTTP/1.1\r\nHost: reg\r\n"
                       b"Content-Length: 4\r\n\r\nlast")
    await settle()
    plane.clock.now += 600
    plane.pool.sweep(plane.clock.now)
    assert client.take() == b"" and not plane.upstreams[0].aborted
    plane.upstream_protocol().data_received(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert [r[0] for r in responses(client.take())] == [201]
    conn.data_received(b"PUT /v2/r/manifests/v1 HTTP/1.1\r\nHost: reg\r\nContent-Length: 2\r\n\r\n{}")
    await settle()
    plane.pool.sweep(plane.clock.now + 901)
    assert [r[0] for r in responses(client.take())] == [504]
