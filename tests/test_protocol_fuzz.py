"""Property-based harness over request bytes (hypothesis), in-process.

Generated pipelines of one to three requests (heads, bodies framed by
Content-Length or chunked), split at arbitrary byte boundaries, and mutated
(bytes flipped, inserted, deleted; smuggling-shaped header pairs), go
through a client connection; a strict, independent HTTP/1.1 parser (h11)
reads what reaches the upstream and answers each request it finds.

Nothing is left out of what is generated because it is awkward: extra
headers are drawn from random names and from every name that changes what a
proxy does (``Upgrade``, ``TE``, ``Trailer``, ``Keep-Alive``, ``Expect``,
certproxy's own ``X-Forwarded-*``), ``Connection`` lists name any field
(framing, ``Host``, ``close``, ``upgrade``, the forwarding headers, random
names), and request bodies may hold a whole request or the start of one. The
upstream's answers are framed by ``Content-Length`` or chunked, and their
``Connection`` lists name any field too (``close`` included: the upstream then
closes that connection).

Some upstream answers are malformed (an unsolicited ``101``, an invalid status
line, not HTTP, two framings, a head that does not end): each is a 502 for its
request and the end of that upstream connection, never a resend.

Invariants:
- nothing ambiguous reaches the upstream: h11 parses every byte of it as
  requests with exactly one framing, one ``Host`` and certproxy's own
  ``X-Forwarded-For``/``X-Real-IP``/``X-Forwarded-Proto``;
- nothing reaches the upstream as a request that the client did not send as
  one: the upstream's request targets are, in order, targets of requests
  certproxy parsed;
- every request gets exactly one answer, or the connection closes (answers
  never outnumber requests, and an open connection answered every request
  that arrived whole); every upstream answer reaches the client with its
  body whole, in order;
- no exception escapes a protocol callback, and nothing is logged as a defect;
- well-formed input, however split, gets what RFC 9110 and certproxy's rules
  say (a model below): every body whole at the upstream in order, a 400 for a
  ``Connection`` that names ``Content-Length``, ``Transfer-Encoding`` or
  ``Host`` or for an upgrade with a body (certproxy never switches protocols,
  and llhttp does not read such a body), the close after ``Connection: close``
  or an upgrade.

It runs twice: with bodies through llhttp, and with every Content-Length body
read past llhttp once its head is parsed (what certproxy does from 64 KiB on),
the pieces handed over two a read as certproxy's TLS transport does.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field

import h11
import httptools
from hypothesis import HealthCheck, event, given, settings, strategies as st

import pytest

from certproxy.proxy import client as client_module
from certproxy.proxy.client import ClientConnection
from support.inproc import MockTransport, make_plane, settle

CLIENT_IP = b"192.0.2.7"  # the mock client transport's peer
TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1,
                max_size=12)
VALUE = st.binary(min_size=0, max_size=24).map(
    lambda b: bytes(c for c in b if 0x20 <= c < 0x7f or c == 0x09).strip())
PATH = st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=8),
                max_size=4).map(lambda parts: "/" + "/".join(parts))
# Names a proxy treats specially (besides the framing ones, which the smuggling cases and
# Connection lists cover): drawn as often as random names.
SPECIAL = ["Upgrade", "TE", "Trailer", "Keep-Alive", "Proxy-Connection", "Expect", "X-Forwarded-For",
           "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Port", "X-Real-IP", "Forwarded",
           "Proxy-Authorization", "Authorization"]
SPECIAL_VALUES = {"Upgrade": b"websocket", "TE": b"trailers", "Expect": b"100-continue",
                  "Keep-Alive": b"timeout=5", "X-Forwarded-For": b"6.6.6.6", "X-Real-IP": b"6.6.6.6"}
# What a Connection list may name: anything, certproxy's own and the framing fields included.
NOMINABLE = ["Content-Length", "Transfer-Encoding", "Host", "Upgrade", "TE", "Trailer", "Keep-Alive",
             "keep-alive", "close", "Close", "Expect", "X-Forwarded-For", "X-Forwarded-Proto",
             "X-Forwarded-Host", "X-Forwarded-Port", "X-Real-IP", "Forwarded", "Authorization",
             "Proxy-Connection", "Date", "Content-Type"]
CONNECTION = st.lists(st.one_of(st.sampled_from(NOMINABLE), TOKEN), min_size=1, max_size=4).map(
    lambda tokens: ", ".join(tokens).encode())
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
# Bodies that hold a request, or the start of one (glued to whatever comes next).
SMUGGLED = [
    b"GET /SMUGGLED HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
    b"GET /SMUGGLED HTTP/1.1\r\nHost: x\r\nX-A: ",
    b"0\r\n\r\nGET /SMUGGLED HTTP/1.1\r\nHost: x\r\n\r\n",
]
REFUSED_NOMINATIONS = {b"content-length", b"transfer-encoding", b"host"}


@dataclass
class Expected:
    """What certproxy owes a well-formed request (the model the invariants check)."""

    body: bytes
    refused: bool  # Connection names a field that frames it, or an upgrade has a body: 400, close
    last: bool  # Connection: close, or an upgrade: answered, then the connection closes


def connection_tokens(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    return {t.strip().lower() for n, v in headers if n.lower() == b"connection" for t in v.split(b",")}


def expect(headers: list[tuple[bytes, bytes]], body: bytes) -> Expected:
    tokens = connection_tokens(headers)
    upgrade = b"upgrade" in tokens and any(n.lower() == b"upgrade" for n, _ in headers)
    refused = bool(tokens & REFUSED_NOMINATIONS) or (upgrade and bool(body))
    return Expected(body, refused, b"close" in tokens or upgrade)


@st.composite
def one_request(draw: st.DrawFn) -> tuple[bytes, Expected | None]:
    """A request, and what certproxy owes it when it is well-formed (None: smuggling-shaped)."""
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"]))
    headers = [(b"Host", b"reg.example.com")]
    special = st.sampled_from(SPECIAL).map(lambda n: (n, SPECIAL_VALUES.get(n, b"x")))
    extra = st.one_of(st.tuples(TOKEN, VALUE), special, st.tuples(st.just("Connection"), CONNECTION))
    headers += [(n.encode(), v) for n, v in draw(st.lists(extra, max_size=4))]
    body = draw(st.one_of(st.binary(max_size=64), st.sampled_from(SMUGGLED)))
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
    # A random name may still be one that frames the message (a second Host, say): that
    # request is then smuggling-shaped, like the drawn cases below.
    names = [n.lower() for n, _ in headers]
    clean = draw(st.integers(0, 9)) != 0 and all(
        names.count(n) == 1 for n in (b"host", b"content-length", b"transfer-encoding") if n in names)
    if not clean:
        headers += draw(st.sampled_from(SMUGGLING))
    head = b"%s %s HTTP/1.1\r\n" % (method, draw(PATH).encode())
    raw = head + b"".join(b"%s: %s\r\n" % h for h in headers) + b"\r\n" + encoded
    return raw, expect(headers, body) if clean else None


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
def client_input(draw: st.DrawFn) -> tuple[list[bytes], list[Expected] | None]:
    """Pieces of a client's byte stream, and what each request is owed when it is well-formed."""
    requests = draw(st.lists(one_request(), min_size=1, max_size=3))
    stream = b"".join(r for r, _ in requests)
    expected = [e for _, e in requests]
    clean = all(e is not None for e in expected) and draw(st.booleans())
    if not clean:
        stream = draw(mutated(stream))
    cuts = sorted(set(draw(st.lists(st.integers(0, len(stream)), max_size=6))))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)]) if stream[a:b]]
    return pieces, [e for e in expected if e is not None] if clean else None


@dataclass(frozen=True)
class Answer:
    """How the upstream frames one answer, and what its Connection names; or, with
    ``malformed``, the bytes of an answer certproxy must not relay (a 502 for that
    request, that upstream connection ended, nothing sent twice)."""

    chunked: bool
    connection: bytes | None
    malformed: bytes | None = None


MALFORMED = [
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    b"SSH-2.0-OpenSSH_9.2\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000,
]
ANSWERS = st.lists(st.builds(Answer, st.booleans(), st.one_of(st.none(), CONNECTION),
                             st.one_of(st.none(), st.none(), st.none(), st.sampled_from(MALFORMED))),
                   min_size=1, max_size=4)


class CountingConnection(ClientConnection):
    heads = 0  # request heads parsed
    whole = 0  # requests parsed to their end (head and body)

    def on_headers_complete(self) -> None:
        self.heads += 1
        self.targets = [*getattr(self, "targets", []), self._url]
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.whole += 1
        super().on_message_complete()


@dataclass
class Shared:
    """What every upstream connection of one example adds to."""

    answers: list[Answer]
    sent: list[bytes] = field(default_factory=list)  # answer bodies relayed, in the order sent
    answered: int = 0  # answers given, malformed ones included
    broken: list[MockTransport] = field(default_factory=list)  # connections a malformed answer went on
    targets: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)


class StrictUpstream:
    """h11 as the upstream: fails on anything ambiguous, answers each request it reads."""

    def __init__(self, transport: MockTransport, shared: Shared) -> None:
        self.transport = transport
        self.shared = shared
        self.h11 = h11.Connection(h11.SERVER)
        self.body = b""
        self.closed = False

    def pump(self) -> None:
        data = self.transport.take()
        if self.closed:
            assert not data, data  # nothing is sent on a connection the upstream closed
            return
        if data:
            self.h11.receive_data(data)
        shared = self.shared
        while True:
            event = self.h11.next_event()  # raises RemoteProtocolError on anything ambiguous
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                headers = [(n, v) for n, v in event.headers]
                framing = [n for n, _ in headers if n in (b"content-length", b"transfer-encoding")]
                assert len(framing) <= 1, headers
                assert len([v for n, v in headers if n == b"host"]) == 1, headers
                for name, value in ((b"x-forwarded-for", CLIENT_IP), (b"x-real-ip", CLIENT_IP),
                                    (b"x-forwarded-proto", b"https")):
                    assert [v for n, v in headers if n == name] == [value], headers
                shared.targets.append(bytes(event.target))
            if isinstance(event, h11.Data):
                self.body += bytes(event.data)
            if isinstance(event, h11.EndOfMessage):
                shared.bodies.append(self.body)
                self.body = b""
                self.answer()
                if self.closed:
                    return

    def answer(self) -> None:
        shared = self.shared
        spec = shared.answers[shared.answered % len(shared.answers)]
        shared.answered += 1
        if spec.malformed is not None:  # certproxy must end this connection itself
            self.closed = True
            shared.broken.append(self.transport)
            self.transport.protocol.data_received(spec.malformed)
            return
        body = b"answer-%d" % len(shared.sent)
        shared.sent.append(body)
        headers = [("Transfer-Encoding", "chunked")] if spec.chunked else [("Content-Length", str(len(body)))]
        if spec.connection is not None:
            headers.append(("Connection", spec.connection.decode()))
        out = b"".join([
            self.h11.send(h11.Response(status_code=200, headers=headers)) or b"",
            self.h11.send(h11.Data(data=body)) or b"",
            self.h11.send(h11.EndOfMessage()) or b"",
        ])
        self.transport.protocol.data_received(out)
        if self.h11.our_state is h11.MUST_CLOSE:  # the answer said Connection: close
            self.closed = True
            self.transport.close()
        else:
            self.h11.start_next_cycle()


def client_answers(data: bytes) -> list[bytes]:
    """The bodies of the complete answers in what the client received."""
    bodies: list[bytes] = []

    class Sink:
        body = b""

        def on_body(self, chunk: bytes) -> None:
            self.body += chunk

        def on_message_complete(self) -> None:
            bodies.append(self.body)
            self.body = b""

    httptools.HttpResponseParser(Sink()).feed_data(data)
    return bodies


class DefectLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


@dataclass
class Outcome:
    conn: CountingConnection
    closed: bool
    answers: list[bytes]  # bodies of the answers the client received
    errors: list[str]
    shared: Shared


async def run_one(pieces: list[bytes], answers: list[Answer], grouped: bool = False) -> Outcome:
    loop = asyncio.get_running_loop()
    errors: list[str] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(str(ctx.get("exception") or ctx)))
    plane = make_plane()
    conn, client = plane.connect_client(CountingConnection)
    shared = Shared(answers)
    upstreams: dict[int, StrictUpstream] = {}
    answered = bytearray()

    async def pump() -> None:
        for _ in range(4):
            await settle()
            for i, transport in enumerate(plane.upstreams):
                upstreams.setdefault(i, StrictUpstream(transport, shared)).pump()

    # grouped: two pieces a read, as certproxy's TLS transport hands over one piece per record
    reads = [pieces[i:i + 2] for i in range(0, len(pieces), 2)] if grouped else [[p] for p in pieces]
    for read in reads:
        if client.closed:
            break
        conn.parts_received(read)  # an exception here fails the example
        await pump()
        answered += client.take()
    await pump()
    answered += client.take()
    assert isinstance(conn, CountingConnection)
    return Outcome(conn, client.closed, client_answers(bytes(answered)), errors, shared)


def is_subsequence(part: list[bytes], whole: list[bytes]) -> bool:
    it = iter(whole)
    return all(any(p == w for w in it) for p in part)


@pytest.mark.parametrize("past_parser", [client_module.BODY_PAST_PARSER, 1],
                         ids=["bodies-through-llhttp", "bodies-past-llhttp"])
# CERTPROXY_FUZZ_EXAMPLES=20000 for a long run.
@settings(max_examples=int(os.environ.get("CERTPROXY_FUZZ_EXAMPLES", "400")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(client_input(), ANSWERS)
def test_request_bytes_never_confuse_the_data_plane(past_parser: int,
                                                   case: tuple[list[bytes], list[Expected] | None],
                                                   answers: list[Answer]) -> None:
    """With ``past_parser`` 1, every Content-Length body is read past llhttp once its head
    is parsed (as bodies of 64 KiB and more are), with the pieces handed over two a read."""
    pieces, expected = case
    defects = DefectLog()
    logger = logging.getLogger("certproxy")
    logger.addHandler(defects)
    default = client_module.BODY_PAST_PARSER
    client_module.BODY_PAST_PARSER = past_parser
    try:
        out = asyncio.run(run_one(pieces, answers, grouped=past_parser == 1))
    finally:
        client_module.BODY_PAST_PARSER = default
        logger.removeHandler(defects)
    conn, shared = out.conn, out.shared
    event(f"upstream answers malformed: {len(shared.broken)}")
    event(f"well-formed input: {expected is not None}")
    assert not out.errors, out.errors
    assert not defects.records, defects.records
    # only what certproxy parsed as a request reaches the upstream as one, in order
    assert is_subsequence(shared.targets, getattr(conn, "targets", [])), (shared.targets, conn.__dict__)
    # every upstream answer reaches the client whole and in order; certproxy's own are one line
    relayed = [a for a in out.answers if not a.startswith(b"certproxy: ")]
    own = [a for a in out.answers if a.startswith(b"certproxy: ")]
    assert relayed == shared.sent[:len(relayed)], (relayed, shared.sent)
    assert all(a.count(b"\n") == 1 for a in own), own
    assert len(out.answers) <= conn.heads + 1  # +1: a refusal of a head that never completed
    assert all(t.aborted for t in shared.broken)  # a malformed answer ends its connection
    if not out.closed:  # every whole request answered once; one still arriving is not answered yet
        assert len(out.answers) == conn.whole, (conn.heads, conn.whole, out.answers)
        assert relayed == shared.sent
    if expected is not None:  # well-formed input, however split: what the model says
        owed: list[Expected] = []
        for e in expected:
            owed.append(e)
            if e.refused or e.last:
                break
        forwarded = [e.body for e in owed if not e.refused]
        assert shared.bodies == forwarded, (shared.bodies, owed)
        assert len(out.answers) == len(owed), (out.answers, owed)
        assert [a.startswith(b"certproxy: 400 ") for a in out.answers] == [e.refused for e in owed]
        assert out.closed == (owed[-1].refused or owed[-1].last)
