"""The data plane's protocols in-process: bytes in through fake transports,
bytes out, an injected clock and the sweep driven directly (no sockets).
Framing, pipelining, back-pressure, every timeout, early answers, the
idempotent retry rule, refusals."""

from __future__ import annotations

import socket

import httptools
import pytest

from certproxy.proxy.routes import Limits
from certproxy.proxy.upstream import PoolSettings
from support.inproc import Plane, make_control_plane, make_plane, settle

GET = b"GET /v2/ HTTP/1.1\r\nHost: reg.example.com\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def responses(data: bytes, head_only: int = 0) -> list[tuple[int, bytes, bytes]]:
    """(status, head, body) of each response in ``data`` (the first ``head_only`` have no body)."""
    out: list[tuple[int, bytes, bytes]] = []

    class Sink:
        def __init__(self) -> None:
            self.body = b""
            self.headers: list[bytes] = []

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append(name.lower() + b": " + value)

        def on_headers_complete(self) -> None:
            if len(out) < head_only:
                out.append((parser.get_status_code(), b"\r\n".join(self.headers), b""))
                self.headers = []
                return None

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            if len(out) < head_only:
                return
            out.append((parser.get_status_code(), b"\r\n".join(self.headers), self.body))
            self.body, self.headers = b"", []

    sink = Sink()
    parser = httptools.HttpResponseParser(sink)
    parser.feed_data(data)
    return out


async def proxied(plane: Plane, request: bytes) -> tuple[object, object, bytes]:
    """Send ``request`` on a new client connection; return (conn, transport, upstream bytes)."""
    conn, transport = plane.connect_client()
    conn.data_received(request)
    await settle()
    return conn, transport, plane.upstreams[-1].take()


# -- framing -------------------------------------------------------------------

async def test_content_length_body_goes_upstream_as_it_came_and_the_connection_is_pooled() -> None:
    plane = make_plane()
    conn, client, sent = await proxied(
        plane, b"PUT /v2/r/blobs/uploads/u HTTP/1.1\r\nHost: reg\r\nContent-Length: 5\r\n\r\nhel")
    assert sent.startswith(b"PUT /v2/r/blobs/uploads/u HTTP/1.1\r\n") and sent.endswith(b"\r\n\r\nhel")
    assert b"X-Forwarded-Proto: https\r\n" in sent and b"X-Forwarded-For: 192.0.2.7\r\n" in sent
    conn.data_received(b"lo")  # type: ignore[attr-defined]
    assert plane.upstreams[0].take() == b"lo"
    plane.upstream_protocol().data_received(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert [r[0] for r in responses(client.take())] == [201]  # type: ignore[attr-defined]
    assert len(plane.pool.idle) == 1 and not plane.upstreams[0].closed


async def test_chunked_request_is_rechunked_and_ends_with_the_last_chunk() -> None:
    plane = make_plane()
    conn, client, sent = await proxied(
        plane, b"PATCH /v2/r/blobs/uploads/u HTTP/1.1\r\nHost: reg\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\nabc\r\n")
    assert b"Transfer-Encoding: chunked\r\n" in sent and sent.endswith(b"\r\n\r\n3\r\nabc\r\n")
    conn.data_received(b"2\r\nde\r\n0\r\n\r\n")  # type: ignore[attr-defined]
    assert plane.upstreams[0].take() == b"2\r\nde\r\n0\r\n\r\n"
    assert plane.upstream_protocol().waiting  # the request is complete: an answer is owed


async def test_a_close_delimited_response_is_chunked_to_a_11_client_and_ended_by_the_close() -> None:
    plane = make_plane()
    _, client, _ = await proxied(plane, GET)
    up = plane.upstream_protocol()
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst ")
    up.data_received(b"second")
    plane.upstreams[0].close()  # the upstream ends the body by closing
    await settle()
    out = client.take()  # type: ignore[attr-defined]
    assert b"Transfer-Encoding: chunked\r\n" in out
    assert responses(out)[0][2] == b"first second" and out.endswith(b"0\r\n\r\n")
    assert not client.closed  # type: ignore[attr-defined]


async def test_head_response_ends_at_its_head_and_keeps_both_connections() -> None:
    plane = make_plane()
    _, client, sent = await proxied(plane, b"HEAD /v2/r/blobs/sha256:x HTTP/1.1\r\nHost: reg\r\n\r\n")
    assert sent.startswith(b"HEAD ")
    plane.upstream_protocol().data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    out = client.take()  # type: ignore[attr-defined]
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\n")
    assert b"Content-Length: 1234" in out and len(plane.pool.idle) == 1


async def test_bytes_past_the_end_of_a_response_are_never_a_second_answer() -> None:
    plane = make_plane()
    conn, client, _ = await proxied(plane, GET)
    plane.upstream_protocol().data_received(
        OK + b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged")
    await settle()
    assert [r[2] for r in responses(client.take())] == [b"ok"]  # type: ignore[attr-defined]
    assert plane.upstreams[0].closed and not plane.pool.idle  # not reused
    conn.data_received(GET)  # type: ignore[attr-defined]
    await settle()
    assert len(plane.upstreams) == 2 and plane.upstreams[1].take().startswith(b"GET /v2/ ")
    assert client.take() == b""  # type: ignore[attr-defined]  # the next request waits for its own answer


async def test_interim_100_continue_then_the_answer_and_the_connection_goes_on() -> None:
    plane = make_plane()
    conn, client, _ = await proxied(
        plane, b"PUT /u HTTP/1.1\r\nHost: reg\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    up = plane.upstream_protocol()
    up.data_received(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert client.take() == b"HTTP/1.1 100 Continue\r\n\r\n"  # type: ignore[attr-defined]
    conn.data_received(b"hi")  # type: ignore[attr-defined]
    up.data_received(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    conn.data_received(GET)  # type: ignore[attr-defined]
    await settle()
    plane.upstream_protocol().data_received(OK)
    assert [r[0] for r in responses(client.take())] == [201, 200]  # type: ignore[attr-defined]


async def test_a_long_body_read_past_llhttp_arrives_whole_and_the_next_requests_parse_anew() -> None:
    """Bodies of 64 KiB and more go past llhttp once their head is parsed; the request
    after one starts on a new parser. Every way of cutting the stream into reads and
    records gives the upstream the same bytes, and the one after it is still refused."""
    body = bytes(range(256)) * 280  # 71,680 bytes
    stream = (b"PUT /v2/r/blobs/uploads/u HTTP/1.1\r\nHost: reg\r\nContent-Length: %d\r\n\r\n" % len(body)
              + body + b"GET /v2/ HTTP/1.1\r\nHost: reg\r\n\r\n")
    head_end = stream.index(b"\r\n\r\n") + 4
    body_end = head_end + len(body)
    cuts = sorted({1, head_end - 2, head_end, head_end + 1, head_end + 16384, body_end - 1, body_end,
                   body_end + 1, body_end + 5, len(stream) - 1})
    for cut in cuts:
        for second in (cut + 1, body_end, len(stream) - 1):
            if not cut < second < len(stream):
                continue
            plane = make_plane()
            conn, client = plane.connect_client()
            # three pieces: the first two in one read (two records), the third in the next
            conn.parts_received([stream[:cut], stream[cut:second]])
            await settle()
            conn.parts_received([stream[second:]])
            await settle()
            sent = plane.upstreams[0].take()
            assert sent.split(b"\r\n\r\n", 1)[1] == body, (cut, second)
            up = plane.upstream_protocol()
            up.data_received(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
            await settle()
            assert plane.upstreams[0].take().startswith(b"GET /v2/ HTTP/1.1\r\n"), (cut, second)
            up.data_received(OK)
            assert [r[0] for r in responses(client.take())] == [201, 200]
            conn.data_received(b"GET /v2/ HTTP/1.1\r\nHost: reg\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
            assert responses(client.take())[0][0] == 400 and client.closed  # the new parser is as strict


async def test_a_head_in_two_reads_with_a_long_body_after_it_is_not_too_large() -> None:
    """The head's size counts the head, not the body that came in the read that ended it
    (a Go client writes a head of more than 4 KiB in two pieces, then the body)."""
    plane = make_plane()
    conn, client = plane.connect_client()
    head = b"PUT /u HTTP/1.1\r\nHost: reg\r\nAuthorization: Bearer " + b"t" * 6000 + b"\r\nContent-Length: 200000\r\n\r\n"
    conn.data_received(head[:4096])
    conn.data_received(head[4096:] + b"x" * 200000)
    await settle()
    assert plane.upstreams[0].take().endswith(b"x" * 200000) and not client.take()
    plane.upstream_protocol().data_received(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert [r[0] for r in responses(client.take())] == [201]
    # a head that keeps coming past 64 KiB is still refused, whatever its fields
    conn, client = plane.connect_client()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: reg\r\n")
    for _ in range(40):
        conn.data_received(b"X-A: " + b"a" * 2000 + b"\r\n")
    assert responses(client.take())[0][0] == 431 and client.closed


async def test_a_long_body_past_llhttp_goes_upstream_in_one_write_per_read() -> None:
    plane = make_plane()
    conn, client, sent = await proxied(
        plane, b"PUT /u HTTP/1.1\r\nHost: reg\r\nContent-Length: 100000\r\n\r\n" + b"a" * 10)
    assert conn.body_left == 100000 - 10  # type: ignore[attr-defined]
    writes = plane.upstreams[0].writes
    conn.parts_received([b"b" * 16384] * 6)  # type: ignore[attr-defined]
    assert plane.upstreams[0].writes == writes + 1 and plane.upstreams[0].take() == b"b" * 16384 * 6
    conn.parts_received([b"c" * 16384, b"d" * (100000 - 10 - 16384 * 7)])  # type: ignore[attr-defined]
    assert conn.body_left == 0 and plane.upstream_protocol().waiting  # type: ignore[attr-defined]


# -- pipelining and back-pressure ---------------------------------------------

async def test_pipelined_requests_are_answered_in_order_one_at_a_time() -> None:
    plane = make_plane()
    conn, client = plane.connect_client()
    conn.data_received(b"GET /a HTTP/1.1\r\nHost: r\r\n\r\nGET /b HTTP/1.1\r\nHost: r\r\n\r\n")
    await settle()
    assert not client.reading  # the second request waits: nothing more is read
    up = plane.upstream_protocol()
    assert plane.upstreams[0].take().startswith(b"GET /a ")
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
    await settle()
    assert plane.upstreams[0].take().startswith(b"GET /b ")  # the same pooled connection
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
    assert [r[2] for r in responses(client.take())] == [b"a", b"b"]
    assert client.reading


async def test_back_pressure_pauses_the_other_side_both_ways() -> None:
    plane = make_plane()
    conn, client, _ = await proxied(
        plane, b"PUT /u HTTP/1.1\r\nHost: reg\r\nContent-Length: 100\r\n\r\nxx")
    up = plane.upstream_protocol()
    up.pause_writing()  # the upstream's write buffer is full: stop reading the client
    assert not client.reading
    up.resume_writing()
    assert client.reading
    conn.data_received(b"y" * 98)
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
    conn.pause_writing()  # the client reads slowly: stop reading the upstream
    assert not plane.upstreams[0].reading
    conn.resume_writing()
    assert plane.upstreams[0].reading


# -- timeouts, through sweep(now) --------------------------------------------

async def test_a_request_head_that_never_ends_is_cut_after_the_header_timeout() -> None:
    plane = make_plane(limits=Limits(header_timeout=30))
    conn, client = plane.connect_client()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: r\r\nX-Slow: ")
    plane.listener.sweep(plane.clock.now + 29)
    assert not client.aborted
    plane.listener.sweep(plane.clock.now + 31)
    assert client.aborted


async def test_an_idle_keep_alive_connection_is_closed_after_its_timeout() -> None:
    plane = make_plane(limits=Limits(keepalive_timeout=75))
    conn, client = plane.connect_client()
    plane.listener.sweep(plane.clock.now + 74)
    assert not client.closed
    plane.listener.sweep(plane.clock.now + 76)
    assert client.closed and not client.aborted


async def test_a_client_silent_mid_body_is_cut_and_its_upstream_request_aborted() -> None:
    plane = make_plane(limits=Limits(body_timeout=300))
    await proxied(plane, b"PUT /u HTTP/1.1\r\nHost: reg\r\nContent-Length: 10\r\n\r\nabc")
    client = next(iter(plane.listener.connections)).transport
    plane.listener.sweep(plane.clock.now + 299)
    assert not client.aborted  # type: ignore[union-attr]
    plane.listener.sweep(plane.clock.now + 301)
    await settle()
    assert client.aborted and plane.upstreams[0].aborted  # type: ignore[union-attr]


async def test_a_silent_upstream_gets_a_504_but_not_while_the_client_is_the_slow_side(
        caplog: pytest.LogCaptureFixture) -> None:
    plane = make_plane(settings=PoolSettings(read_timeout=60))
    conn, client, _ = await proxied(plane, GET)
    plane.pool.sweep(plane.clock.now + 59)
    assert client.take() == b""  # type: ignore[attr-defined]
    plane.pool.sweep(plane.clock.now + 61)
    out = client.take()  # type: ignore[attr-defined]
    assert out.startswith(b"HTTP/1.1 504 ") and b"certproxy: 504 Gateway Timeout: " in out
    assert b"registry" not in out.partition(b"\r\n\r\n")[2]  # the upstream's address stays in the log
    assert "upstream http://registry:5000 of port 5000 /v2/: did not answer in time" in caplog.text
    assert plane.upstreams[0].aborted
    # A download the client reads slowly is not the upstream's silence.
    plane2 = make_plane(settings=PoolSettings(read_timeout=60))
    conn2, client2, _ = await proxied(plane2, GET)
    plane2.upstream_protocol().data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\npart")
    conn2.pause_writing()  # type: ignore[attr-defined]
    plane2.pool.sweep(plane2.clock.now + 600)
    assert not plane2.upstreams[0].aborted and not client2.aborted  # type: ignore[attr-defined]


async def test_idle_pooled_connections_are_closed_after_the_upstream_keepalive() -> None:
    plane = make_plane(settings=PoolSettings(keepalive=30))
    await proxied(plane, GET)
    plane.upstream_protocol().data_received(OK)
    plane.clock.now += 1
    assert len(plane.pool.idle) == 1
    plane.pool.sweep(plane.clock.now + 29)
    assert len(plane.pool.idle) == 1
    plane.pool.sweep(plane.clock.now + 31)
    assert not plane.pool.idle and plane.upstreams[0].closed


# -- early answers, retries ----------------------------------------------------

async def test_an_early_upstream_answer_is_relayed_with_close_and_the_rest_not_forwarded() -> None:
    plane = make_plane()
    conn, client, _ = await proxied(
        plane, b"PUT /u HTTP/1.1\r\nHost: reg\r\nContent-Length: 1000\r\n\r\nabc")
    plane.upstream_protocol().data_received(
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig")
    await settle()
    out = client.take()  # type: ignore[attr-defined]
    assert out.startswith(b"HTTP/1.1 413 ") and b"Connection: close\r\n" in out
    assert client.closed  # type: ignore[attr-defined]
    conn.data_received(b"more body")  # type: ignore[attr-defined]
    assert plane.upstreams[0].take() == b"" and not plane.pool.idle


async def test_a_stale_pooled_connection_is_retried_once_for_an_idempotent_request() -> None:
    plane = make_plane()
    conn, client, _ = await proxied(plane, GET)
    plane.upstream_protocol().data_received(OK)
    client.take()  # type: ignore[attr-defined]
    conn.data_received(GET)  # type: ignore[attr-defined]  # goes out on the pooled connection
    await settle()
    assert plane.upstreams[0].take().startswith(b"GET ")
    plane.upstreams[0].close()  # it turns out closed before any answer
    await settle()
    assert len(plane.upstreams) == 2 and plane.upstreams[1].take().startswith(b"GET ")
    plane.upstream_protocol().data_received(OK)
    assert [r[0] for r in responses(client.take())] == [200]  # type: ignore[attr-defined]


@pytest.mark.parametrize("request_bytes, reused", [
    (b"POST /v2/r/blobs/uploads/ HTTP/1.1\r\nHost: reg\r\nContent-Length: 0\r\n\r\n", True),
    (GET, False),  # a fresh connection closing is an answer, not staleness
])
async def test_no_retry_for_a_non_idempotent_request_or_a_fresh_connection(
        request_bytes: bytes, reused: bool, caplog: pytest.LogCaptureFixture) -> None:
    plane = make_plane()
    conn, client = plane.connect_client()
    if reused:
        conn.data_received(GET)
        await settle()
        plane.upstream_protocol().data_received(OK)
        client.take()
    conn.data_received(request_bytes)
    await settle()
    plane.upstreams[-1].close()
    await settle()
    out = client.take()
    assert out.startswith(b"HTTP/1.1 502 ") and b"certproxy: 502 Bad Gateway: " in out
    assert "closed the connection without an answer" in caplog.text
    assert len(plane.upstreams) == 1


@pytest.mark.parametrize("error, logged", [
    (ConnectionRefusedError(111, "Connection refused"), "cannot connect: Connection refused"),
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "cannot connect: name does not resolve"),
])
async def test_an_unreachable_upstream_is_a_502_that_keeps_the_details_in_the_log(
        error: OSError, logged: str, caplog: pytest.LogCaptureFixture) -> None:
    plane = make_plane()
    plane.refuse_connect.append(error)
    conn, client = plane.connect_client()
    conn.data_received(GET)
    await settle()
    out = client.take()
    assert out.startswith(b"HTTP/1.1 502 ") and b"Docker-Distribution-Api-Version: registry/2.0" in out
    body = out.partition(b"\r\n\r\n")[2]
    assert body == b"certproxy: 502 Bad Gateway: the upstream is not reachable or did not answer properly\n"
    assert f"upstream http://registry:5000 of port 5000 /v2/: {logged}" in caplog.text


async def test_a_browser_gets_an_html_error_page_and_a_registry_client_a_line() -> None:
    plane = make_plane()
    plane.refuse_connect.append(ConnectionRefusedError(111, "Connection refused"))
    conn, client = plane.connect_client()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: reg\r\nAccept: text/html,application/xhtml+xml\r\n\r\n")
    await settle()
    out = client.take()
    assert b"Content-Type: text/html; charset=utf-8\r\n" in out
    assert b"<title>502 Bad Gateway</title>" in out and b"registry:5000" not in out


# -- refusals ---------------------------------------------------------------------

@pytest.mark.parametrize("raw, status", [
    (b"TRACE / HTTP/1.1\r\nHost: r\r\n\r\n", 405),
    (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: r\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(120)) + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400),
    (b"\x16\x03\x01garbage\r\n\r\n", 400),
])
async def test_refusals_are_one_line_and_never_reach_the_upstream(raw: bytes, status: int) -> None:
    plane = make_plane()
    conn, client = plane.connect_client()
    conn.data_received(raw)
    await settle()
    out = client.take()
    assert out.startswith(b"HTTP/1.1 %d " % status), out[:80]
    assert out.count(b"\ncertproxy: ") == 1
    assert plane.upstreams == [] or plane.upstreams[0].written == b""
    if status != 405:
        assert client.closed


async def test_past_the_connection_cap_a_clean_503_and_close() -> None:
    plane = make_plane(limits=Limits(max_connections=2))
    plane.connect_client()
    plane.connect_client()
    conn, client = plane.connect_client()
    out = client.take()
    assert out.startswith(b"HTTP/1.1 503 ") and b"too many connections" in out and client.closed
    assert len(plane.listener.connections) == 2


async def test_a_control_route_answers_by_itself_and_healthz_is_a_callable() -> None:
    seen: list[bytes] = []

    async def answer(request: object) -> tuple[int, list[tuple[bytes, bytes]], bytes, bytes]:
        seen.append(request.target)  # type: ignore[attr-defined]
        return 200, [], b"hello\n", b"text/plain"

    plane = make_control_plane(answer)
    conn, client = plane.connect_client()
    conn.data_received(b"GET /x HTTP/1.1\r\nHost: r\r\n\r\n")
    await settle()
    assert seen == [b"/x"] and responses(client.take())[0][2] == b"hello\n"
    proxy = make_plane()
    conn2, client2 = proxy.connect_client()
    conn2.data_received(b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n")
    await settle()
    assert responses(client2.take())[0][2] == b'{"status": "ok"}\n' and proxy.upstreams == []


async def test_drain_stops_idle_connections_and_lets_the_one_in_flight_finish() -> None:
    plane = make_plane()
    idle_conn, idle = plane.connect_client()
    idle_conn.data_received(GET)  # served once, then idle on keep-alive
    await settle()
    plane.upstream_protocol().data_received(OK)
    await settle()
    idle.take()
    busy_conn, busy = plane.connect_client()
    busy_conn.data_received(GET)
    await settle()
    fresh_conn, fresh = plane.connect_client()  # accepted; its first request still on the wire
    silent_conn, silent = plane.connect_client()
    plane.listener.stop_accepting()
    assert idle.closed and not busy.closed
    assert not fresh.closed and not silent.closed and fresh_conn.owed() and silent_conn.owed()
    plane.upstream_protocol().data_received(OK)
    out = busy.take()
    assert b"Connection: close\r\n" in out and busy.closed
    # The new connection's request comes: served, with Connection: close.
    fresh_conn.data_received(GET)
    await settle()
    plane.upstream_protocol().data_received(OK)
    out = fresh.take()
    assert out.startswith(b"HTTP/1.1 200 ") and b"Connection: close\r\n" in out and fresh.closed
    # One that sends nothing is closed once the grace has passed (the sweep).
    plane.clock.now += 1
    plane.listener.sweep(plane.clock.now)
    assert not silent.closed
    plane.clock.now += 1.5
    plane.listener.sweep(plane.clock.now)
    assert silent.closed and not silent_conn.owed()
