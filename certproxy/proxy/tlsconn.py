"""certproxy's TLS transport: TLS on memory BIOs of its own, driven from the loop's callbacks.

Why (``docs/0002-own-tls-transport.md``): the event loop's TLS layer keeps
buffers per connection (24.5 KiB per idle connection with uvloop, 256 KiB with
asyncio's own) and wraps every step in generic machinery. Here each connection
is the C object behind ``ssl.SSLObject`` (``SSLContext._wrap_bio``, without
the Python wrapper) on two ``MemoryBIO``s; every ``recv`` lands in one buffer
shared by all connections. About 20 KiB per idle connection and 12 % less CPU
per new connection than the loop's layer, with its bulk path kept.

How a connection goes:

1. accepted; the first bytes are read. Plain HTTP on the TLS port gets a
   readable 400 naming the ``https://`` URL. A listener that answers
   TLS-ALPN-01 reads the whole ClientHello first and may pick the validation
   context (``hello.py``).
2. the TLS handshake; the listener's sweep ends it after ``handshake_timeout``
   (``TLSServer.sweep``); a handshake that fails, times out or is abandoned is
   reported once (``on_failure``).
3. ``connection_made``; what one ``recv`` brings (up to ``READ_MAX`` bytes) is
   decrypted and goes to the protocol in one call (``parts_received`` with the
   records' plaintexts where the protocol has it, else ``data_received`` with
   them joined); what the protocol writes is encrypted and sent in one
   ``send``, queued only when the socket is full (then ``pause_writing`` past
   the high-water mark). TLS 1.3 session tickets go out with the first answer.
4. ``close(last)`` sends what is queued, then ``last``, then ``close_notify``:
   an answer and the close in one ``send`` when the socket takes it. While the client may
   still be sending, the sending side is shut down and what arrives is dropped
   for up to ``LINGER`` seconds, so that an answer sent before a client finished
   its request is not destroyed by a reset. ``abort()`` closes at once.

The protocol sees the subset of ``asyncio.Transport`` the data plane uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from .hello import ACME_TLS_1, MAX_RECORD, NeedMore, parse_client_hello
from .owner import HandshakeOwner
from .wire import plain_http_answer

log = logging.getLogger("certproxy.tls")

READ_SIZE = 16384  # one TLS record's plaintext at most: SSL_read returns one record
READ_MAX = 262144  # one recv takes at most this much
WRITE_JOIN = 262144  # queued sends are joined up to this size
LINGER = 5.0
ACCEPT_BATCH = 64
ACCEPT_RETRY = 0.1  # out of descriptors: accepting pauses this long

# An AlpnChallenge: the validation context for a server name with a pending
# TLS-ALPN-01 challenge, or None.
AlpnChallenge = Callable[[str], Awaitable[ssl.SSLContext | None]]

_HANDSHAKE, _OPEN, _CLOSING, _CLOSED = range(4)
# Every recv lands here first (the loop runs one callback at a time): no buffer per connection.
_RECV = memoryview(bytearray(READ_MAX))


class TLSServer:
    """A listening socket whose connections run on ``TLSConnection``.

    ``protocol_factory`` is called at accept time (the protocol exists while
    its handshake is under way); ``on_failure()`` for each handshake that does
    not complete; ``alpn_challenge`` when the listener answers
    TLS-ALPN-01.
    """

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        protocol_factory: Callable[[], asyncio.Protocol],
        *,
        port: int,
        handshake_timeout: float,
        on_failure: Callable[[], None],
        alpn_challenge: AlpnChallenge | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.sock: socket.socket | None = sock
        self.context = context
        self.factory = protocol_factory
        self.port = port
        self.handshake_timeout = handshake_timeout
        self.on_failure = on_failure
        self.alpn_challenge = alpn_challenge
        # Connections whose handshake is under way: when each was accepted. The
        # listener's sweep ends those older than handshake_timeout.
        self.handshaking: dict[TLSConnection, float] = {}
        self._accept_failed_logged = False
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting; connections already accepted carry on."""
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def _accept(self) -> None:
        sock = self.sock
        if sock is None:
            return
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Level-triggered: the pending connection would wake us at once again.
                    if not self._accept_failed_logged:
                        log.warning("accept failed on port %d: %s (retrying)", self.port, exc.strerror)
                        self._accept_failed_logged = True
                    self.loop.remove_reader(sock.fileno())
                    self.loop.call_later(ACCEPT_RETRY, self._resume_accepting)
                    return
                continue  # ECONNABORTED and the like: that one connection is gone
            self._accept_failed_logged = False
            TLSConnection(self, conn, peer)

    def sweep(self, now: float) -> None:
        """End the handshakes that have taken longer than ``handshake_timeout``."""
        horizon = now - self.handshake_timeout
        expired = [conn for conn, started in self.handshaking.items() if started <= horizon]
        for conn in expired:
            conn.handshake_timed_out()

    def _resume_accepting(self) -> None:
        if self.sock is not None:
            self.loop.add_reader(self.sock.fileno(), self._accept)


class TLSConnection:
    """One server-side TLS connection; the transport its protocol writes to."""

    def __init__(self, server: TLSServer, sock: socket.socket, peer: Any) -> None:
        self.server = server
        self.loop = loop = server.loop
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.protocol: asyncio.Protocol = server.factory()
        self.state = _HANDSHAKE
        self.ssl: Any = None  # the C-level SSL object (_ssl._SSLSocket) on the two BIOs
        self.owner: HandshakeOwner | None = None  # the SSL object's owner (owner.py)
        self.incoming: ssl.MemoryBIO | None = None
        self.outgoing: ssl.MemoryBIO | None = None
        self.hello = b""  # TLS-ALPN-01: the ClientHello read so far
        self.parts_received: Callable[[list[bytes]], None] | None = None  # the protocol's, once open
        self.out: list[bytes] = []  # encrypted bytes the socket has not taken yet
        self.out_size = 0
        self.high = 65536
        self.low = 16384
        self.protocol_paused = False
        self.reading = True
        self.lost_called = False
        self.must_linger = False  # the client may still be sending: see close_lingering
        self.timer: asyncio.TimerHandle | None = None  # while lingering
        server.handshaking[self] = loop.time()
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # One reader callback for the connection's life: _readable hands the first bytes
        # to _first_bytes until the TLS state exists (one add_reader per connection).
        loop.add_reader(self.fd, self._readable)

    def _recv(self) -> int | None:
        """Read what the socket has into ``_RECV`` (at most READ_MAX bytes): how many
        bytes; None when it has nothing yet; 0 at the client's FIN or a reset."""
        try:
            return self.sock.recv_into(_RECV)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return 0

    # handshake
    def _first_bytes(self) -> None:
        n = self._recv()
        if n is None:
            return
        if not n:
            self._handshake_failed()  # a TCP probe, or a client that gave up
            return
        data = _RECV[:n].tobytes()
        server = self.server
        if not self.hello:  # the connection's first bytes (not the rest of a ClientHello)
            if 65 <= data[0] <= 90:  # an ASCII capital: a request method, so plain HTTP
                self._answer_plain_http(data)
                return
            if server.alpn_challenge is None or data[0] != 22:
                self._start_tls(server.context, data)
                return
        # TLS-ALPN-01: the whole ClientHello decides the context.
        self.hello += data
        try:
            hello = parse_client_hello(self.hello)
        except NeedMore:
            if len(self.hello) < MAX_RECORD:
                return  # the rest is on its way
            hello = None
        if hello is not None and hello.server_name and ACME_TLS_1 in hello.alpn:
            self.loop.remove_reader(self.fd)
            task = self.loop.create_task(self._challenge(hello.server_name))
            task.add_done_callback(_consume)
            return
        self._start_tls(server.context, self.hello)

    async def _challenge(self, name: str) -> None:
        assert self.server.alpn_challenge is not None
        try:
            special = await self.server.alpn_challenge(name)
        except Exception:
            log.exception("TLS-ALPN-01 challenge lookup for %s failed", name)
            special = None
        if self.state != _HANDSHAKE or self.sock.fileno() < 0:
            return
        if special is not None:
            self.protocol = _AnswerOnly()
        self.loop.add_reader(self.fd, self._readable)
        self._start_tls(special or self.server.context, self.hello)

    def _start_tls(self, ctx: ssl.SSLContext, first: bytes) -> None:
        self.hello = b""
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        # CPython's private constructor behind SSLContext.wrap_bio (tests/test_private_apis.py).
        owner = self.owner = HandshakeOwner(self.sock)  # what the SNI callback is handed
        self.ssl = owner.ssl = ctx._wrap_bio(  # type: ignore[attr-defined]
            self.incoming, self.outgoing, True, None, owner=owner, session=None
        )
        self.incoming.write(first)
        self._handshake()

    def _handshake(self) -> None:
        try:
            self.ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError:
            self._flush()  # OpenSSL's alert
            self._handshake_failed(linger=True)  # unread bytes must not reset the alert
            return
        if self.ssl.version() != "TLSv1.3":
            self._flush()  # TLS 1.2: the server's Finished, which the client waits for
        # TLS 1.3: all OpenSSL has to send now is its session tickets; they go out with
        # the first answer (or the close), one send fewer per connection.
        self.server.handshaking.pop(self, None)
        self.state = _OPEN
        self.parts_received = getattr(self.protocol, "parts_received", None)
        try:
            self.protocol.connection_made(self)  # type: ignore[arg-type]
        except Exception as exc:
            self._protocol_error(exc, "connection_made")
            return
        if self.state == _OPEN and self.reading and self.incoming.pending:  # type: ignore[union-attr]
            self._decrypt()  # the request came with the client's Finished

    def handshake_timed_out(self) -> None:
        if self.state == _HANDSHAKE:
            self._handshake_failed()

    def _handshake_failed(self, linger: bool = False) -> None:
        if self.state != _HANDSHAKE:
            return
        self.state = _CLOSED
        self.server.handshaking.pop(self, None)
        if linger:
            self._linger()
        else:
            self._release()
        self.server.on_failure()

    def _answer_plain_http(self, head: bytes) -> None:
        """``http://`` sent to an ``https://`` port: a readable 400, then close."""
        try:
            self.sock.send(plain_http_answer(head, self.server.port))
        except OSError:
            self._handshake_failed()
            return
        self._handshake_failed(linger=True)

    # reading
    def _readable(self) -> None:
        if self.incoming is None:
            if self.state == _HANDSHAKE:
                self._first_bytes()  # no TLS state yet: plain HTTP, a TLS-ALPN-01 hello, or TLS
            return
        n = self._recv()
        if n is None:
            return
        if not n:
            if self.state == _HANDSHAKE:
                self._handshake_failed()
            else:
                self._eof()
            return
        self.incoming.write(_RECV[:n])
        if self.state == _HANDSHAKE:
            self._handshake()
        elif self.state == _OPEN:
            self._decrypt()

    def _decrypt(self) -> None:
        """Hand the protocol what the records received so far hold, in one call: as a list
        of the records' plaintexts to a protocol with ``parts_received``, else joined."""
        read = self.ssl.read
        pending = self.ssl.pending
        incoming = self.incoming
        assert incoming is not None
        chunks: list[bytes] = []
        ended = False
        while incoming.pending or pending():
            try:
                piece = read(READ_SIZE)
            except ssl.SSLWantReadError:
                break  # the rest of a record is still on its way
            except ssl.SSLError:
                ended = True  # close_notify, or a broken record
                break
            if not piece:
                ended = True
                break
            chunks.append(piece)
        # What OpenSSL wrote while reading (session tickets, an answer to a key update)
        # goes out with the next write or the close: neither is awaited by the client.
        if chunks:
            try:
                if len(chunks) == 1:
                    self.protocol.data_received(chunks[0])
                elif self.parts_received is not None:
                    self.parts_received(chunks)  # the records' plaintexts, not joined: one copy fewer
                else:
                    self.protocol.data_received(b"".join(chunks))
            except Exception as exc:
                self._protocol_error(exc, "data_received")
                return
        if ended:
            self._eof()

    def _eof(self) -> None:
        if self.state == _CLOSING:
            return  # the protocol closed on this very read: the close under way sends the rest
        if self.state != _OPEN:
            self._release()
            return
        try:
            keep_open = self.protocol.eof_received()
        except Exception as exc:
            self._protocol_error(exc, "eof_received")
            return
        if keep_open:
            self.pause_reading()
        else:
            self.close()

    def pause_reading(self) -> None:
        if self.reading and self.state == _OPEN:
            self.reading = False
            self.loop.remove_reader(self.fd)

    def resume_reading(self) -> None:
        if not self.reading and self.state == _OPEN:
            self.reading = True
            self.loop.add_reader(self.fd, self._readable)
            if self.incoming is not None and self.incoming.pending:
                self.loop.call_soon(self._decrypt_if_open)

    def _decrypt_if_open(self) -> None:
        if self.state == _OPEN and self.reading:
            self._decrypt()

    # writing
    def write(self, data: bytes) -> None:
        if self.state != _OPEN or not data:
            return
        try:
            self.ssl.write(data)
        except ssl.SSLError:
            self.abort()
            return
        self._flush()

    def _flush(self) -> None:
        """Send what OpenSSL has encrypted; queue what the socket does not take."""
        outgoing = self.outgoing
        if outgoing is None or not outgoing.pending:
            return
        data = outgoing.read()
        if self.out:
            self.out.append(data)
            self.out_size += len(data)
            self._check_high()
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.abort()
            return
        if sent < len(data):
            rest = data[sent:]
            self.out.append(rest)
            self.out_size += len(rest)
            self.loop.add_writer(self.fd, self._writable)
            self._check_high()

    def _check_high(self) -> None:
        if not self.protocol_paused and self.out_size > self.high and self.state == _OPEN:
            self.protocol_paused = True
            try:
                self.protocol.pause_writing()
            except Exception as exc:
                self._protocol_error(exc, "pause_writing")

    def _writable(self) -> None:
        out = self.out
        while out:
            if len(out) > 1 and len(out[0]) < WRITE_JOIN:
                size, n = 0, 0
                while n < len(out) and size + len(out[n]) <= WRITE_JOIN:
                    size += len(out[n])
                    n += 1
                if n > 1:
                    out[:n] = [b"".join(out[:n])]
            first = out[0]
            try:
                sent = self.sock.send(first)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.abort()
                return
            self.out_size -= sent
            if sent < len(first):
                out[0] = first[sent:]
                return
            del out[0]
        self.loop.remove_writer(self.fd)
        if self.protocol_paused and self.out_size <= self.low:
            self.protocol_paused = False
            if self.state == _OPEN:
                try:
                    self.protocol.resume_writing()
                except Exception as exc:
                    self._protocol_error(exc, "resume_writing")
        if self.state == _CLOSING and not self.out:
            self._finish_close()

    def get_write_buffer_size(self) -> int:
        return self.out_size

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high = 65536 if high is None else high
        self.low = self.high // 4 if low is None else low

    # closing
    def is_closing(self) -> bool:
        return self.state != _OPEN

    def close(self, last: bytes = b"") -> None:
        """Send ``last`` after what is buffered, then close_notify: one send when the
        socket takes it all (an answer and the close in one); linger if need be; close."""
        if self.state != _OPEN:
            return
        self.state = _CLOSING
        self.reading = False
        with contextlib.suppress(ssl.SSLError, ValueError):
            if last:
                self.ssl.write(last)
            self.ssl.shutdown()  # close_notify; the client's is not awaited
        self._flush()
        if self.state != _CLOSING:
            return  # the send failed: aborted
        if self.out:  # the rest goes out as the socket takes it; nothing more is decrypted
            self.loop.add_reader(self.fd, self._linger_read)
        else:
            self._finish_close()

    def close_lingering(self, last: bytes = b"") -> None:
        """close(), for an answer sent before the request was whole (the client may
        still be sending its body): the close lingers even if nothing is unread yet."""
        self.must_linger = True
        self.close(last)

    def _finish_close(self) -> None:
        self.state = _CLOSED
        self._linger()
        self._lost()

    def _linger(self) -> None:
        """Close; but while the client is still sending (bytes unread), stop sending and
        drop what it sends until it closes (at most LINGER s): closing a socket with
        unread bytes resets the connection, and a reset can destroy the answer."""
        if self.out:
            self.loop.remove_writer(self.fd)
        if not self.must_linger:
            try:
                pending = self.sock.recv(1, socket.MSG_PEEK)
            except OSError:
                pending = b""  # nothing unread (or a reset): nothing to wait for
            if not pending:
                self._release()
                return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._release()
            return
        self.loop.add_reader(self.fd, self._linger_read)
        self.timer = self.loop.call_later(LINGER, self._release)

    def _linger_read(self) -> None:
        recv = self.sock.recv_into
        for _ in range(16):
            try:
                if not recv(_RECV):
                    break  # the client's FIN
            except (BlockingIOError, InterruptedError):
                return  # all read; its FIN (or more) is still to come
            except OSError:
                break  # reset
        else:
            return
        if self.state == _CLOSING:
            self.abort()  # gone before the answer was all out
        else:
            self._release()

    def abort(self) -> None:
        if self.state == _HANDSHAKE:
            self._handshake_failed()
            return
        was_open = self.state in (_OPEN, _CLOSING)
        self.state = _CLOSED
        self._release()
        if was_open:
            self._lost()

    def _release(self) -> None:
        """Give the socket back: no more callbacks, descriptor closed, TLS state freed."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.fd)
            if self.out:
                self.loop.remove_writer(self.fd)
            self.sock.close()
        self.out = []
        self.out_size = 0
        self.ssl = self.incoming = self.outgoing = None
        # The owner holds the SSL object too: let go of both, so that OpenSSL's state goes
        # now, whatever still refers to this connection (a protocol's reference lasts until
        # its connection_lost; a cycle of references, until the garbage collector runs).
        if self.owner is not None:
            self.owner.ssl = None
            self.owner = None

    def _lost(self) -> None:
        if self.lost_called:
            return
        self.lost_called = True
        self.loop.call_soon(self.protocol.connection_lost, None)

    def _protocol_error(self, exc: BaseException, where: str) -> None:
        self.loop.call_exception_handler(
            {
                "message": f"certproxy: {where} of a TLS connection raised",
                "exception": exc,
                "protocol": self.protocol,
            }
        )
        self.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default


class _AnswerOnly(asyncio.Protocol):
    """A TLS-ALPN-01 validation: the handshake is the answer; then close."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def _consume(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("TLS-ALPN-01 handshake task failed", exc_info=task.exception())


async def tls_server(
    host: str,
    port: int,
    context: ssl.SSLContext,
    protocol_factory: Callable[[], asyncio.Protocol],
    *,
    reuse_port: bool,
    handshake_timeout: float,
    on_failure: Callable[[], None],
    alpn_challenge: AlpnChallenge | None = None,
    backlog: int = 1024,
) -> TLSServer:
    """Bind ``host:port`` and serve TLS on it with ``TLSConnection``."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:  # as the event loop's listeners do: IPv6 only
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return TLSServer(
        sock,
        context,
        protocol_factory,
        port=port,
        handshake_timeout=handshake_timeout,
        on_failure=on_failure,
        alpn_challenge=alpn_challenge,
    )
