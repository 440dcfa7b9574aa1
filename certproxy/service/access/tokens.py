"""Access tokens: what ``GET /token`` hands out and the registry routes accept.

How this works: a token is ``<kid>.<claims>.<mac>``, the id of the key that
signed it, its claims as base64url JSON, and an HMAC-SHA256 of the first two
parts. Only certproxy reads its tokens (the registry behind runs without auth
of its own, and the clients pass a token back as they got it), so a small
signed format does, with nothing to negotiate. The claims: ``sub`` (the user,
"" for anonymous), ``aud`` (the service: the ``Host`` the client used), ``iat``
and ``exp`` (Unix seconds), ``access`` (repository name -> granted actions) and
``catalog`` (listing allowed).

The keys live in the store (``FileStore.token_keys``: 32 random bytes each,
mode 0600), so every replica checks every other's tokens. The newest key signs
for ``ROTATE``; after that the next process that signs makes a new one, and
old keys stay for checking until the tokens they signed have expired, so a
rotation never breaks a token in flight. A token naming a key this process has
not read yet makes the caller reread the keys, at most once a second; one
that comes sooner waits for the next reread (``reread_in``) rather than being
refused, since another replica may have made that key a moment ago.
A verified token is remembered until it expires (bounded), so a request
that carries one costs a dictionary lookup.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ...certs import FileStore

LIFETIME = 300  # seconds a token is good for, as Docker Hub's
ROTATE = 24 * 3600.0  # seconds a key signs before the next one is made
KEEP = ROTATE + 2 * LIFETIME  # a key is kept for checking this long after it was made
RELOAD_EVERY = 1.0
CACHE_MAX = 4096


@dataclass(frozen=True)
class Grant:
    """What a token says its bearer may do."""

    user: str | None  # None: anonymous
    service: str
    access: Mapping[str, frozenset[str]]  # repository -> actions
    catalog: bool
    expires: float

    def allows(self, repository: str, action: str) -> bool:
        return action in self.access.get(repository, ())


class UnknownKey(Exception):
    """The token names a key this process has not read: reread the store's keys."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class TokenKeys:
    """The store's token keys as this process knows them; signs and checks tokens."""

    store: FileStore
    clock: Callable[[], float] = time.time
    keys: dict[str, tuple[bytes, float]] = field(default_factory=dict)
    read_at: float = float("-inf")
    _checked: dict[str, Grant] = field(default_factory=dict)

    def load(self) -> None:
        """Read the store's keys (blocking: in a thread). ``read_at``: when the read began
        (a key written after that may be missing)."""
        began = time.monotonic()
        self.keys = self.store.token_keys()
        self.read_at = began

    def reread_in(self) -> float:
        """Seconds until a reread is allowed (0: now)."""
        return max(0.0, self.read_at + RELOAD_EVERY - time.monotonic())

    def issue(
        self, user: str | None, service: str, access: Mapping[str, frozenset[str]], catalog: bool
    ) -> str:
        """A token for these grants, signed with the newest key (blocking: it may make
        one, and remove keys past ``KEEP``)."""
        now = self.clock()
        kid, key = self._signing_key(now)
        claims = {
            "sub": user or "",
            "aud": service,
            "iat": int(now),
            "exp": int(now) + LIFETIME,
            "access": {name: sorted(actions) for name, actions in access.items()},
            "catalog": catalog,
        }
        head = f"{kid}.{_b64(json.dumps(claims, separators=(',', ':')).encode())}"
        return f"{head}.{_b64(hmac.new(key, head.encode(), hashlib.sha256).digest())}"

    def _signing_key(self, now: float) -> tuple[str, bytes]:
        fresh = {kid: kv for kid, kv in self.keys.items() if now - kv[1] < ROTATE}
        if not fresh:
            self.load()
            fresh = {kid: kv for kid, kv in self.keys.items() if now - kv[1] < ROTATE}
        if not fresh:
            kid, key = os.urandom(8).hex(), os.urandom(32)
            self.store.add_token_key(kid, key)  # of two replicas racing, both keys are kept
            for old, (_, made) in list(self.keys.items()):
                if now - made > KEEP:
                    self.store.remove_token_key(old)
            self.load()
            fresh = {kid: kv for kid, kv in self.keys.items() if now - kv[1] < ROTATE}
        kid = max(fresh, key=lambda k: fresh[k][1])
        return kid, fresh[kid][0]

    def verify(self, token: str, service: str) -> Grant | None:
        """The grants of a valid token for ``service``; None when it is forged, expired,
        malformed or for another service. Raises ``UnknownKey`` for a key not read yet."""
        now = self.clock()
        grant = self._checked.get(token)
        if grant is None:
            grant = self._check(token)
            if grant is None:
                return None
            if len(self._checked) >= CACHE_MAX:
                self._checked.clear()
            self._checked[token] = grant
        if grant.expires <= now or grant.service != service:
            return None
        return grant

    def _check(self, token: str) -> Grant | None:
        kid, dot, rest = token.partition(".")
        claims_b64, dot2, mac_b64 = rest.partition(".")
        if not (dot and dot2):
            return None
        stored = self.keys.get(kid)
        if stored is None:
            if len(kid) == 16 and all(c in "0123456789abcdef" for c in kid):
                raise UnknownKey(kid)
            return None
        try:
            mac = _unb64(mac_b64)
            expected = hmac.new(stored[0], f"{kid}.{claims_b64}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(mac, expected):
                return None
            claims = json.loads(_unb64(claims_b64))
            access = {str(name): frozenset(map(str, acts)) for name, acts in claims["access"].items()}
            return Grant(
                user=str(claims["sub"]) or None,
                service=str(claims["aud"]),
                access=access,
                catalog=bool(claims["catalog"]),
                expires=float(claims["exp"]),
            )
        except (binascii.Error, ValueError, KeyError, TypeError, AttributeError):
            return None
