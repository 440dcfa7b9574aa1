"""One request and its response, from the parsed head to the last byte.

How this works: the client connection (``client.py``) makes an ``Exchange``
when a request head is parsed and queues it; the first in the queue runs.
``begin()`` either answers at once (certproxy's own error, a refused method),
starts a task for what must wait (a ``Responder``, a credential check, a new
upstream connection), or takes an idle pooled connection and writes the
request head. Request body bytes go to the upstream connection as the
client's parser yields them (buffered per client read, written once); the
response comes back through ``ResponseSink``, the interface the upstream
connection sees, and is written to the client as it arrives. Nothing here
decodes a header value or makes a task or timer on the fast path.

The state, all owned here: the phase of each side (``phases.py``: the request
``BODY`` / ``DISCARD`` / ``COMPLETE``, the response ``WAITING`` / ``STREAMING``
/ ``COMPLETE``), moved only through ``phases.advance``; and facts that are not
phases: ``body_sent`` (body bytes went upstream, so no resend), ``chunk_out``
(re-chunked towards the client), ``close_after`` (the connection closes after
this answer), ``retried`` (the one resend on a fresh connection was used),
``done`` (finished or the client is gone: nothing more is written). The client
connection reads the phases; the exchange sees the client only through
``ClientSide``, and pauses nothing itself: it tells the connection's
``FlowControl`` which upstream connection it uses.

A failure before the response head reaches the client becomes certproxy's
own one-line answer (502 refused or broken upstream, 504 silent upstream).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from .flow import FlowControl
from .headers import Answer, Headers, first, values
from .hostname import origin, parse_host
from .messages import Refusal, forward, refusal, response_head
from .phases import RequestPhase, ResponsePhase, advance
from .routes import AccessRecord, AnyRoute, Pass, Responder
from .upstream import UpstreamConnection, describe_os_error
from .wire import HTML, IDEMPOTENT, TEXT, error_body, error_headers, error_page, own_response, wants_html

log = logging.getLogger("certproxy.proxy")

BODY, DISCARD, COMPLETE = RequestPhase.BODY, RequestPhase.DISCARD, RequestPhase.COMPLETE
WAITING, STREAMING, DONE = ResponsePhase.WAITING, ResponsePhase.STREAMING, ResponsePhase.COMPLETE


class Flushable(Protocol):
    def flush(self) -> None: ...


class ClientSide(Protocol):
    """What an exchange sees of its client connection (``client.ClientConnection``)."""

    route: AnyRoute
    client_ip: str
    client_ip_b: bytes
    flow: FlowControl

    def is_current(self, ex: Exchange) -> bool:
        """Whether ``ex`` is the request being answered now."""

    def last_answer(self, ex: Exchange) -> bool:
        """Whether ``ex``'s answer is the connection's last."""

    def write(self, data: bytes) -> None: ...

    def writelines(self, data: tuple[bytes, ...]) -> None: ...

    def cork(self) -> None: ...

    def uncork(self) -> None: ...

    def flush_after_read(self, target: Flushable) -> None:
        """``target.flush()`` once the current client read has been parsed."""

    def exchange_finished(self, ex: Exchange) -> None: ...

    def abort(self) -> None: ...


class Exchange:
    """One request and its response (implements ``upstream.ResponseSink``)."""

    __slots__ = (
        "conn",
        "route",
        "method",
        "target",
        "headers",
        "keep_alive",
        "http10",
        "started",
        "bytes_in",
        "bytes_out",
        "status",
        "upstream",
        "head",
        "pending",
        "request",
        "response",
        "chunked_in",
        "chunk_out",
        "close_after",
        "own",
        "body_sent",
        "retried",
        "done",
        "task",
        "host",
        "answer",
        "check_auth",
        "creds",
        "sent_at",
        "expects_body",
        "path",
        "gate_pending",
        "user",
        "action",
        "repository",
        "kept",
    )

    def __init__(
        self,
        conn: ClientSide,
        method: bytes,
        target: bytes,
        headers: Headers,
        keep_alive: bool,
        http10: bool,
        chunked_in: bool,
        expects_body: bool,
        upgrade: bool = False,
    ) -> None:
        self.conn = conn
        self.route: AnyRoute = conn.route
        self.method = method
        self.target = target
        self.headers = headers
        self.keep_alive = keep_alive
        self.http10 = http10
        self.chunked_in = chunked_in
        self.expects_body = expects_body
        self.started = time.monotonic()
        self.bytes_in = self.bytes_out = self.status = 0
        self.upstream: UpstreamConnection | None = None
        self.head = b""
        self.pending: list[bytes] = []
        self.request = BODY
        self.response = WAITING
        self.chunk_out = self.body_sent = self.retried = self.done = False
        self.close_after = not keep_alive
        self.own: tuple[int, bytes, Headers, bytes] | None = None
        self.task: asyncio.Future[None] | None = None
        self.host: bytes | None = None
        # Set when the answer is certproxy's own (a control listener, /healthz).
        self.answer: Responder | None = None
        self.check_auth = False  # credentials not seen recently: bcrypt in a thread first
        self.creds: bytes | None = None
        self.sent_at = 0.0
        self.path = b""  # the origin-form target that goes upstream
        self.gate_pending = False  # the route's gate decides in a task first
        self.user: str | None = None  # what the route's gate noted, for the access log
        self.action: str | None = None
        self.repository: str | None = None
        self.kept: bytes | None = None  # the response header the route's observer keeps
        self.prepare(upgrade)
        if self.route.observer is not None:
            self.route.observer.begin(self)

    # deciding what to do with the request
    def prepare(self, upgrade: bool) -> None:
        """Who answers: certproxy itself (a refusal, a control listener, /healthz), or
        the upstream, with the head ``messages.forward`` makes."""
        route = self.route
        decided = refusal(self.method, upgrade=upgrade, expects_body=self.expects_body)
        if isinstance(decided, Refusal):
            self.close_after = self.close_after or decided.close
            self.own_error(decided.status, decided.reason, list(decided.headers))
            return
        if route.answer is not None:
            self.answer = route.answer
            return
        if self.target == b"/healthz" and route.healthz is not None:
            self.answer = route.healthz
            return
        if not self._forward(self.target):
            return
        gate = route.gate
        if gate is not None:
            verdict = gate.check(self, self.path, self.host or b"")
            if verdict is None:
                self.gate_pending = True
                return
            if not self._passed(verdict):
                return
        if route.auth is not None:
            # Forwarded once checked, as nginx's auth_basic does: the UI passes it on
            # to the registry, which checks the same htpasswd (one login for both).
            self.creds = first(self.headers, b"authorization")
            self.check_auth = not route.auth.known(self.creds)

    def _forward(self, target: bytes) -> bool:
        """Make the head for the upstream from ``target``; False when certproxy refuses."""
        decided = forward(
            self.route,
            self.method,
            target,
            self.headers,
            http10=self.http10,
            chunked=self.chunked_in,
            client_ip=self.conn.client_ip_b,
        )
        if isinstance(decided, Refusal):
            self.close_after = self.close_after or decided.close
            self.own_error(decided.status, decided.reason, list(decided.headers))
            return False
        self.head, self.host, self.path = decided
        return True

    def _passed(self, verdict: Pass | Answer) -> bool:
        """Act on the route gate's verdict: True when the request goes upstream."""
        if not isinstance(verdict, Pass):
            self.head = b""  # never meant for the upstream (the access log says "-")
            self.own_answer(verdict)
            return False
        return verdict.target is None or self._forward(verdict.target)

    def note(self, user: str | None, action: str, repository: str | None) -> None:
        self.user, self.action, self.repository = user, action, repository

    def own_answer(self, answer: Answer) -> None:
        """Answer with a response of certproxy's own (now, or when this exchange's turn comes)."""
        status, headers, body, content_type = answer
        self.own = (status, body, headers, content_type)
        if self.conn.is_current(self) and not self.done:
            self.send_own(*self.own)

    def own_error(self, status: int, reason: str, extra: Headers | None = None) -> None:
        """Answer with certproxy's own error (now, or when this exchange's turn comes).

        ``reason`` is public: what went wrong inside (upstream addresses, system
        errors) is logged by the caller, never put in the answer. A browser gets
        a small HTML page, every other client one line of text.
        """
        headers = [*error_headers(self.target), *(extra or ())]
        if wants_html(self.headers):
            self.own_answer((status, headers, error_page(status, reason), HTML))
        else:
            self.own_answer((status, headers, error_body(status, reason), TEXT))

    def send_own(self, status: int, body: bytes, headers: Headers, content_type: bytes = TEXT) -> None:
        # A request body still on its way is not read: the connection closes after the answer.
        if (
            self.close_after
            or self.conn.last_answer(self)
            or (self.expects_body and self.request is not COMPLETE)
        ):
            self.close_after = True
        head_only = self.method == b"HEAD"
        self.status = status
        self.response = advance(self.response, DONE)
        if self.request is BODY:
            self.request = advance(BODY, DISCARD)
        self.bytes_out = 0 if head_only else len(body)
        if self.route.hsts is not None:
            headers = [*headers, (b"Strict-Transport-Security", self.route.hsts)]
        self.conn.write(
            own_response(
                status,
                body,
                headers,
                content_type=content_type,
                close=self.close_after,
                keep_alive_10=self.http10,
                head_only=head_only,
            )
        )
        self.finish()

    # running it
    def begin(self) -> None:
        """Called when this exchange is first in its connection's queue."""
        if self.own is not None:
            self.send_own(*self.own)
        elif self.answer is not None or self.check_auth or self.gate_pending:
            self.task = asyncio.ensure_future(self._slow_begin())
        else:
            pool = self.route.pool
            up = pool.take() if pool is not None else None
            if up is not None:
                self.attach(up)
            else:
                self.task = asyncio.ensure_future(self._slow_begin())
        self.conn.flow.update()

    async def _slow_begin(self) -> None:
        route = self.route
        try:
            if self.answer is not None:
                code, headers, body, content_type = await self.answer(self)
                if not self.done:
                    self.send_own(code, body, headers, content_type)
                return
            pool = route.pool
            if pool is None:  # pragma: no cover - a control route always has an answer
                raise RuntimeError("a route without an upstream and without an answer")
            if self.gate_pending and route.gate is not None:
                verdict = await route.gate.decide(self, self.path, self.host or b"")
                self.gate_pending = False
                if self.done or not self._passed(verdict):
                    return
                up = pool.take()
                if up is not None:
                    self._attach_unless_done(up)
                    return
            if self.check_auth and route.auth is not None:
                creds = self.creds.decode("latin-1") if self.creds else None
                if not await route.auth.allowed(creds):
                    if not self.done:
                        self.send_own(
                            401,
                            error_body(401, "authentication required"),
                            [(b"WWW-Authenticate", route.auth.challenge.encode())],
                        )
                    return
                self.check_auth = False
                up = pool.take()
                if up is not None:
                    self._attach_unless_done(up)
                    return
            try:
                up = await pool.connect()
            except TimeoutError:
                self.upstream_failed("did not accept a connection in time", timeout=True)
                return
            except OSError as exc:
                self.upstream_failed(describe_os_error(exc))
                return
            self._attach_unless_done(up)
        except asyncio.CancelledError:
            raise
        except Exception:  # a defect: never leave a client hanging
            log.exception(
                "request %s %s failed", self.method.decode("latin-1"), self.target.decode("latin-1")
            )
            self.conn.abort()
        finally:
            self.task = None

    def _attach_unless_done(self, up: UpstreamConnection) -> None:
        """After a wait: use the connection, or give it back if the client has gone."""
        if self.done:
            if self.route.pool is not None:
                self.route.pool.release(up, True)
        else:
            self.attach(up)

    def attach(self, up: UpstreamConnection) -> None:
        self.upstream = up
        up.bind(self, self.method == b"HEAD")
        if self.pending:
            self.body_sent = True
            up.send([self.head, *self.pending])
            self.pending = []
        else:
            up.send([self.head])
        self.sent_at = time.monotonic()
        if self.request is COMPLETE:
            up.start_waiting()
        flow = self.conn.flow
        flow.attach(up)
        flow.update()

    def _drop_upstream(self) -> UpstreamConnection | None:
        """The upstream connection this exchange used, no longer its."""
        up, self.upstream = self.upstream, None
        if up is not None:
            self.conn.flow.detach()
        return up

    # request body, from the client parser
    def body(self, chunk: bytes) -> None:
        self.bytes_in += len(chunk)
        if self.request is DISCARD:
            return
        up = self.upstream
        if up is not None and up.transport is not None:
            self.body_sent = True
            first = up.buffer(b"%x\r\n" % len(chunk), chunk, b"\r\n") if self.chunked_in else up.buffer(chunk)
            if first:
                self.conn.flush_after_read(up)
        elif self.chunked_in:
            self.pending.extend((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            self.pending.append(chunk)

    def request_complete(self) -> None:
        discarded = self.request is DISCARD
        self.request = advance(self.request, COMPLETE)
        if discarded:
            if self.response is DONE:
                self.finish()
            return
        up = self.upstream
        if up is not None and up.transport is not None:
            if self.chunked_in and up.buffer(b"0\r\n\r\n"):
                self.conn.flush_after_read(up)
            up.start_waiting()
        elif self.chunked_in:
            self.pending.append(b"0\r\n\r\n")
        if self.response is DONE:
            self.finish()

    def refused(self, status: int, reason: str) -> None:
        """The client sent a broken or over-large body for this request: answer if
        nothing was answered yet, then the connection closes."""
        if self.done:
            return
        if self.response is not WAITING:
            self.conn.abort()
            return
        up = self._drop_upstream()
        if up is not None:
            up.abandon()
        if self.task is not None:
            self.task.cancel()
        self.close_after = True
        if self.request is BODY:
            self.request = advance(BODY, DISCARD)
        if self.conn.is_current(self):
            self.own_error(status, reason)
        else:
            self.conn.abort()

    # the response, from the upstream connection (ResponseSink)
    def interim_response(self, status: int, reason: bytes, headers: Headers) -> None:
        if self.http10:
            return
        self.conn.write(response_head(self.route, status, reason, headers, self.public_origin, final=False))

    def public_origin(self) -> bytes | None:
        parsed = parse_host(self.host.decode("latin-1")) if self.host else None
        return origin("https", parsed[0], parsed[1]).encode() if parsed else None

    def response_head(self, status: int, reason: bytes, headers: Headers, needs_framing: bool) -> None:
        route = self.route
        if self.sent_at and route.stats is not None:
            route.stats.upstream_response(time.monotonic() - self.sent_at)
        if route.observer is not None:
            self.kept = first(headers, route.observer.keep)
        self.status = status
        if needs_framing:
            if self.http10:
                self.close_after = True
            else:
                self.chunk_out = True
        if (self.expects_body and self.request is not COMPLETE) or self.conn.last_answer(self):
            self.close_after = True
        self.response = advance(self.response, STREAMING)
        self.conn.write(
            response_head(
                route,
                status,
                reason,
                headers,
                self.public_origin,
                chunked=self.chunk_out,
                close=self.close_after,
                keep_alive_10=self.http10,
            )
        )

    def response_body(self, chunk: bytes) -> None:
        self.bytes_out += len(chunk)
        if self.chunk_out:
            self.conn.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            self.conn.write(chunk)

    def response_complete(self, reusable: bool) -> None:
        if self.chunk_out:
            self.conn.write(b"0\r\n\r\n")
        self.response = advance(self.response, DONE)
        up = self._drop_upstream()
        if up is not None and self.route.pool is not None:
            self.route.pool.release(up, reusable and self.request is COMPLETE)
        if self.request is BODY:  # early answer: the rest of the body is not wanted
            self.request = advance(BODY, DISCARD)
        self.finish()

    def upstream_failed(self, reason: str, *, timeout: bool = False, retry: bool = False) -> None:
        up = self._drop_upstream()
        if up is not None:
            up.abandon()
        if self.done:
            return
        if (
            retry
            and self.response is WAITING
            and not self.retried
            and not self.body_sent
            and self.method in IDEMPOTENT
            and up is not None
            and up.reused
        ):
            self.retried = True
            self.task = asyncio.ensure_future(self._slow_begin())
            return
        if self.response is not WAITING:
            log.warning("%s failed mid-response: %s", self.route.unreachable, reason)
            self.conn.abort()
            return
        log.warning("%s %s: %s", self.route.unreachable, self.target.decode("latin-1"), reason)
        if timeout:
            self.own_error(504, "the upstream did not answer in time")
        else:
            self.own_error(502, "the upstream is not reachable or did not answer properly")

    def upstream_writable(self, writable: bool) -> None:
        self.conn.flow.upstream_writable(writable)

    def batch(self, begin: bool) -> None:
        if begin:
            self.conn.cork()
        else:
            self.conn.uncork()

    # the end
    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        self._record(self.status)
        self.conn.exchange_finished(self)

    def client_lost(self) -> None:
        """The client connection closed with this exchange unfinished."""
        if self.done:
            return
        self.done = True
        if self.task is not None:
            self.task.cancel()
        up = self._drop_upstream()
        if up is not None:
            up.abandon()
        if self.request is not COMPLETE:
            log.info("client %s went away mid-upload after %d bytes", self.conn.client_ip, self.bytes_in)
        self._record(self.status if self.response is not WAITING else 499)

    def header(self, name: bytes) -> list[bytes]:
        """The values of one request header (``name`` in lower case)."""
        return values(self.headers, name)

    @property
    def client_ip(self) -> str:
        return self.conn.client_ip

    def _host_for_log(self) -> str:
        if self.host is not None:  # checked when the request was prepared
            return self.host.decode("latin-1")
        hosts = self.header(b"host")
        return hosts[0].decode("latin-1") if len(hosts) == 1 and self.route.host_ok(hosts[0]) else "-"

    def _record(self, status: int) -> None:
        route = self.route
        if route.stats is not None:
            route.stats.request(status, self.bytes_in, self.bytes_out)
        observer = route.observer
        if route.access_log is None and observer is None:
            return
        record = AccessRecord(
            self.conn.client_ip,
            self.method.decode("latin-1"),
            self.target.decode("latin-1"),
            status,
            self.bytes_in,
            self.bytes_out,
            time.monotonic() - self.started,
            route.base if self.head else "-",  # "-": never meant for the upstream
            route.port,
            self._host_for_log(),
            self.user,
            self.action,
            self.repository,
        )
        if observer is not None:
            try:
                record = observer.observe(self, record)
            except Exception:  # a defect: the line is still written, the connection goes on
                log.exception("reading %s as the registry API failed", self.method.decode("latin-1"))
        if route.access_log is not None:
            route.access_log(record)

    # what the client connection asks
    def waiting_for_upstream(self) -> bool:
        """Body bytes are due and no upstream connection takes them yet."""
        return self.upstream is None and self.request is BODY


__all__ = ["Answer", "ClientSide", "Exchange", "Flushable"]
