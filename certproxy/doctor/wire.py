"""How ``certproxy doctor`` speaks HTTP/1.1: one request per connection, on raw sockets.

How this works: every request opens its own TCP connection (and TLS session) to the
first address of the registry's name that accepts it, sends the head, then the body in
pieces of ``PIECE`` bytes. Before each piece it looks, without waiting, whether an answer
has begun to arrive: an answer the front sends before the body is complete (a 413, the
registry's early error) is seen, and the rest of the body is not sent. A pause may be
asked for after a number of body bytes: the connection is then watched for that long,
and an answer or a close during it is noted with its time. TLS 1.3 session tickets make
the socket readable without any answer: a look reads what is there (kept for the
parser), and counts only application data or the peer's close. The answer's head and
body are read with ``http.client``'s parser.
"""

from __future__ import annotations

import hashlib
import http
import http.client
import io
import json
import random
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, cast

PIECE = 256 * 1024
USER_AGENT = "certproxy-doctor"


@dataclass(frozen=True)
class Target:
    """Where the registry is: the name as the client writes it, the port, its addresses."""

    host: str
    port: int
    addresses: tuple[str, ...] = ()

    @property
    def authority(self) -> str:
        """The ``Host`` header's value (and the URL's authority), the port left out for 443."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 443 else f"{host}:{self.port}"

    def url(self, path: str = "/") -> str:
        return f"https://{self.authority}{path}"


class Body(Protocol):
    @property
    def length(self) -> int: ...

    def pieces(self) -> Iterator[bytes]: ...


@dataclass
class RandomBlob:
    """``size`` bytes of pseudo-random data, made again piece by piece whenever sent."""

    size: int
    seed: str
    _digest: str | None = None

    @property
    def length(self) -> int:
        return self.size

    def pieces(self) -> Iterator[bytes]:
        for index, start in enumerate(range(0, self.size, PIECE)):
            yield random.Random(f"{self.seed}:{index}").randbytes(min(PIECE, self.size - start))

    @property
    def digest(self) -> str:
        if self._digest is None:
            sha = hashlib.sha256()
            for piece in self.pieces():
                sha.update(piece)
            self._digest = f"sha256:{sha.hexdigest()}"
        return self._digest


@dataclass
class Answer:
    """What came back for one request; ``status`` None when nothing (usable) did."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case
    body: bytes = b""
    sent: int = 0  # body bytes sent
    early: bool = False  # the answer began before the whole body was sent
    seconds: float = 0.0  # from the head sent to the answer's head read
    pause_event: float | None = None  # seconds into the pause when an answer or a close came
    error: str | None = None  # why no answer (closed, reset, timed out)
    alpn: str | None = None

    @property
    def reason(self) -> str:
        """The registry's error codes (``BLOB_UPLOAD_UNKNOWN``), else the status' phrase."""
        try:
            errors = json.loads(self.body).get("errors") or []
            codes = [str(e.get("code")) for e in errors if isinstance(e, dict) and e.get("code")]
        except (ValueError, AttributeError):
            codes = []
        if codes:
            return ", ".join(codes)
        try:
            return http.HTTPStatus(self.status or 0).phrase
        except ValueError:
            return ""

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


class _Prefixed(io.RawIOBase):
    """A socket's stream with the bytes a look already read in front of it."""

    def __init__(self, prefix: bytes, sock: socket.socket) -> None:
        self._prefix = prefix
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        return self._sock.recv_into(buffer)


class _Shim:
    """What ``http.client.HTTPResponse`` needs of a socket: ``makefile``."""

    def __init__(self, raw: _Prefixed) -> None:
        self._raw = raw

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(self._raw)


def connect_tcp(target: Target, timeout: float, port: int | None = None) -> socket.socket:
    """A TCP connection to the first address that accepts one; the last address's OSError
    otherwise."""
    error: OSError = OSError(f"{target.host} has no address")
    for address in target.addresses or (target.host,):
        try:
            return socket.create_connection((address, port or target.port), timeout=timeout)
        except OSError as exc:
            error = exc
    raise error


def connect(target: Target, context: ssl.SSLContext, timeout: float) -> ssl.SSLSocket:
    """A TLS connection to the first address that accepts one; OSError or ssl.SSLError."""
    sock = connect_tcp(target, timeout)
    try:
        return context.wrap_socket(sock, server_hostname=target.host)
    except BaseException:
        sock.close()
        raise


def describe(exc: BaseException) -> str:
    """An error as one short phrase."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or str(exc)
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, (BrokenPipeError, http.client.RemoteDisconnected, ssl.SSLEOFError)):
        return "connection closed"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


@dataclass
class Request:
    """One request and how to send it. ``pause_after``: body bytes to send before a pause
    of ``pause`` seconds; ``stop_after_pause``: send no more after the pause."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: Body | None = None
    pause_after: int | None = None
    pause: float = 0.0
    stop_after_pause: bool = False
    read_limit: int = 65536
    sink: Callable[[bytes], None] | None = None  # receives the whole answer body

    def head(self, target: Target) -> bytes:
        lines = [
            f"{self.method} {self.path} HTTP/1.1",
            f"Host: {target.authority}",
            f"User-Agent: {USER_AGENT}",
        ]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        if self.body is not None or self.method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {self.body.length if self.body else 0}")
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


class _Exchange:
    """One request on one connection (see the module's comment)."""

    def __init__(self, sock: ssl.SSLSocket, request: Request, timeout: float) -> None:
        self.sock = sock
        self.request = request
        self.timeout = timeout
        self.prefix = b""
        self.answer = Answer(alpn=sock.selected_alpn_protocol())
        self.started = 0.0

    def _look(self, wait: float) -> bool:
        """Whether an answer (or the peer's close) arrived within ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while True:
            left = max(0.0, deadline - time.monotonic())
            if self.sock.pending() or select.select([self.sock], [], [], left)[0]:
                self.sock.setblocking(False)
                try:
                    data = self.sock.recv(65536)
                except (ssl.SSLWantReadError, BlockingIOError):
                    data = None  # a session ticket, no application data
                except OSError:
                    data = b""
                finally:
                    self.sock.settimeout(self.timeout)
                if data is not None:
                    self.prefix += data
                    return True
            if time.monotonic() >= deadline:
                return False

    def _sliced(self, body: Body) -> Iterator[bytes]:
        """The body's pieces, one cut where the pause comes."""
        at, done = self.request.pause_after, 0
        for piece in body.pieces():
            if at is not None and done < at < done + len(piece):
                yield piece[: at - done]
                piece = piece[at - done :]
                done = at
            done += len(piece)
            yield piece

    def _paused(self) -> bool:
        """The pause: True when sending ends there (an answer came, or it was asked)."""
        request, answer = self.request, self.answer
        paused = time.monotonic()
        request.pause_after = None
        if self._look(request.pause):
            answer.pause_event = time.monotonic() - paused
            return True
        return request.stop_after_pause

    def send(self, target: Target) -> bool:
        """The head and the body; False when no answer is to be waited for."""
        request, answer = self.request, self.answer
        self.sock.sendall(request.head(target))
        self.started = time.monotonic()
        if request.body is None:
            return True
        for piece in self._sliced(request.body):
            if request.pause_after is not None and answer.sent >= request.pause_after and self._paused():
                return answer.pause_event is not None
            if self._look(0):
                return True
            self.sock.sendall(piece)
            answer.sent += len(piece)
        if request.pause_after is not None and self._paused():  # a pause at the very end
            return answer.pause_event is not None or not request.stop_after_pause
        return True

    def receive(self) -> None:
        answer, request = self.answer, self.request
        response = http.client.HTTPResponse(
            cast(socket.socket, _Shim(_Prefixed(self.prefix, self.sock))), method=request.method
        )
        response.begin()
        answer.seconds = time.monotonic() - self.started
        answer.status = response.status
        answer.headers = {k.lower(): v for k, v in response.getheaders()}
        if request.sink is not None:
            while piece := response.read(1024 * 1024):
                request.sink(piece)
        else:
            answer.body = response.read(request.read_limit)


def send(target: Target, context: ssl.SSLContext, request: Request, timeout: float = 60.0) -> Answer:
    """``request`` on a new connection; errors end up in the answer, never raised."""
    try:
        sock = connect(target, context, timeout)
    except (OSError, ssl.SSLError) as exc:
        return Answer(error=f"cannot connect: {describe(exc)}")
    exchange = _Exchange(sock, request, timeout)
    answer = exchange.answer
    with sock:
        wait = True
        try:
            wait = exchange.send(target)
        except (OSError, ssl.SSLError) as exc:
            answer.error = describe(exc)  # the answer may still be there to read
        if not wait:
            answer.error = "no answer during the pause"
            return answer
        try:
            exchange.receive()
            answer.error = None
        except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
            if answer.status is None:
                answer.error = answer.error or describe(exc)
    if request.body is not None and answer.status is not None and answer.sent < request.body.length:
        answer.early = True
    return answer
