"""The certificate store: the single source of truth for what is served.

``FileStore`` is the filesystem implementation (certbot's layout, see
``paths.py``). Callers name what they want by key (a certificate name, an
ACME directory, a challenge token or domain) and never see the store's
paths, which stay inside ``certs/`` (a ``Path`` a method hands back, such
as where a pair was written, is for messages). Everything here is synchronous file I/O: the running proxy
calls it through ``asyncio.to_thread``, never from a TLS handshake.

``inventory()`` answers the one question the proxy asks at start and on every
reload: which valid pairs are there, which one is primary, and what was wrong
with the others. When no valid CA-issued pair covers the primary domain it
makes (or reuses) a self-signed bootstrap pair, so there is always something
to serve.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import logging
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import CERT_MODE, KEY_MODE, create_atomic, write_atomic, write_pair_atomic
from .bootstrap import make_self_signed
from .errors import InvalidName, PairError, StoreError, os_problem, os_reason
from .local_ca import CA_CERT, LocalCA, ensure_ca, load_ca
from .lock import DEFAULT_TTL, IssuanceLock
from .pair import CertPair, key_mode_problem, load_pair, parse_pair
from .paths import FULLCHAIN, META, PRIVKEY, TOKEN_KID, StorePaths, canonical_ip, check_name, name_for_domain

log = logging.getLogger("certproxy.store")


def _is_dir(path: Path) -> bool:
    """Like ``Path.is_dir``, but False (not an exception) when a parent may not be entered."""
    try:
        return path.is_dir()
    except OSError:
        return False


MAX_CHALLENGE_BYTES = 4096
# A bootstrap certificate with less than this left is replaced at start.
BOOTSTRAP_MIN_DAYS = 7


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Inventory:
    """What the store holds that can be served, and what it holds that cannot."""

    primary: CertPair
    pairs: tuple[CertPair, ...]  # primary first
    errors: dict[str, str] = field(default_factory=dict)  # path -> reason
    kept: tuple[str, ...] = ()  # previous pairs kept in service, and why


class FileStore:
    """Certificate store on a local (or shared) filesystem."""

    def __init__(self, root: Path) -> None:
        self._paths = StorePaths(Path(root))  # private: callers name things by key

    @property
    def root(self) -> Path:
        return self._paths.root

    # -- layout --------------------------------------------------------
    def ensure_layout(self) -> None:
        """Create the store's folders; raise StoreError when that is impossible.

        A read-only store that already holds ``live/`` is accepted (certificates
        managed by another tool on a read-only volume); writing into it later
        fails with a clear StoreError.
        """
        root = self._paths.root
        try:
            root.mkdir(parents=True, exist_ok=True)
            if not root.is_dir():
                raise StoreError(f"{root}: not a folder")
            for folder in self._paths.folders():
                folder.mkdir(exist_ok=True)
            os.chmod(self._paths.accounts, 0o700)
            os.listdir(root)
        except StoreError:
            raise
        except FileExistsError:
            raise StoreError(f"{root}: not a folder") from None
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and _is_dir(self._paths.live):
                log.warning(
                    "store %s is read-only: serving what live/ holds; renewals and a "
                    "bootstrap certificate need a writable store",
                    root,
                )
                return
            raise StoreError(os_problem(exc, root)) from None
        if not os.access(root, os.R_OK | os.X_OK):
            raise StoreError(f"{root}: not readable")

    # -- pairs ---------------------------------------------------------
    def live_names(self) -> list[str]:
        try:
            entries = sorted(os.listdir(self._paths.live))
        except FileNotFoundError:
            return []
        names = []
        for entry in entries:
            try:
                check_name(entry)
            except InvalidName:
                continue  # dot-files, editor leftovers
            if (self._paths.live / entry).is_dir():
                names.append(entry)
        return names

    def misnamed_live(self) -> dict[str, str]:
        """Folders of ``live/`` named by an IP address in another spelling than its
        canonical one (``2001:DB8::1``, ``0:0::2``): never served, so said (path -> why)."""
        try:
            entries = os.listdir(self._paths.live)
        except FileNotFoundError:
            return {}
        out = {}
        for entry in entries:
            canonical = canonical_ip(entry)
            if canonical is not None and canonical != entry and (self._paths.live / entry).is_dir():
                why = f"an address folder is named {canonical} (its canonical form)"
                out[str(self._paths.live / entry)] = why
        return out

    def bootstrap_names(self) -> list[str]:
        """The names with a folder in ``bootstrap/`` ([] when it cannot be read)."""
        try:
            return sorted(
                p.name for p in self._paths.bootstrap.iterdir() if p.is_dir() and not p.name.startswith(".")
            )
        except OSError:
            return []

    def has_layout(self) -> bool:
        """Whether the root holds a store (``live/`` or ``bootstrap/``): a mistyped folder does
        not; OSError when the root cannot be entered."""
        return self._paths.live.is_dir() or self._paths.bootstrap.is_dir()

    def load_live(self, name: str, now: dt.datetime | None = None) -> CertPair:
        return load_pair(self._paths.live_dir(name), name, "live", now or utcnow())

    def write_live(
        self, name: str, chain_pem: bytes, key_pem: bytes, meta: Mapping[str, object] | None = None
    ) -> Path:
        """Write a CA-issued pair (validated first: a bad pair never lands in live/)."""
        folder = self._paths.live_dir(name)
        parse_pair(name, "live", chain_pem, key_pem, source=folder, now=utcnow())
        self._write_pair(folder, chain_pem, key_pem)
        if meta is not None:
            try:
                write_atomic(folder / META, json.dumps(meta, indent=2).encode() + b"\n")
            except OSError as exc:
                raise StoreError(f"{folder / META}: cannot write: {os_reason(exc)}") from None
        return folder

    def live_meta(self, name: str) -> dict[str, object]:
        """What certproxy recorded when it wrote ``live/<name>`` ({} if nothing)."""
        try:
            data = json.loads((self._paths.live_dir(name) / META).read_bytes())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def renewal_spread(self) -> float:
        """This installation's place in a certificate's renewal period, in [0, 1): drawn
        once, kept in the store (so restarts and replicas agree); 0.5 when the store
        cannot keep it."""
        path = self._paths.installation
        for _ in range(2):
            try:
                data = json.loads(path.read_bytes())
                value = float(data["renewal_spread"])
                if 0.0 <= value < 1.0:
                    return value
                break
            except FileNotFoundError:
                fresh = json.dumps({"renewal_spread": round(random.random(), 6)}).encode() + b"\n"
                try:
                    create_atomic(path, fresh)
                except OSError:
                    break  # read-only store: a fixed value
            except (OSError, ValueError, KeyError, TypeError):
                break
        return 0.5

    # -- issuance ------------------------------------------------------
    def lock(self, name: str, ttl: float = DEFAULT_TTL) -> IssuanceLock:
        """The issuance lock of ``name``, shared by every process using this store:
        ``async with store.lock(name).held(): ...`` (see ``lock.py``)."""
        return IssuanceLock(self._paths.lock(name), ttl)

    # -- ACME state ----------------------------------------------------
    def write_challenge(self, token: str, data: bytes) -> None:
        write_atomic(self._paths.challenge(token), data, CERT_MODE)

    def remove_challenge(self, token: str) -> None:
        self._paths.challenge(token).unlink(missing_ok=True)

    def write_alpn_challenge(self, domain: str, pem: bytes) -> None:
        """TLS-ALPN-01: the validation certificate and key (one PEM) for ``domain``."""
        self._write_private(self._paths.alpn_challenge(domain), pem)

    def alpn_challenge(self, domain: str) -> bytes | None:
        """The validation PEM pending for ``domain`` (whichever replica ordered it), or None."""
        try:
            return self._paths.alpn_challenge(domain).read_bytes()
        except (InvalidName, FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def remove_alpn_challenge(self, domain: str) -> None:
        self._paths.alpn_challenge(domain).unlink(missing_ok=True)

    def account_key(self, directory: str) -> bytes | None:
        """The account key (PEM) kept for the ACME ``directory``, or None before the first."""
        try:
            return self._paths.account_key(directory).read_bytes()
        except FileNotFoundError:
            return None

    def write_account_key(self, directory: str, pem: bytes) -> Path:
        """Keep ``pem`` as the account key of ``directory`` (mode 0600); returns its file."""
        path = self._paths.account_key(directory)
        self._write_private(path, pem)
        return path

    def write_account(self, directory: str, record: Mapping[str, object]) -> None:
        """What the CA said of the account of ``directory`` (its URI, contact), kept as JSON."""
        data = json.dumps(record, indent=2).encode() + b"\n"
        self._write_private(self._paths.account_record(directory), data)

    def retire_account_key(self, directory: str, now: dt.datetime) -> Path:
        """Move the account key of ``directory`` aside for the operator (``.lost-<time>``),
        so that the next one is new; returns where it is kept."""
        path = self._paths.account_key(directory)
        aside = path.with_name(f"{path.name}.lost-{now:%Y%m%dT%H%M%SZ}")
        if path.exists():
            os.replace(path, aside)
        return aside

    def _write_private(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, data, KEY_MODE)

    # -- access tokens -------------------------------------------------
    def token_keys(self) -> dict[str, tuple[bytes, float]]:
        """The keys that sign access tokens, by id: (key, when it was made, Unix time).
        Shared by every replica of the store."""
        keys: dict[str, tuple[bytes, float]] = {}
        try:
            entries = list(os.scandir(self._paths.token_keys))
        except FileNotFoundError:
            return keys
        for entry in entries:
            kid = entry.name.removesuffix(".key")
            if entry.name.endswith(".key") and TOKEN_KID.fullmatch(kid):
                with contextlib.suppress(FileNotFoundError):
                    key = Path(entry.path).read_bytes()
                    if len(key) >= 32:
                        keys[kid] = (key, entry.stat().st_mtime)
        return keys

    def add_token_key(self, kid: str, key: bytes) -> bool:
        """Keep a new token-signing key (mode 0600); False when ``kid`` exists already."""
        path = self._paths.token_key(kid)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return create_atomic(path, key, KEY_MODE)

    def remove_token_key(self, kid: str) -> None:
        self._paths.token_key(kid).unlink(missing_ok=True)

    # -- the local CA --------------------------------------------------
    @property
    def local_ca_folder(self) -> Path:
        """Where the local CA is kept (for messages)."""
        return self._paths.ca

    def ensure_local_ca(self, domains: tuple[str, ...], now: dt.datetime) -> tuple[LocalCA, bool]:
        """The local CA, made first if there is none; (CA, whether this call made it)."""
        return ensure_ca(self._paths.ca, domains, now)

    def load_local_ca(self) -> LocalCA | None:
        """The local CA, or None before it is made; StoreError when it is damaged."""
        return load_ca(self._paths.ca)

    def local_ca_cert(self) -> bytes | None:
        """The local CA's certificate (PEM) for clients to trust, or None (not made, unreadable)."""
        try:
            return (self._paths.ca / CA_CERT).read_bytes()
        except OSError:
            return None

    def load_bootstrap(self, name: str, now: dt.datetime | None = None) -> CertPair:
        return load_pair(self._paths.bootstrap_dir(name), name, "bootstrap", now or utcnow())

    def ensure_bootstrap(self, domains: tuple[str, ...], now: dt.datetime | None = None) -> CertPair:
        """The bootstrap pair for ``domains``: reused while it fits, else made anew."""
        now = now or utcnow()
        name = name_for_domain(domains[0])
        try:
            pair = self.load_bootstrap(name, now)
        except PairError:
            pair = None
        if (
            pair is not None
            and pair.days_left(now) >= BOOTSTRAP_MIN_DAYS
            and all(pair.covers(d) for d in domains)
        ):
            return pair
        chain_pem, key_pem = make_self_signed(domains, now)
        self._write_pair(self._paths.bootstrap_dir(name), chain_pem, key_pem)
        log.warning(
            "no CA certificate for %s in %s: serving a self-signed bootstrap certificate",
            ", ".join(domains),
            self._paths.live,
        )
        return self.load_bootstrap(name, now)

    def _write_pair(self, folder: Path, chain_pem: bytes, key_pem: bytes) -> None:
        try:
            write_pair_atomic(
                folder,
                {
                    PRIVKEY: (key_pem, KEY_MODE),
                    FULLCHAIN: (chain_pem, CERT_MODE),
                },
            )
        except OSError as exc:
            raise StoreError(f"{folder}: cannot write certificate: {os_reason(exc)}") from None

    def inventory(
        self,
        domains: tuple[str, ...],
        now: dt.datetime | None = None,
        *,
        previous: Sequence[CertPair] = (),
        fresh: bool = False,
    ) -> Inventory:
        """What to serve: every valid live pair, the primary one, bootstrap if needed.

        ``previous`` is what is in service now (primary first). A pair that
        no longer validates keeps its previous version in service; a removed
        name is dropped only if another live pair remains to take its place;
        an unchanged pair is the very same object as before (its TLS context
        and load time carry over), unless ``fresh`` asks to reload everything.
        """
        now = now or utcnow()
        old_live = {p.name: p for p in previous if p.kind == "live"}
        pairs, errors, broken = self._load_live_pairs(old_live, now, fresh)
        kept: list[str] = []
        # A bad write never takes a certificate out of service.
        for name in sorted(broken):
            old = old_live.get(name)
            if old is not None and old.valid_at(now):
                pairs[name] = old
                kept.append(f"{name}: kept serving serial {old.serial}")
        # A removed name goes only if another live certificate remains.
        removed = [n for n in old_live if n not in pairs and n not in broken]
        if removed and not pairs:
            for name in removed:
                if old_live[name].valid_at(now):
                    pairs[name] = old_live[name]
                    kept.append(f"{name}: removed from the store, kept serving: it is the last certificate")
        primary = self._pick_primary(list(pairs.values()), domains[0])
        if primary is None and previous and previous[0].kind == "live" and previous[0].valid_at(now):
            # No other live pair covers the primary name: keep the one in service.
            primary = previous[0]
            pairs[primary.name] = primary
            kept.append(f"{primary.name}: no other certificate covers {domains[0]}, kept serving")
        ordered = list(pairs.values())
        if primary is None:
            primary = self.ensure_bootstrap(domains, now)
            ordered.append(primary)
        ordered.sort(key=lambda p: p is not primary)
        return Inventory(primary=primary, pairs=tuple(ordered), errors=errors, kept=tuple(kept))

    def _load_live_pairs(
        self, old_live: dict[str, CertPair], now: dt.datetime, fresh: bool
    ) -> tuple[dict[str, CertPair], dict[str, str], set[str]]:
        """Every live pair that loads (the very object in service when unchanged), why
        each other one does not (by path), and the names of those."""
        pairs: dict[str, CertPair] = {}
        errors: dict[str, str] = self.misnamed_live()
        broken: set[str] = set()
        for name in self.live_names():
            try:
                pair = self.load_live(name, now)
            except PairError as exc:
                errors[str(exc.path)] = exc.reason
                broken.add(name)
                continue
            old = old_live.get(name)
            if (
                old is not None
                and not fresh
                and old.chain_pem == pair.chain_pem
                and old.key_pem == pair.key_pem
            ):
                pair = old
            else:
                warning = key_mode_problem(pair.source)
                if warning:
                    log.warning("%s", warning)
            pairs[name] = pair
        return pairs, errors, broken

    @staticmethod
    def _pick_primary(pairs: list[CertPair], domain: str) -> CertPair | None:
        wanted = name_for_domain(domain)
        named = [p for p in pairs if p.name == wanted and p.covers(domain)]
        covering = named or [p for p in pairs if p.covers(domain)]
        return covering[0] if covering else None

    def fingerprint(self) -> tuple[tuple[str, int, int, int, str], ...]:
        """A cheap summary of ``live/`` (names, file identities, symlink targets).

        Compared between polls, it notices changes that no filesystem event
        reported (network filesystems, symlinks into folders outside the store).
        """
        out = []
        for name in self.live_names():
            for fname in (FULLCHAIN, PRIVKEY):
                path = self._paths.live / name / fname
                try:
                    st = os.stat(path)
                    target = os.readlink(path) if os.path.islink(path) else ""
                except OSError:
                    out.append((f"{name}/{fname}", 0, 0, 0, ""))
                    continue
                out.append((f"{name}/{fname}", st.st_ino, st.st_mtime_ns, st.st_size, target))
        return tuple(out)

    # -- challenges ----------------------------------------------------
    def read_challenge(self, token: str) -> bytes | None:
        """The key authorization for ``token``, or None (bad token, no file)."""
        try:
            path = self._paths.challenge(token)
        except InvalidName:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            data = os.read(fd, MAX_CHALLENGE_BYTES)
        except OSError:
            return None
        finally:
            os.close(fd)
        return data
