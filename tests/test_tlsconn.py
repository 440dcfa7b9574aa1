"""certproxy's TLS transport (proxy/tlsconn.py) on its own, in-process, with real TLS
over loopback: flow control both ways, records coalesced on reads, handshakes that
fail or never start, the linger that keeps an early answer from being reset, and
reading paused and resumed."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable

import pytest
import trustme

from certproxy.proxy.tlsconn import READ_MAX, READ_SIZE, TLSServer, tls_server
from support.procs import free_port


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(ctx)
    return ctx


class Recorder(asyncio.Protocol):
    """Keeps what arrives; ``on_data`` may act on each piece."""

    def __init__(self, on_data: Callable[[Recorder, bytes], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.pieces: list[bytes] = []
        self.digest = hashlib.sha256()
        self.size = 0
        self.on_data = on_data
        self.lost = asyncio.get_running_loop().create_future()
        self.paused_writing = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.pieces.append(data)
        self.size += len(data)
        self.digest.update(data)
        if self.on_data is not None:
            self.on_data(self, data)

    def pause_writing(self) -> None:
        self.paused_writing += 1

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def serve(ca: trustme.CA, factory: Callable[[], asyncio.Protocol], *, handshake_timeout: float = 5.0,
                failures: list[None] | None = None) -> tuple[TLSServer, int]:
    port = free_port()
    server = await tls_server("127.0.0.1", port, server_context(ca), factory, reuse_port=False,
                              handshake_timeout=handshake_timeout,
                              on_failure=lambda: (failures if failures is not None else []).append(None))
    loop = asyncio.get_running_loop()

    def sweep() -> None:  # what the listener's sweep does in certproxy
        if server.sock is not None:
            server.sweep(loop.time())
            loop.call_later(0.1, sweep)

    sweep()
    return server, port


async def serve_plane(ca: trustme.CA) -> tuple[TLSServer, int]:
    """``serve`` with certproxy's client connections of an in-process data plane."""
    from certproxy.proxy.client import ClientConnection
    from support.inproc import make_plane

    plane = make_plane()
    return await serve(ca, lambda: ClientConnection(plane.listener))


async def cyclic_garbage(run: Callable[[], Awaitable[None]], names: tuple[str, ...]) -> list[str]:
    """The objects of the types ``names`` that ``run`` leaves for the cyclic garbage
    collector to free (with the collector off meanwhile): their type names."""
    gc.collect()
    gc.disable()
    try:
        gc.set_debug(gc.DEBUG_SAVEALL)
        await run()
        await asyncio.sleep(0.3)  # the closes and connection_lost callbacks run
        gc.collect()
        return [type(o).__name__ for o in gc.garbage if type(o).__name__ in names]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def test_a_big_answer_to_a_slow_reader_is_paused_and_arrives_whole(
        ca: trustme.CA, client_ssl: ssl.SSLContext) -> None:
    total = 16 * 1024 * 1024
    payload = os.urandom(total)
    peak = 0

    class Sender(Recorder):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            transport.set_write_buffer_limits(high=256 * 1024)  # type: ignore[attr-defined]
            self.offset = 0
            self.resume_writing()

        def resume_writing(self) -> None:
            nonlocal peak
            assert self.transport is not None
            while self.offset < total and not self.transport.is_closing():
                self.transport.write(payload[self.offset:self.offset + 65536])
                self.offset += 65536
                peak = max(peak, self.transport.get_write_buffer_size())
                if self.transport.get_write_buffer_size() > 256 * 1024:
                    return
            self.transport.close()

        def pause_writing(self) -> None:
            self.paused_writing += 1

    senders: list[Sender] = []
    server, port = await serve(ca, lambda: senders.append(Sender()) or senders[-1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ssl, server_hostname="localhost")
    await asyncio.sleep(0.5)  # the client reads nothing for a while: the server's buffer fills
    received = hashlib.sha256()
    size = 0
    while chunk := await asyncio.wait_for(reader.read(1 << 20), 10):
        received.update(chunk)
        size += len(chunk)
    assert size == total and received.digest() == hashlib.sha256(payload).digest()
    assert senders[0].paused_writing >= 1
    assert peak <= 256 * 1024 + 2 * 65536, f"buffered {peak} bytes past the high-water mark"
    writer.close()
    server.close()


async def test_an_upload_arrives_whole_in_coalesced_reads(ca: trustme.CA, client_ssl: ssl.SSLContext) -> None:
    total = 32 * 1024 * 1024
    payload = os.urandom(total)
    protocols: list[Recorder] = []
    server, port = await serve(ca, lambda: protocols.append(Recorder()) or protocols[-1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ssl, server_hostname="localhost")
    for start in range(0, total, 1 << 20):
        writer.write(payload[start:start + (1 << 20)])
        await writer.drain()
    deadline = asyncio.get_running_loop().time() + 20
    while protocols[0].size < total:
        assert asyncio.get_running_loop().time() < deadline, f"{protocols[0].size} of {total} bytes arrived"
        await asyncio.sleep(0.02)
    rec = protocols[0]
    assert rec.digest.digest() == hashlib.sha256(payload).digest()
    assert max(map(len, rec.pieces)) <= READ_MAX
    # Whole records waiting are handed over together: far fewer calls than records.
    assert max(map(len, rec.pieces)) > READ_SIZE
    assert len(rec.pieces) < total // READ_SIZE
    writer.close()
    await asyncio.wait_for(rec.lost, 5)
    server.close()


async def test_handshakes_that_fail_or_never_start_are_reported_once_and_closed(
        ca: trustme.CA, client_ssl: ssl.SSLContext) -> None:
    failures: list[None] = []
    made: list[Recorder] = []
    server, port = await serve(ca, lambda: made.append(Recorder()) or made[-1], handshake_timeout=0.5,
                               failures=failures)
    loop = asyncio.get_running_loop()
    # A TCP probe: connects and closes.
    _, w = await asyncio.open_connection("127.0.0.1", port)
    w.close()
    # A client that never starts its handshake: closed after the handshake timeout.
    r, w = await asyncio.open_connection("127.0.0.1", port)
    started = loop.time()
    assert await asyncio.wait_for(r.read(), 5) == b""
    assert 0.4 < loop.time() - started < 3
    w.close()
    # A client that does not trust the certificate: it sends an alert.
    with pytest.raises(ssl.SSLError):
        await asyncio.open_connection("127.0.0.1", port, ssl=ssl.create_default_context(),
                                      server_hostname="localhost")
    deadline = loop.time() + 5
    while len(failures) < 3:
        assert loop.time() < deadline, f"{len(failures)} failures reported"
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    assert len(failures) == 3 and len(made) == 3
    assert all(rec.transport is None for rec in made)  # none reached connection_made
    # The listener still serves.
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ssl, server_hostname="localhost")
    w.write(b"ping")
    await w.drain()
    deadline = loop.time() + 5
    while not made[-1].pieces:
        assert loop.time() < deadline
        await asyncio.sleep(0.02)
    assert made[-1].pieces == [b"ping"]
    w.close()
    server.close()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_an_answer_with_the_close_ends_cleanly_and_the_session_resumes(
        ca: trustme.CA, client_ssl: ssl.SSLContext, version: ssl.TLSVersion) -> None:
    """``close(last)`` sends the answer and close_notify together; TLS 1.3 session
    tickets wait for the first answer, TLS 1.2's last handshake flight does not (a
    TLS 1.2 client waits for it before sending anything). Either way the client reads
    the answer, then a clean TLS close, and its session resumes."""
    client_ssl.minimum_version = client_ssl.maximum_version = version

    def answer(rec: Recorder, _data: bytes) -> None:
        assert rec.transport is not None
        rec.transport.close(b"answer")  # type: ignore[call-arg]

    server, port = await serve(ca, lambda: Recorder(answer))

    def client(session: ssl.SSLSession | None) -> tuple[bytes, ssl.SSLSession | None, bool]:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                client_ssl.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(b"request")
            got = b""
            while chunk := tls.recv(4096):  # an EOF without close_notify raises SSLEOFError
                got += chunk
            return got, tls.session, tls.session_reused

    got, session, _ = await asyncio.to_thread(client, None)
    assert got == b"answer" and session is not None and session.has_ticket
    got, _, reused = await asyncio.to_thread(client, session)
    assert got == b"answer" and reused
    server.close()


async def test_a_closed_connection_frees_its_tls_state_at_once(
        ca: trustme.CA, client_ssl: ssl.SSLContext) -> None:
    """A connection lets go of OpenSSL's state (its SSL object) when it closes, though it
    and its protocol still refer to each other: such a cycle waits for the garbage
    collector, which under a stream of new connections let hundreds of closed ones keep
    their TLS state and the heap grow by tens of MiB."""

    def answer(rec: Recorder, _data: bytes) -> None:
        assert rec.transport is not None
        rec.transport.close(b"answer")  # type: ignore[call-arg]

    recorders: list[Recorder] = []

    def factory() -> Recorder:
        recorders.append(Recorder(answer))
        return recorders[-1]

    server, port = await serve(ca, factory)

    def client() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                client_ssl.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"request")
            got = b""
            while chunk := tls.recv(4096):
                got += chunk
            return got

    def ssl_objects() -> int:
        return sum(1 for o in gc.get_objects() if type(o).__name__ == "_SSLSocket")

    gc.collect()
    gc.disable()
    try:
        before = ssl_objects()
        assert await asyncio.to_thread(client) == b"answer"
        await asyncio.wait_for(recorders[0].lost, 5)
        assert recorders[0].transport is not None  # the protocol still holds its transport
        assert ssl_objects() == before
    finally:
        gc.enable()
        server.close()


async def test_an_early_answer_reaches_a_client_that_is_still_sending(
        ca: trustme.CA, client_ssl: ssl.SSLContext) -> None:
    """The server answers after the first bytes and closes while the client keeps sending:
    the linger drops the rest instead of resetting the connection under the answer."""
    answer = b"HTTP/1.1 413 Content Too Large\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbig\n"

    def refuse(rec: Recorder, _data: bytes) -> None:
        assert rec.transport is not None
        if not rec.transport.is_closing():
            rec.transport.write(answer)
            rec.transport.close()

    server, port = await serve(ca, lambda: Recorder(refuse))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ssl, server_hostname="localhost")

    async def keep_sending() -> None:
        try:
            for _ in range(64):
                writer.write(os.urandom(256 * 1024))
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass

    sending = asyncio.create_task(keep_sending())
    got = b""
    while chunk := await asyncio.wait_for(reader.read(65536), 10):
        got += chunk
    assert got == answer
    sending.cancel()
    writer.close()
    server.close()


async def test_an_answer_before_the_body_lingers_while_the_client_pauses_then_sends(
        ca: trustme.CA, client_ssl: ssl.SSLContext) -> None:
    """close_lingering (the data plane's close when a request body is not all in): nothing
    is unread when the answer goes, the client sends more afterwards and only then reads.
    After a plain close, those bytes would be answered with a reset (which on some client
    systems also discards the unread answer); lingering drains them instead."""
    answer = b"HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Length: 5\r\n\r\nno!\r\n"

    def refuse(rec: Recorder, _data: bytes) -> None:
        assert rec.transport is not None
        if not rec.transport.is_closing():
            rec.transport.write(answer)
            rec.transport.close_lingering()  # type: ignore[attr-defined]

    server, port = await serve(ca, lambda: Recorder(refuse))

    def client() -> bytes:  # a blocking client that sends its whole body before it reads
        with client_ssl.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                    server_hostname="localhost") as sock:
            sock.sendall(b"PUT /v2/x/blobs/uploads/1 HTTP/1.1\r\nContent-Length: 600000\r\n\r\n")
            time.sleep(0.3)  # the answer is out and the server has closed its side
            for _ in range(8):
                sock.sendall(os.urandom(75000))  # no reset: the server drains what comes after its answer
                time.sleep(0.05)
            got = b""
            while chunk := sock.recv(65536):
                got += chunk
            return got

    assert await asyncio.to_thread(client) == answer
    server.close()


async def test_reading_paused_then_resumed_loses_nothing(ca: trustme.CA, client_ssl: ssl.SSLContext) -> None:
    """The protocol pauses reading on its first bytes; what the client sends meanwhile waits
    in the socket and arrives, in order, once reading resumes."""
    loop = asyncio.get_running_loop()

    def pause_once(rec: Recorder, _data: bytes) -> None:
        assert rec.transport is not None
        if len(rec.pieces) == 1:
            rec.transport.pause_reading()
            rec.paused_at = loop.time()  # type: ignore[attr-defined]
            loop.call_later(0.3, rec.transport.resume_reading)

    protocols: list[Recorder] = []
    server, port = await serve(ca, lambda: protocols.append(Recorder(pause_once)) or protocols[-1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ssl, server_hostname="localhost")
    writer.write(b"a" * 2500)
    await writer.drain()
    deadline = loop.time() + 5
    while not protocols or not protocols[0].pieces:
        assert loop.time() < deadline
        await asyncio.sleep(0.01)
    for part in (b"b" * 3000, b"c" * 40000):
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(0.05)
    assert protocols[0].size == 2500  # still paused
    while protocols[0].size < 45500:
        assert loop.time() < deadline, "what came while paused never arrived"
        await asyncio.sleep(0.02)
    assert b"".join(protocols[0].pieces) == b"a" * 2500 + b"b" * 3000 + b"c" * 40000
    writer.close()
    server.close()


async def test_plain_http_gets_the_https_url_and_a_clean_close(ca: trustme.CA) -> None:
    failures: list[None] = []
    server, port = await serve(ca, Recorder, failures=failures)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: reg.example.com\r\n\r\n")
    sock.settimeout(5)

    def read_all() -> bytes:
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        return data

    data = await asyncio.to_thread(read_all)
    sock.close()
    assert data.startswith(b"HTTP/1.1 400 ")
    assert b"use https://reg.example.com:%d/v2/" % port in data
    assert len(failures) == 1
    server.close()


def test_the_heap_is_tuned_for_bulk_transfers_where_glibc_is() -> None:
    """serve calls tune_malloc (service/checks.py): without it, after many connections every
    256 KiB piece of an upload was mapped afresh (about 375 page faults per MiB)."""
    import platform

    from certproxy.service.checks import tune_malloc

    assert tune_malloc() is (platform.libc_ver()[0] == "glibc")


async def test_a_closed_connection_is_freed_without_the_cyclic_garbage_collector(
        ca: trustme.CA, client_ssl: ssl.SSLContext) -> None:
    """A connection that has come and gone leaves no reference cycle among the TLS
    transport, the client connection, its parser and its flow control: they are freed
    when their last reference goes, not by runs of the cyclic collector (which a busy
    listener would otherwise pay for every few dozen connections)."""
    server, port = await serve_plane(ca)
    request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"

    async def one() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ssl,
                                                       server_hostname="localhost")
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return answer

    async def ten() -> None:
        for _ in range(10):
            assert (await one()).startswith(b"HTTP/1.1 200 ")

    try:
        assert (await one()).startswith(b"HTTP/1.1 200 ")  # the first one sets things up
        left = await cyclic_garbage(ten, ("TLSConnection", "ClientConnection", "FlowControl",
                                          "HttpRequestParser", "HandshakeOwner"))
    finally:
        server.close()
    assert left == [], f"freed only by the cyclic collector: {sorted(set(left))}"


async def test_a_clienthello_in_pieces_on_a_listener_that_answers_tls_alpn_01(
        ca: trustme.CA, client_ssl: ssl.SSLContext) -> None:
    """On a listener that reads the whole ClientHello before TLS (TLS-ALPN-01), a hello that
    arrives in several reads (a large one: many key shares, a small MTU) is gathered whole:
    its later pieces are not taken for a connection's first bytes. The handshake completes
    and the protocol gets the request."""
    asked: list[str] = []

    async def no_challenge(name: str) -> ssl.SSLContext | None:
        asked.append(name)
        return None

    port = free_port()
    server = await tls_server("127.0.0.1", port, server_context(ca), lambda: Recorder(
        lambda rec, data: rec.transport.write(b"got " + data)),  # type: ignore[union-attr]
        reuse_port=False, handshake_timeout=10, on_failure=lambda: None, alpn_challenge=no_challenge)

    def client() -> bytes:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = client_ssl.wrap_bio(incoming, outgoing, server_hostname="localhost")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with pytest.raises(ssl.SSLWantReadError):
                tls.do_handshake()
            hello = outgoing.read()
            for i in range(0, len(hello), 40):  # the hello in 40-byte pieces, each read alone
                sock.sendall(hello[i:i + 40])
                time.sleep(0.02)
            while True:
                data = sock.recv(65536)
                assert data, "closed during the handshake"
                incoming.write(data)
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    sock.sendall(outgoing.read())
            sock.sendall(outgoing.read())
            tls.write(b"ping")
            sock.sendall(outgoing.read())
            got = b""
            while not got.endswith(b"ping"):
                data = sock.recv(65536)
                assert data, "closed before the answer"
                incoming.write(data)
                with contextlib.suppress(ssl.SSLWantReadError):
                    got += tls.read(65536)
            return got

    try:
        assert await asyncio.to_thread(client) == b"got ping"
        assert asked == []  # no acme-tls/1 offered: no challenge was looked up
    finally:
        server.close()


async def test_a_connection_closed_mid_request_is_freed_without_the_cyclic_garbage_collector(
        ca: trustme.CA, client_ssl: ssl.SSLContext) -> None:
    """A client that goes away halfway through a request body (its exchange still being
    parsed) leaves no reference cycle either."""
    from certproxy.proxy.client import ClientConnection
    from certproxy.proxy.exchange import Exchange

    server, port = await serve_plane(ca)
    head = b"PUT /v2/r/blobs/uploads/u HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n"

    async def one() -> None:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ssl,
                                                       server_hostname="localhost")
        writer.write(head + b"x" * 1000)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()

    async def five() -> None:
        for _ in range(5):
            await one()

    try:
        await one()
        await asyncio.sleep(0.2)
        left = await cyclic_garbage(five, (ClientConnection.__name__, Exchange.__name__))
    finally:
        server.close()
    assert left == [], f"freed only by the cyclic collector: {sorted(set(left))}"


async def test_an_answer_queued_by_a_close_on_the_read_that_carried_close_notify_is_sent_whole(
        ca: trustme.CA, client_ssl: ssl.SSLContext) -> None:
    """The client sends its request and its close_notify at once; the protocol answers with
    more than the socket takes and closes, on that very read. The queued answer still goes
    out whole, and the protocol is told the connection is gone."""
    total = 8 * 1024 * 1024
    payload = os.urandom(total)
    recorders: list[Recorder] = []

    def answer(rec: Recorder, _data: bytes) -> None:
        assert rec.transport is not None
        rec.transport.write(payload)
        rec.transport.close()

    def factory() -> Recorder:
        recorders.append(Recorder(answer))
        return recorders[-1]

    server, port = await serve(ca, factory)

    def client() -> bytes:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = client_ssl.wrap_bio(incoming, outgoing, server_hostname="localhost")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    sock.sendall(outgoing.read())
                    data = sock.recv(65536)
                    assert data, "closed during the handshake"
                    incoming.write(data)
            tls.write(b"GET / HTTP/1.1\r\n\r\n")
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.unwrap()  # close_notify, sent with the request
            sock.sendall(outgoing.read())
            time.sleep(0.5)  # the server writes into a full socket buffer meanwhile
            got = bytearray()
            while True:
                data = sock.recv(1 << 20)
                if not data:
                    break
                incoming.write(data)
                try:
                    while piece := tls.read(1 << 20):
                        got += piece
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    pass
            return bytes(got)

    try:
        got = await asyncio.to_thread(client)
        assert len(got) == total and got == payload
        await asyncio.wait_for(recorders[0].lost, 10)
    finally:
        server.close()
