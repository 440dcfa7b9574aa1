"""Property-based harness over request bytes (hypothesis), in-process.

Generated pipelines of one to three requests (heads, bodies framed by
Content-Length or chunked), split at arbitrary byte boundaries, and mutated
(bytes flipped, inserted, deleted; smuggling-shaped header pairs), go
through a client connection; a strict, independent HTTP/1.1 parser (h11)
reads what reaches the upstream and answers each request it finds.

Invariants:
- nothing ambiguous reaches the upstream: h11 parses every byte of it as
  requests with exactly one framing each;
- every request gets exactly one answer, or the connection closes
  (answers never outnumber requests, and an open connection answered every
  request that arrived whole);
- no exception escapes a protocol callback, and nothing is logged as a defect;
- clean input, however split, reaches the upstream with every body whole.

It runs twice: with bodies through llhttp, and with every Content-Length body
read past llhttp once its head is parsed (what certproxy does from 64 KiB on),
the pieces handed over two a read as certproxy's TLS transport does.
"""

from __future__ import annotations

import asyncio
import logging

import h11
import httptools
from hypothesis import HealthCheck, given, settings, strategies as st

import pytest

from certproxy.proxy import client as client_module
from certproxy.proxy.client import ClientConnection
from support.inproc import MockTransport, make_plane, settle

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1,
                max_size=12)
VALUE = st.binary(min_size=0, max_size=24).map(
    lambda b: bytes(c for c in b if 0x20 <= c < 0x7f or c == 0x09).strip())
PATH = st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=8),
                max_size=4).map(lambda parts: "/" + "/".join(parts))
SEMANTIC = {"host", "content-length", "transfer-encoding", "connection", "upgrade", "expect", "te",
            "trailer", "keep-alive", "proxy-connection"}
SMUGGLING = [
    [(b"Content-Length", b"3"), (b"Content-Length", b"4")],
    [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"3")],
    [(b"Transfer-Encoding", b"chunked, identity")],
    [(b"Transfer-Encoding", b"gzip")],
    [(b"Content-Length", b"+3")],
    [(b"Content-Length", b"3, 3")],
    [(b"Transfer-Encoding ", b"chunked")],
    [(b"X-Folded", b"a\r\n b")],
    [(b"Host", b"a"), (b"Host", b"b")],
]


@st.composite
def one_request(draw: st.DrawFn) -> tuple[bytes, bool, bytes]:
    """A request, whether it is clean (no smuggling-shaped headers), and its body."""
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"]))
    headers = [(b"Host", b"reg.example.com")]
    # Other end-to-end headers; the names that change framing or the connection are the
    # smuggling cases' business, so a "clean" request never carries them by chance.
    names = TOKEN.filter(lambda n: n.lower() not in SEMANTIC)
    headers += [(n.encode(), v) for n, v in draw(st.lists(st.tuples(names, VALUE), max_size=4))]
    body = draw(st.binary(max_size=64))
    framing = draw(st.sampled_from(["none", "length", "chunked"])) if body else "none"
    if framing == "length":
        headers.append((b"Content-Length", b"%d" % len(body)))
        encoded = body
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
        cuts = sorted(draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=3)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)]) if body[a:b]]
        encoded = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    else:
        encoded = body = b""
    clean = draw(st.integers(0, 9)) != 0
    if not clean:
        headers += draw(st.sampled_from(SMUGGLING))
    head = b"%s %s HTTP/1.1\r\n" % (method, draw(PATH).encode())
    return head + b"".join(b"%s: %s\r\n" % h for h in headers) + b"\r\n" + encoded, clean, body


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        if not out:
            break
        at = draw(st.integers(0, len(out) - 1))
        kind = draw(st.sampled_from(["flip", "insert", "delete"]))
        if kind == "flip":
            out[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            out[at:at] = draw(st.sampled_from([b"\r\n", b"\n", b"\r", b" ", b":", b"\x00", b"0"]))
        else:
            del out[at]
    return bytes(out)


@st.composite
def client_input(draw: st.DrawFn) -> tuple[list[bytes], list[bytes] | None]:
    """Pieces of a client's byte stream, and the bodies of its requests when it is clean."""
    requests = draw(st.lists(one_request(), min_size=1, max_size=3))
    stream = b"".join(r for r, _, _ in requests)
    clean = all(c for _, c, _ in requests) and draw(st.booleans())
    if not clean:
        stream = draw(mutated(stream))
    cuts = sorted(set(draw(st.lists(st.integers(0, len(stream)), max_size=6))))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)]) if stream[a:b]]
    return pieces, [b for _, _, b in requests] if clean else None


class CountingConnection(ClientConnection):
    heads = 0  # request heads parsed
    whole = 0  # requests parsed to their end (head and body)

    def on_headers_complete(self) -> None:
        self.heads += 1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.whole += 1
        super().on_message_complete()


class StrictUpstream:
    """h11 as the upstream: fails on anything ambiguous, answers each request it reads."""

    def __init__(self, transport: MockTransport) -> None:
        self.transport = transport
        self.h11 = h11.Connection(h11.SERVER)
        self.requests = 0
        self.bodies: list[bytes] = []
        self.body = b""

    def pump(self) -> None:
        data = self.transport.take()
        if data:
            self.h11.receive_data(data)
        while True:
            event = self.h11.next_event()  # raises RemoteProtocolError on anything ambiguous
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                framing = [n for n, _ in event.headers if n in (b"content-length", b"transfer-encoding")]
                assert len(framing) <= 1, event.headers
                hosts = [v for n, v in event.headers if n == b"host"]
                assert len(hosts) == 1, event.headers
            if isinstance(event, h11.Data):
                self.body += bytes(event.data)
            if isinstance(event, h11.EndOfMessage):
                self.bodies.append(self.body)
                self.body = b""
                self.requests += 1
                body = b"r%d" % self.requests
                answer = b"".join([
                    self.h11.send(h11.Response(status_code=200, headers=[("Content-Length", str(len(body)))])) or b"",
                    self.h11.send(h11.Data(data=body)) or b"",
                    self.h11.send(h11.EndOfMessage()) or b"",
                ])
                self.h11.start_next_cycle()
                proto = self.transport.protocol
                proto.data_received(answer)


def count_responses(data: bytes) -> int:
    done = 0

    class Sink:
        def on_message_complete(self) -> None:
            nonlocal done
            done += 1

    httptools.HttpResponseParser(Sink()).feed_data(data)
    return done


class DefectLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


async def run_one(pieces: list[bytes], grouped: bool = False) -> tuple[int, int, int, bool, list[str], list[bytes]]:
    loop = asyncio.get_running_loop()
    errors: list[str] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(str(ctx.get("exception") or ctx)))
    plane = make_plane()
    conn, client = plane.connect_client(CountingConnection)
    upstreams: dict[int, StrictUpstream] = {}
    answered = bytearray()
    # grouped: two pieces a read, as certproxy's TLS transport hands over one piece per record
    reads = [pieces[i:i + 2] for i in range(0, len(pieces), 2)] if grouped else [[p] for p in pieces]
    for read in reads:
        if client.closed:
            break
        conn.parts_received(read)  # an exception here fails the example
        for _ in range(4):
            await settle()
            for i, transport in enumerate(plane.upstreams):
                upstreams.setdefault(i, StrictUpstream(transport)).pump()
        answered += client.take()
    for _ in range(4):
        await settle()
        for i, transport in enumerate(plane.upstreams):
            upstreams.setdefault(i, StrictUpstream(transport)).pump()
    answered += client.take()
    bodies = [b for i in sorted(upstreams) for b in upstreams[i].bodies]
    return (conn.heads, conn.whole, count_responses(bytes(answered)), client.closed,  # type: ignore[attr-defined]
            errors, bodies)


@pytest.mark.parametrize("past_parser", [client_module.BODY_PAST_PARSER, 1],
                         ids=["bodies-through-llhttp", "bodies-past-llhttp"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(client_input())
def test_request_bytes_never_confuse_the_data_plane(past_parser: int,
                                                   case: tuple[list[bytes], list[bytes] | None]) -> None:
    """With ``past_parser`` 1, every Content-Length body is read past llhttp once its head
    is parsed (as bodies of 64 KiB and more are), with the pieces handed over two a read."""
    pieces, clean_bodies = case
    defects = DefectLog()
    logger = logging.getLogger("certproxy")
    logger.addHandler(defects)
    default = client_module.BODY_PAST_PARSER
    client_module.BODY_PAST_PARSER = past_parser
    try:
        heads, whole, answers, closed, errors, bodies = asyncio.run(run_one(pieces, grouped=past_parser == 1))
    finally:
        client_module.BODY_PAST_PARSER = default
        logger.removeHandler(defects)
    assert not errors, errors
    assert not defects.records, defects.records
    assert answers <= heads + 1  # +1: a refusal of a head that never completed
    if not closed:  # every whole request answered once; one still arriving is not answered yet
        assert answers == whole, (heads, whole, answers)
    if clean_bodies is not None:  # valid input, however split: all answered, connection open,
        assert not closed and answers == heads == whole == len(clean_bodies)
        assert bodies == clean_bodies  # every body reached the upstream whole, in order
