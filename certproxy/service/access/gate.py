"""The registry routes' access control: token server and enforcer in one.

How this works: every request of a route behind the gate (``CERTPROXY_ACCESS_PORTS``)
is read as a call of the registry API (``api.classify``), its caller is found from
its ``Authorization`` (none or ``Basic Og==``: anonymous; ``Basic``: a user of the
policy's htpasswd file; ``Bearer``: a token of ours, ``tokens.py``), and the policy
(``policy.py``) decides. ``check`` decides on the event loop whatever needs no
thread (a token, credentials checked recently, anonymous callers); ``decide`` does
the rest (bcrypt, rereading the token keys, the token endpoint, the catalog).

The answers, in the dialect of the distribution specification's token flow:

- not granted, anonymous (or a token that lacks the scope while the policy would
  grant it): 401 with ``WWW-Authenticate: Bearer realm="https://HOST/token",
  service="HOST",scope="repository:NAME:ACTIONS"`` (``error="insufficient_scope"``
  for the token), so the client fetches a token and comes back;
- not granted, a known user: 403 ``DENIED``;
- the ``/v2/`` ping answers 401 unless it carries valid credentials, so that
  ``docker login`` and clients that log in when challenged do so;
- ``GET /token`` answers a token for the requested scopes that the policy grants
  (wrong credentials: 401, counted as a failed login, never anonymous);
- too many failed logins from an address: 429 with ``Retry-After``;
- a browser (a request with the Fetch Metadata header ``Sec-Fetch-Mode``, which no
  registry client sends) gets ``WWW-Authenticate: Basic`` where a client would get
  the Bearer challenge: it cannot answer Bearer, and its prompt is how the user of a
  registry UI in front of this route logs in (the UI passes the Basic credentials on).

A cross-repository mount needs pull on ``from``: without it the mount is dropped
from the query and the registry starts a plain upload, so no blob crosses. The
catalog is fetched from the registry and filtered to what the caller may pull,
with ``n``/``last`` pagination and a ``Link`` header of certproxy's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import logging
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qsl, quote, urlencode

import httptools

from ...certs import FileStore, os_problem
from ...proxy.headers import Answer, Headers
from ...proxy.routes import Pass, Request
from ...proxy.wire import REGISTRY_API_HEADER
from ..auth import BasicAuth, HtpasswdError, basic_credentials
from .api import Call, Refused, classify, error_body, form_body, valid_name, without_mount
from .policy import Policy, PolicyError, load_policy
from .throttle import Throttle
from .tokens import LIFETIME, Grant, TokenKeys, UnknownKey

log = logging.getLogger("certproxy.access")

JSON = b"application/json; charset=utf-8"
ANONYMOUS_BASIC = b"Og=="  # base64 of ":": some clients send it when nobody is logged in
ALL_ACTIONS = frozenset({"pull", "push", "delete"})
CATALOG_MAX = 100_000  # repositories read from the registry for one listing
FETCH_MAX = 16 << 20
POLL = 0.5  # seconds between looks at the policy file
BROWSER_CHALLENGE = b'Basic realm="certproxy", charset="UTF-8"'
ADDRESSES_MAX = 4096
CALLS_MAX = 4096
CALL_KEY_MAX = 512  # longer targets are read every time (the cache stays small)
SCOPES_MAX = 32  # scopes one token request may ask for (clients ask for a handful)


class Caller(NamedTuple):
    """Who asks: ``user`` None is anonymous; ``grant`` is set for a token's bearer;
    ``shown``: credentials were shown and were valid (a user, or a token)."""

    user: str | None
    grant: Grant | None = None
    shown: bool = False


class Upstream(NamedTuple):
    """Where the registry listens, for the catalog."""

    host: str
    port: int
    ssl: ssl.SSLContext | None


@dataclass
class _Loaded:
    policy: Policy
    users: BasicAuth
    stamp: tuple[int, int, int]


def _stamp(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino


def answer(
    status: int, code: str, message: str, headers: Headers | None = None, detail: object = None
) -> Answer:
    """An error in the registry's own format."""
    out = [REGISTRY_API_HEADER, (b"Cache-Control", b"no-store"), *(headers or ())]
    return status, out, error_body(code, message, detail), JSON


class AccessGate:
    """The access control of the registry routes (``proxy.routes.Gate``)."""

    def __init__(self, path: Path, store: FileStore, upstream: Upstream) -> None:
        self.path = path
        self.tokens = TokenKeys(store)
        self.throttle = Throttle()
        self.upstream = upstream
        self._loaded: _Loaded | None = None
        self._rejected: tuple[int, int, int] | None = None
        self._unseen: str | None = None  # why the policy file could not be seen, once said
        self._rereading = asyncio.Lock()
        self._addresses: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}
        self._calls: dict[tuple[bytes, bytes], Call] = {}
        self.refusals: dict[str, int] = {}  # reason -> requests refused (metrics.AccessFigures)
        self.failed_logins = 0

    def _address(self, client_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The client's address, parsed once per address (bounded)."""
        address = self._addresses.get(client_ip)
        if address is None:
            if len(self._addresses) >= ADDRESSES_MAX:
                self._addresses.clear()
            address = self._addresses[client_ip] = ipaddress.ip_address(client_ip)
        return address

    # -- the policy ------------------------------------------------------------
    def load(self) -> None:
        """Read the policy, its users and the token keys (blocking); PolicyError or
        HtpasswdError/OSError for the users file when they are unusable."""
        stamp = _stamp(self.path)
        policy = load_policy(self.path)
        users = BasicAuth(policy.users_file, realm="certproxy registry")
        users.load()
        self._loaded = _Loaded(policy, users, stamp)
        self.tokens.load()

    def check_signing(self) -> None:
        """Make sure a token can be signed: a key exists or can be kept in the store
        (blocking; OSError when the store cannot keep one)."""
        self.tokens.issue(None, "", {}, False)

    @property
    def policy(self) -> Policy:
        assert self._loaded is not None, "AccessGate.load() first"
        return self._loaded.policy

    @property
    def users(self) -> BasicAuth:
        assert self._loaded is not None, "AccessGate.load() first"
        return self._loaded.users

    def poll(self) -> None:
        """Take a changed policy file (blocking): a broken one keeps the last good policy,
        said once per version of the file (a file that cannot be seen, once until it can)."""
        try:
            stamp = _stamp(self.path)
        except OSError as exc:
            if self._unseen != exc.strerror:
                self._unseen = exc.strerror
                log.error("%s: %s; keeping the last good policy", self.path.name, exc.strerror)
            return
        self._unseen = None
        loaded = self._loaded
        if loaded is not None:
            loaded.users.refresh()  # a user removed from htpasswd loses their tokens too
        if loaded is None or stamp in (loaded.stamp, self._rejected):
            return
        try:
            policy = load_policy(self.path)
            users = loaded.users
            if policy.users_file != users.path:
                users = BasicAuth(policy.users_file, realm="certproxy registry")
                users.load()
        except (PolicyError, HtpasswdError, OSError) as exc:
            self._rejected = stamp
            log.error("%s; keeping the last good policy", exc)
            return
        self._loaded = _Loaded(policy, users, stamp)
        self._rejected = None
        log.info("%s reloaded: %d rules", self.path.name, len(policy.rules))

    async def watch(self) -> None:
        """Look at the policy file every ``POLL`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(POLL)
            try:
                await asyncio.to_thread(self.poll)
            except Exception:  # a defect: said, and the watch goes on
                log.exception("access policy: looking at %s failed", self.path.name)

    # -- deciding ----------------------------------------------------------------
    def check(self, request: Request, path: bytes, host: bytes) -> Pass | Answer | None:
        """Decide now when nothing needs a thread; None: ask ``decide``."""
        verdict = self._check(request, path, host)
        if verdict is not None and not isinstance(verdict, Pass):
            self._count(verdict)
        return verdict

    async def decide(self, request: Request, path: bytes, host: bytes) -> Pass | Answer:
        verdict = await self._decide(request, path, host)
        if not isinstance(verdict, Pass):
            self._count(verdict)
        return verdict

    def _count(self, answer: Answer) -> None:
        """A refusal, counted by reason for the metrics (a token's answer is none)."""
        status, headers = answer[0], answer[1]
        if status < 400 or status >= 500:
            return
        if status == 401:
            challenge = next((v for k, v in headers if k == b"WWW-Authenticate"), b"")
            if b'error="insufficient_scope"' in challenge:
                reason = "insufficient_scope"
            elif b'error="invalid_token"' in challenge:
                reason = "invalid_token"
            else:
                reason = "unauthenticated"
        else:
            reason = {403: "denied", 429: "throttled"}.get(status, "invalid_request")
        self.refusals[reason] = self.refusals.get(reason, 0) + 1

    def _check(self, request: Request, path: bytes, host: bytes) -> Pass | Answer | None:
        call = self._read(request, path)
        if not isinstance(call, Call):
            return call  # a refusal, or None: the token endpoint waits for a thread
        caller = self._caller_now(request, host)
        if not isinstance(caller, Caller):
            return caller  # a refusal, or None: credentials to check in a thread
        if call.action == "catalog":
            return None
        return self._authorize(call, caller, request, path, host)

    async def _decide(self, request: Request, path: bytes, host: bytes) -> Pass | Answer:
        call = self._read(request, path)
        if call is None:
            return await self._token(request, path, host)
        if not isinstance(call, Call):
            return call
        caller = await self._caller(request, host)
        if not isinstance(caller, Caller):
            return caller
        if call.action == "catalog":
            return await self._catalog(call, caller, request, host)
        return self._authorize(call, caller, request, path, host)

    def _read(self, request: Request, path: bytes) -> Call | Answer | None:
        """The call a request makes; an Answer when it is not one; None for the token
        endpoint. The calls of recent targets are remembered (bounded): a registry serves
        the same manifests and blobs to many clients."""
        key = (request.method, path)
        call = self._calls.get(key)
        if call is not None:
            return call
        if path == b"/token" or path.startswith(b"/token?"):
            return None
        read = classify(request.method, path)
        if read is None:
            return answer(404, "UNSUPPORTED", "not part of the registry API")
        if isinstance(read, Refused):
            return answer(read.status, read.code, read.message)
        if len(path) <= CALL_KEY_MAX:
            if len(self._calls) >= CALLS_MAX:
                self._calls.clear()
            self._calls[key] = read
        return read

    def _caller_now(self, request: Request, host: bytes) -> Caller | Answer | None:
        header = _authorization(request)
        if header is None:
            return Caller(None)
        scheme, _, value = header.partition(b" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == b"bearer":
            try:
                grant = self.tokens.verify(value.decode("latin-1"), host.decode("latin-1"))
            except UnknownKey:
                return None  # decide() rereads the store's keys first
            if grant is None:
                return _invalid_token(request, host)
            return self._bearer(grant, request, host)
        if scheme == b"basic":
            if value == ANONYMOUS_BASIC:
                return Caller(None)
            retry = self.throttle.retry_after(request.client_ip)
            if retry is not None:
                return _throttled(retry)
            if self.users.known(header):
                creds = basic_credentials(header.decode("latin-1"))
                return Caller(creds[0], None, True) if creds else None
            return None
        return _login_challenge(request, host)

    async def _caller(self, request: Request, host: bytes) -> Caller | Answer:
        header = _authorization(request)
        if header is not None and header[:7].lower() == b"bearer ":
            token, service = header[7:].strip().decode("latin-1"), host.decode("latin-1")
            try:
                grant = self.tokens.verify(token, service)
            except UnknownKey:
                grant = await self._verify_after_reread(token, service)
            return self._bearer(grant, request, host) if grant is not None else _invalid_token(request, host)
        now = self._caller_now(request, host)
        if now is not None:
            return now
        return await self._login(request, header, host)

    async def _verify_after_reread(self, token: str, service: str) -> Grant | None:
        """A token signed with a key this process has not read (another replica may have
        made it a moment ago): the store's keys are reread, at most once per
        ``RELOAD_EVERY``; a token that comes sooner waits for the next reread instead of
        being refused, and the rereads of concurrent requests are one."""
        asked = time.monotonic()
        await asyncio.sleep(self.tokens.reread_in())  # a timer may end a little early:
        async with self._rereading:  # so "not reread since asked"
            if self.tokens.read_at < asked:
                await asyncio.to_thread(self.tokens.load)
        try:
            return self.tokens.verify(token, service)
        except UnknownKey:
            return None

    def _bearer(self, grant: Grant, request: Request, host: bytes) -> Caller | Answer:
        """A valid token's bearer, unless its user has left the htpasswd file since."""
        if grant.user is not None and not self.users.has_user(grant.user):
            return _invalid_token(request, host)
        return Caller(grant.user, grant, True)

    async def _login(self, request: Request, header: bytes | None, host: bytes) -> Caller | Answer:
        """Basic credentials: a user of the policy, or a failed login."""
        text = header.decode("latin-1") if header is not None else None
        creds = basic_credentials(text)
        if creds is not None and creds == ("", ""):
            return Caller(None)
        retry = self.throttle.begin(request.client_ip)
        if retry is not None:
            return _throttled(retry)
        ok = False
        try:
            ok = creds is not None and await self.users.allowed(text)
        finally:
            self.throttle.end(request.client_ip, failed=not ok)
        if ok and creds is not None:
            return Caller(creds[0], None, True)
        user = creds[0] if creds else "-"
        log.warning("failed login from %s: user %r", request.client_ip, user)
        self.failed_logins += 1
        request.note(None, "login", None)
        return _login_challenge(request, host, message="incorrect username or password")

    def _authorize(
        self, call: Call, caller: Caller, request: Request, path: bytes, host: bytes
    ) -> Pass | Answer:
        repository = call.repository
        request.note(caller.user, call.action, repository)
        if call.action == "ping":
            return Pass() if caller.shown else _login_challenge(request, host)
        if repository is None:  # every other call names one
            return answer(400, "NAME_INVALID", "no repository name")
        if request.method not in (b"GET", b"HEAD") and _first(request, b"sec-fetch-site") == b"cross-site":
            # a page of another site, in a browser that logged in here, may not change anything
            _log_refusal(caller, request, call, "a cross-site request from a browser")
            return answer(403, "DENIED", "a cross-site request may not change the registry")
        address = self._address(request.client_ip)
        granted = self.policy.actions(caller.user, address, repository)
        if call.action in granted and (caller.grant is None or caller.grant.allows(repository, call.action)):
            if call.kind == "uploads" and form_body(_first(request, b"content-type")):
                # the registry would read mount and from out of such a body too
                _log_refusal(caller, request, call, "an upload with a form body")
                return answer(400, "UNSUPPORTED", "an upload with a form body is not accepted")
            if call.mount_from is not None and not self._may_pull(caller, address, call.mount_from):
                return Pass(target=without_mount(path))
            return Pass()
        scope = _scope(repository, call.action)
        if call.action in granted:  # the token lacks a scope the policy would grant
            _log_refusal(caller, request, call, "the token lacks the scope (insufficient_scope)")
            return _challenge(host, scope, "insufficient_scope")
        _log_refusal(caller, request, call, "not granted by the policy")
        if caller.user is not None:
            return answer(403, "DENIED", "requested access to the resource is denied", detail=_detail(call))
        return _login_challenge(request, host, scope, detail=_detail(call))

    def _may_pull(
        self, caller: Caller, address: ipaddress.IPv4Address | ipaddress.IPv6Address, name: str
    ) -> bool:
        if "pull" not in self.policy.actions(caller.user, address, name):
            return False
        return caller.grant is None or caller.grant.allows(name, "pull")

    # -- the token endpoint -----------------------------------------------------
    async def _token(self, request: Request, path: bytes, host: bytes) -> Answer:
        if request.method not in (b"GET", b"HEAD"):
            return answer(405, "UNSUPPORTED", "the token endpoint answers GET")
        header = _authorization(request)
        caller: Caller | Answer = Caller(None)
        if header is not None:
            if header[:6].lower() != b"basic ":
                return answer(401, "UNAUTHORIZED", "the token endpoint takes Basic credentials")
            caller = await self._login(request, header, host)
        if not isinstance(caller, Caller):
            return caller
        params = parse_qsl(path.partition(b"?")[2].decode("latin-1"), keep_blank_values=True)
        service = next((v for k, v in params if k == "service"), host.decode("latin-1"))
        address = self._address(request.client_ip)
        access: dict[str, frozenset[str]] = {}
        catalog = False
        scopes = [scope for key, value in params if key == "scope" for scope in value.split(" ") if scope]
        if len(scopes) > SCOPES_MAX:
            return answer(400, "UNSUPPORTED", f"more than {SCOPES_MAX} scopes in one token request")
        for scope in scopes:
            kind, name, actions = _parse_scope(scope)
            if kind == "registry" and name == "catalog":
                catalog = catalog or self.policy.may_catalog(caller.user, address)
            elif kind == "repository" and valid_name(name.encode()):
                wanted = ALL_ACTIONS if "*" in actions else actions
                granted = wanted & self.policy.actions(caller.user, address, name)
                if granted:
                    access[name] = access.get(name, frozenset()) | granted
        request.note(caller.user, "token", None)
        try:
            token = await asyncio.to_thread(self.tokens.issue, caller.user, service, access, catalog)
        except OSError as exc:
            log.error("no token: the store keeps no signing key: %s", os_problem(exc, "tokens"))
            return answer(503, "UNAVAILABLE", "cannot sign a token now", [(b"Retry-After", b"10")])
        issued = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"token": token, "access_token": token, "expires_in": LIFETIME, "issued_at": issued}
        return 200, [(b"Cache-Control", b"no-store")], json.dumps(body).encode(), JSON

    # -- the catalog --------------------------------------------------------------
    async def _catalog(self, call: Call, caller: Caller, request: Request, host: bytes) -> Answer:
        request.note(caller.user, "catalog", None)
        address = self._address(request.client_ip)
        policy = self.policy
        if not policy.may_catalog(caller.user, address) or (
            caller.grant is not None and not caller.grant.catalog
        ):
            if policy.may_catalog(caller.user, address):
                return _challenge(host, "registry:catalog:*", "insufficient_scope")
            log.info(
                "refused catalog for %s from %s: not granted", caller.user or "anonymous", request.client_ip
            )
            if caller.user is not None:
                return answer(403, "DENIED", "requested access to the resource is denied", detail=CATALOG)
            return _login_challenge(request, host, "registry:catalog:*", detail=CATALOG)
        params = dict(parse_qsl(call.query.decode("latin-1")))
        number = params.get("n", "")
        if number and not (number.isascii() and number.isdigit()):
            return answer(400, "PAGINATION_NUMBER_INVALID", "invalid number of results requested")
        try:
            names = await self._all_repositories()
        except (OSError, ValueError, TimeoutError) as exc:
            log.warning("catalog: the registry did not list its repositories: %s", exc)
            return answer(502, "UNAVAILABLE", "the registry is not reachable")
        last = params.get("last", "")

        def visible() -> list[str]:  # a thread's work: a registry may hold many repositories
            return [n for n in names if n > last and "pull" in policy.actions(caller.user, address, n)]

        page = await asyncio.to_thread(visible)
        headers: Headers = [REGISTRY_API_HEADER, (b"Cache-Control", b"no-store")]
        if number and int(number) < len(page):
            page = page[: int(number)]
            if page:
                link = "/v2/_catalog?" + urlencode({"n": number, "last": page[-1]})
                headers.append((b"Link", f'<{link}>; rel="next"'.encode()))
        return 200, headers, json.dumps({"repositories": page}).encode(), JSON

    async def _all_repositories(self) -> list[str]:
        """Every repository the registry holds, in its order (sorted), page by page."""
        names: list[str] = []
        last = ""
        while len(names) < CATALOG_MAX:
            query = "n=1000" + (f"&last={quote(last, safe='')}" if last else "")
            status, headers, body = await asyncio.wait_for(self._get(f"/v2/_catalog?{query}"), 30)
            if status != 200:
                raise ValueError(f"HTTP {status}")
            listing = await asyncio.to_thread(json.loads, body)
            page = [str(n) for n in listing.get("repositories") or []]
            names.extend(page)
            if not page or not any(n.lower() == b"link" for n, _ in headers):
                break
            last = page[-1]
        return names

    async def _get(self, path: str) -> tuple[int, Headers, bytes]:
        up = self.upstream
        reader, writer = await asyncio.open_connection(
            up.host, up.port, ssl=up.ssl, server_hostname=up.host if up.ssl else None
        )
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {up.host}\r\nConnection: close\r\n\r\n".encode())
            data = await reader.read(FETCH_MAX + 1)
            while len(data) <= FETCH_MAX:
                more = await reader.read(FETCH_MAX + 1 - len(data))
                if not more:
                    break
                data += more
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return _parse_response(data)


def _authorization(request: Request) -> bytes | None:
    values = request.header(b"authorization")
    return values[0] if values else None


def _first(request: Request, name: bytes) -> bytes | None:
    values = request.header(name)
    return values[0] if values else None


def _bearer(host: bytes, scope: str | None = None, error: str | None = None) -> bytes:
    parts = [b'realm="https://%s/token"' % host, b'service="%s"' % host]
    if scope:
        parts.append(b'scope="%s"' % scope.encode())
    if error:
        parts.append(b'error="%s"' % error.encode())
    return b"Bearer " + b",".join(parts)


def _challenge(host: bytes, scope: str | None = None, error: str | None = None) -> Answer:
    return answer(
        401, "UNAUTHORIZED", "authentication required", [(b"WWW-Authenticate", _bearer(host, scope, error))]
    )


def _login_challenge(
    request: Request,
    host: bytes,
    scope: str | None = None,
    message: str = "authentication required",
    detail: object = None,
) -> Answer:
    """401 for a caller who has to log in: the Bearer challenge, or Basic for a browser.

    A refusal names what was asked in ``detail``, as the registry does: docker takes an
    error with the code's own message and no detail for a bare code, which it retries
    (five times, for about a minute) and prints as a bare "unauthorized"."""
    challenge = BROWSER_CHALLENGE if request.header(b"sec-fetch-mode") else _bearer(host, scope)
    return answer(401, "UNAUTHORIZED", message, [(b"WWW-Authenticate", challenge)], detail=detail)


def _invalid_token(request: Request, host: bytes) -> Answer:
    """An invalid or expired token: a 401 that sends the client for a new one (not a failed login)."""
    log.info(
        "refused %s %s from %s: invalid or expired token",
        request.method.decode("latin-1"),
        request.target.decode("latin-1")[:200],
        request.client_ip,
    )
    return answer(
        401,
        "UNAUTHORIZED",
        "invalid or expired token",
        [(b"WWW-Authenticate", _bearer(host, error="invalid_token"))],
    )


def _throttled(retry: int) -> Answer:
    return answer(
        429, "TOOMANYREQUESTS", "too many failed logins, try again later", [(b"Retry-After", b"%d" % retry)]
    )


def _scope(repository: str, action: str) -> str:
    wanted = "pull,push" if action == "push" else action
    return f"repository:{repository}:{wanted}"


CATALOG = [{"Type": "registry", "Name": "catalog", "Action": "*"}]  # the catalog's refusals' detail


def _detail(call: Call) -> list[dict[str, str]]:
    return [{"Type": "repository", "Name": call.repository or "", "Action": call.action}]


def _parse_scope(scope: str) -> tuple[str, str, frozenset[str]]:
    """``repository:NAME:pull,push`` -> (kind, name, actions); a malformed scope grants nothing."""
    head, sep, actions = scope.rpartition(":")
    kind, sep2, name = head.partition(":")
    if not (sep and sep2):
        return "", "", frozenset()
    kind = kind.split("(", 1)[0]  # "repository(plugin)" is a repository
    return kind, name, frozenset(a for a in actions.split(",") if a)


def _log_refusal(caller: Caller, request: Request, call: Call, reason: str) -> None:
    log.info(
        "refused %s of %s for %s from %s: %s",
        call.action,
        call.repository,
        caller.user or "anonymous",
        request.client_ip,
        reason,
    )


class _Sink:
    def __init__(self) -> None:
        self.headers: Headers = []
        self.body = bytearray()
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


def _parse_response(data: bytes) -> tuple[int, Headers, bytes]:
    sink = _Sink()
    parser = httptools.HttpResponseParser(sink)
    try:
        parser.feed_data(data)
    except httptools.HttpParserError as exc:
        raise ValueError(f"malformed answer: {exc}") from None
    return parser.get_status_code(), sink.headers, bytes(sink.body)


__all__ = ["AccessGate", "Caller", "Upstream", "answer"]
