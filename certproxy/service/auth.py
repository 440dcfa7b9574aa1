"""Basic authentication in front of a route (the registry UI has none of its own).

How this works: users come from an htpasswd file with bcrypt entries only
(``htpasswd -B`` or ``certproxy htpasswd``); any other hash type is refused
when the file is loaded, since MD5-crypt and SHA1 entries are too weak for a
front that faces the internet. The file is reread when its modification time
changes (checked at most once a second). bcrypt costs tens of milliseconds,
so checks run in a thread, and a successful check is remembered for a few
minutes (keyed by a SHA-256 of the credentials, never the password itself),
so a page with fifty assets costs one bcrypt, not fifty. A request that passes
goes upstream with its ``Authorization`` header, as nginx's ``auth_basic``
does: the registry UI forwards it to the registry, which checks the same
htpasswd file, so one login covers the UI and the registry API behind it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import os
import re
import time
from pathlib import Path

import bcrypt

log = logging.getLogger("certproxy.auth")

BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
# $2y$ + two-digit cost + 22 characters of salt + 31 of hash, in bcrypt's base64 alphabet.
BCRYPT_RE = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
CACHE_TTL = 300.0
CACHE_MAX = 1024
RECHECK_FILE = 1.0


class HtpasswdError(Exception):
    pass


def parse_htpasswd(text: str, source: str) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, digest = line.partition(":")
        if not sep or not user:
            raise HtpasswdError(f"{source}:{number}: not USER:HASH")
        if not digest.startswith(BCRYPT_PREFIXES):
            raise HtpasswdError(
                f"{source}:{number}: user {user!r} has no bcrypt hash "
                "(create entries with `htpasswd -B` or `certproxy htpasswd`)"
            )
        if not BCRYPT_RE.fullmatch(digest):
            raise HtpasswdError(f"{source}:{number}: user {user!r} has a malformed bcrypt hash")
        users[user] = digest.encode()
    if not users:
        raise HtpasswdError(f"{source}: no users (add one with `certproxy htpasswd USER`)")
    return users


def make_entry(user: str, password: str, cost: int = 12) -> str:
    if ":" in user or not user:
        raise HtpasswdError("a user name cannot be empty or contain ':'")
    digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()
    return f"{user}:{digest}"


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class BasicAuth:
    def __init__(self, path: Path, realm: str = "certproxy") -> None:
        self.path = path
        self.challenge = f'Basic realm="{realm}", charset="UTF-8"'
        self._users: dict[str, bytes] = {}
        self._mtime: float | None = None
        self._checked = 0.0
        self._rejected: float | None = None  # mtime of a version refused at reload
        self._ok: dict[bytes, float] = {}

    def load(self) -> None:
        """Read the file (raises HtpasswdError or OSError); blocking."""
        st = os.stat(self.path)
        try:
            text = Path(self.path).read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise HtpasswdError(f"{self.path}: not UTF-8 text (byte {exc.start})") from None
        self._users = parse_htpasswd(text, str(self.path))
        self._mtime = st.st_mtime
        self._ok.clear()

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < RECHECK_FILE:
            return
        self._checked = now
        try:
            mtime = os.stat(self.path).st_mtime
            if mtime == self._mtime or mtime == self._rejected:
                return
            self.load()
            log.info("%s reloaded: %d users", self.path, len(self._users))
        except (OSError, HtpasswdError) as exc:
            # Said once per change of the file; the users loaded last stay in service.
            self._rejected = mtime if isinstance(exc, HtpasswdError) else None
            log.error("not using the changed %s, keeping the last good one: %s", self.path, exc)

    def refresh(self) -> None:
        """Take a changed file now (blocking): what ``allowed`` does at most once a second."""
        self._maybe_reload()

    def has_user(self, name: str) -> bool:
        return name in self._users

    def _key(self, creds: tuple[str, str]) -> bytes:
        return hashlib.sha256(f"{self._mtime}\0{creds[0]}\0{creds[1]}".encode()).digest()

    def known(self, header: bytes | None) -> bool:
        """True when these credentials passed a check recently and the file has not
        been due for a recheck since: no thread, no bcrypt. False means ask ``allowed``."""
        if header is None or time.monotonic() - self._checked >= RECHECK_FILE:
            return False
        creds = basic_credentials(header.decode("latin-1"))
        if creds is None:
            return False
        until = self._ok.get(self._key(creds))
        return until is not None and until > time.monotonic()

    async def allowed(self, header: str | None) -> bool:
        creds = basic_credentials(header)
        if creds is None:
            return False
        await asyncio.to_thread(self._maybe_reload)
        key = self._key(creds)
        now = time.monotonic()
        until = self._ok.get(key)
        if until is not None and until > now:
            return True
        digest = self._users.get(creds[0])
        if digest is None:
            return False
        try:
            ok = await asyncio.to_thread(bcrypt.checkpw, creds[1].encode(), digest)
        except ValueError as exc:  # a hash bcrypt cannot read: a refusal, never a failed request
            log.error("%s: the hash of user %r is unusable: %s", self.path, creds[0], exc)
            return False
        if ok:
            if len(self._ok) >= CACHE_MAX:
                self._ok.clear()
            self._ok[key] = now + CACHE_TTL
        return ok
