"""The access policy file: who may pull, push and delete which repository.

The file (TOML)::

    users = "htpasswd"                 # bcrypt htpasswd; relative to this file
    [groups]
    ci = ["ci-bot"]
    [[rule]]
    repositories = ["team/*"]          # globs over the repository name
    who = ["@ci", "bob"]               # anonymous, authenticated, a user, @group
    actions = ["pull", "push"]         # pull, push, delete, catalog
    from = ["10.0.0.0/8", "::1"]       # optional: only from these client addresses

How this works: ``load_policy`` reads the file once, checks every key and value, and
compiles each rule: its globs into one regular expression (``fnmatch`` semantics,
case-sensitive, ``*`` also matches ``/``), its ``who`` into "anyone", "any user with
valid credentials" and a set of user names (groups expanded), its ``from`` into
integer ranges. ``Policy.actions`` is then the union of the grants of the rules that
admit the caller, reach its address and match the repository; what no rule grants is
refused. The part that depends on the user and the repository only is remembered
(bounded, per policy): a request then costs a dictionary lookup, plus an integer
comparison for each matching rule limited by ``from``. A changed file is a new
``Policy``; nothing in one changes after loading.

Semantics, beyond the file's own words:

- "anonymous" admits every caller, with or without credentials; "authenticated" every
  user whose credentials are valid (the caller checks them: a user name passed in
  means valid credentials were shown).
- A ``push`` grant includes ``pull`` of the same repositories (clients check for blobs
  before they push them). ``catalog`` is granted by any rule that lists it, whatever
  its ``repositories``; ``Policy.actions`` answers pull, push and delete only, and
  ``Policy.may_catalog`` the catalog.
- The address is the TCP peer. An IPv4 client seen on a dual-stack socket as an
  IPv4-mapped IPv6 address (``::ffff:10.1.2.3``) counts as its IPv4 address, and so
  does an IPv4-mapped network in ``from``. A bare address in ``from`` is a /32 or /128.
- A user named in ``who`` or in a group need not be in the users file (users change
  while certproxy runs, the policy's names only match when they exist); a ``@group``
  must be defined in ``[groups]``. A group holds user names, not other groups.
- Lists are lists: ``who = "bob"`` is refused (write ``who = ["bob"]``), as are empty
  ``repositories``, ``who``, ``actions`` and ``from`` (leave ``from`` out to allow
  every address). ``users`` is required and must name an existing file; a policy
  without any ``[[rule]]`` refuses everything.

Every problem is one ``PolicyError`` whose text is ``access.toml:LINE: reason``.
tomllib gives no positions for a valid document, so the line is found by scanning the
text (``_Layout``): the header of the Nth ``[[rule]]``, the key inside it, the line of
an offending value in a multi-line list.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import ipaddress
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple, TypeAlias

Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
# (IP version, first address, last address) as integers.
Range: TypeAlias = tuple[int, int, int]

ACTIONS = ("pull", "push", "delete", "catalog")
REPOSITORY_ACTIONS = frozenset({"pull", "push", "delete"})
ANONYMOUS = "anonymous"
AUTHENTICATED = "authenticated"
TOP_KEYS = ("users", "groups", "rule")
RULE_KEYS = ("repositories", "who", "actions", "from")
MISPLACED_USERS = "users = … is inside {table}: put it above the first [table] header"
CACHE_MAX = 4096  # (user, repository) pairs remembered per policy
_NOTHING: frozenset[str] = frozenset()


class PolicyError(Exception):
    """A policy file that cannot be used: ``file``, ``line`` (1-based, or None when no
    line is to blame) and a one-line ``reason``; shown as ``access.toml:LINE: reason``."""

    def __init__(self, file: Path, line: int | None, reason: str) -> None:
        super().__init__(file, line, reason)
        self.file = file
        self.line = line
        self.reason = reason

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.file.name}: {self.reason}"
        return f"{self.file.name}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class Rule:
    """One ``[[rule]]``, compiled. ``number``: its position in the file (1-based);
    ``grants``: the repository actions it gives (``push`` brings ``pull``);
    ``users``: the users it names, directly or through groups; ``ranges``: its
    ``from`` as integer ranges, None when it has none."""

    number: int
    repositories: tuple[str, ...]
    who: tuple[str, ...]
    actions: frozenset[str]
    networks: tuple[Network, ...] | None
    anonymous: bool
    authenticated: bool
    users: frozenset[str]
    grants: frozenset[str]
    catalog: bool
    pattern: re.Pattern[str] = field(repr=False, compare=False)
    ranges: tuple[Range, ...] | None = field(repr=False, compare=False)

    def admits(self, user: str | None) -> bool:
        """Whether the rule's ``who`` names this caller (None: anonymous)."""
        return self.anonymous or (user is not None and (self.authenticated or user in self.users))


class _Grant(NamedTuple):
    """What the rules matching a (user, repository) give: ``base`` from anywhere, and
    each ``from``-limited rule's grants with its ranges (those not already in base)."""

    base: frozenset[str]
    ranged: tuple[tuple[tuple[Range, ...], frozenset[str]], ...]


@dataclass(frozen=True, eq=False)
class Policy:
    """A loaded policy. ``file``: where it came from; ``users_file``: the htpasswd
    file it names (absolute); ``groups``: group name -> user names."""

    file: Path
    users_file: Path
    groups: Mapping[str, frozenset[str]]
    rules: tuple[Rule, ...]
    _catalog: tuple[Rule, ...] = field(init=False, repr=False)
    _cache: dict[tuple[str | None, str], _Grant] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_catalog", tuple(rule for rule in self.rules if rule.catalog))

    def actions(self, user: str | None, address: Address, repository: str) -> frozenset[str]:
        """The actions (``pull``, ``push``, ``delete``) the caller may take on
        ``repository``. ``user``: None for anonymous, else a user whose credentials
        were valid; ``address``: the TCP peer."""
        grant = self._cache.get((user, repository))
        if grant is None:
            grant = self._grant(user, repository)
            if len(self._cache) >= CACHE_MAX:
                self._cache.pop(next(iter(self._cache)), None)
            self._cache[(user, repository)] = grant
        if not grant.ranged:
            return grant.base
        version, number = _flat(address)
        extra = [grants for ranges, grants in grant.ranged if _within(version, number, ranges)]
        return grant.base.union(*extra) if extra else grant.base

    def may_catalog(self, user: str | None, address: Address) -> bool:
        """Whether the caller may list the catalog (which the caller then filters to
        the repositories it may pull)."""
        version, number = _flat(address)
        return any(
            rule.admits(user) and (rule.ranges is None or _within(version, number, rule.ranges))
            for rule in self._catalog
        )

    def _grant(self, user: str | None, repository: str) -> _Grant:
        base: set[str] = set()
        ranged: list[tuple[tuple[Range, ...], frozenset[str]]] = []
        for rule in self.rules:
            if not rule.grants or not rule.admits(user) or rule.pattern.match(repository) is None:
                continue
            if rule.ranges is None:
                base |= rule.grants
            else:
                ranged.append((rule.ranges, rule.grants))
        frozen = frozenset(base) if base else _NOTHING
        return _Grant(frozen, tuple((r, g) for r, g in ranged if not g <= frozen))


def load_policy(path: Path) -> Policy:
    """Read and check the policy file at ``path`` (blocking: run it in a thread).
    Raises ``PolicyError`` for the first problem found."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError(path, None, f"cannot read the policy: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(path, raw.count(b"\n", 0, exc.start) + 1, "not UTF-8 text") from exc
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _toml_error(path, text, exc) from exc
    return _Reader(path, _Layout(text), document).policy()


_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_AT_END = re.compile(r"\s*\(at end of document\)$")


def _toml_error(path: Path, text: str, exc: tomllib.TOMLDecodeError) -> PolicyError:
    message = str(exc)
    found = _POSITION.search(message)
    if found is not None:
        reason = f"invalid TOML: {message[: found.start()]} (column {found.group(2)})"
        return PolicyError(path, int(found.group(1)), reason)
    found = _AT_END.search(message)
    if found is not None:
        reason = f"invalid TOML: {message[: found.start()]} (at the end of the file)"
        return PolicyError(path, max(1, len(text.splitlines())), reason)
    return PolicyError(path, None, f"invalid TOML: {message}")


def _flat(address: Address) -> tuple[int, int]:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return 4, int(address.ipv4_mapped)
    return address.version, int(address)


def _within(version: int, number: int, ranges: tuple[Range, ...]) -> bool:
    return any(v == version and first <= number <= last for v, first, last in ranges)


def _range(network: Network) -> Range:
    first, last = network.network_address, network.broadcast_address
    if isinstance(first, ipaddress.IPv6Address) and isinstance(last, ipaddress.IPv6Address):
        low, high = first.ipv4_mapped, last.ipv4_mapped
        if low is not None and high is not None:
            return 4, int(low), int(high)
    return network.version, int(first), int(last)


def _kind(value: object) -> str:
    """How a TOML value is called in a reason."""
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return "a date or time"


def _hint(word: str, known: Sequence[str], what: str) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    if close:
        return f'(did you mean "{close[0]}"?)'
    return f"(the {what} are {', '.join(known)})" if known else f"(there are no {what})"


class _Reader:
    """Checks a parsed policy document and compiles it; blames lines through ``layout``."""

    def __init__(self, path: Path, layout: _Layout, document: dict[str, object]) -> None:
        self.path = path
        self.layout = layout
        self.document = document

    def error(self, line: int | None, reason: str) -> PolicyError:
        return PolicyError(self.path, line, reason)

    def policy(self) -> Policy:
        for key in self.document:
            if key not in TOP_KEYS:
                raise self.error(self.layout.top(key), f'unknown key "{key}" {_hint(key, TOP_KEYS, "keys")}')
        users_file = self.users()
        groups = self.groups()
        return Policy(self.path, users_file, MappingProxyType(groups), self.rules(groups))

    def users(self) -> Path:
        value = self.document.get("users")
        line = self.layout.top("users")
        if value is None:
            raise self.missing_users()
        if not isinstance(value, str):
            raise self.error(
                line, f'"users" must be a string (the path of an htpasswd file), not {_kind(value)}'
            )
        if not value:
            raise self.error(line, '"users" is empty')
        users_file = self.path.absolute().parent / value
        if not users_file.exists():
            raise self.error(line, f"users file {users_file} does not exist")
        if not users_file.is_file():
            raise self.error(line, f"users file {users_file} is not a file")
        return users_file

    def missing_users(self) -> PolicyError:
        """No top-level ``users``: perhaps it was written below a table's header, where
        TOML makes it a key of that table."""
        groups, rules = self.document.get("groups"), self.document.get("rule")
        if isinstance(groups, dict) and "users" in groups:
            return self.error(self.layout.group("users"), MISPLACED_USERS.format(table="[groups]"))
        for number, rule in enumerate(rules if isinstance(rules, list) else [], start=1):
            if isinstance(rule, dict) and "users" in rule:
                where = f"[[rule]] {number}"
                return self.error(self.layout.rule(number, "users"), MISPLACED_USERS.format(table=where))
        return self.error(None, 'no users = "…" (the htpasswd file with the users\' passwords)')

    def groups(self) -> dict[str, frozenset[str]]:
        value = self.document.get("groups", {})
        if not isinstance(value, dict):
            raise self.error(
                self.layout.top("groups"),
                f'[groups] must be a table of name = ["user", …], not {_kind(value)}',
            )
        groups: dict[str, frozenset[str]] = {}
        for name, members in value.items():
            where = f'group "{name}" in [groups]'
            line = self.layout.group(name)
            if not isinstance(members, list):
                example = json.dumps(members) if isinstance(members, str) else '"user"'
                raise self.error(
                    line,
                    f"{where} must be a list of user names, not {_kind(members)}: "
                    f"write {_toml_key(name)} = [{example}]",
                )
            for member in members:
                if not isinstance(member, str):
                    raise self.error(line, f"{where} holds {_kind(member)}, not a user name")
                if member.startswith("@"):
                    raise self.error(
                        self.layout.group(name, member),
                        f'{where} holds "{member}": groups hold user names, not groups',
                    )
                self.user_name(member, where, self.layout.group(name, member))
            groups[name] = frozenset(members)
        return groups

    def user_name(self, name: str, where: str, line: int | None) -> None:
        if not name:
            raise self.error(line, f"empty user name in {where}")
        if ":" in name:
            raise self.error(line, f'"{name}" in {where} cannot be a user name (htpasswd names have no ":")')

    def rules(self, groups: dict[str, frozenset[str]]) -> tuple[Rule, ...]:
        value = self.document.get("rule", [])
        line = self.layout.top("rule")
        if isinstance(value, dict):
            raise self.error(
                line, "rules are [[rule]] tables (an array of tables): write [[rule]], not [rule]"
            )
        if not isinstance(value, list):
            raise self.error(line, f"rule must be [[rule]] tables, not {_kind(value)}")
        rules: list[Rule] = []
        for number, table in enumerate(value, start=1):
            if not isinstance(table, dict):
                raise self.error(line, f"rule {number} is {_kind(table)}, not a [[rule]] table")
            rules.append(self.rule(number, table, groups))
        return tuple(rules)

    def rule(self, number: int, table: dict[str, object], groups: dict[str, frozenset[str]]) -> Rule:
        name = f"[[rule]] {number}"
        for key in table:
            if key not in RULE_KEYS:
                raise self.error(
                    self.layout.rule(number, key),
                    f'unknown key "{key}" in {name} {_hint(key, RULE_KEYS, "keys")}',
                )
        for key in RULE_KEYS[:3]:
            if key not in table:
                raise self.error(self.layout.rule(number), f'{name} has no "{key}"')
        repositories = self.strings(number, table, "repositories")
        for pattern in repositories:
            if not pattern:
                raise self.error(
                    self.layout.rule(number, "repositories", pattern), f"empty pattern in {name}"
                )
        who = self.strings(number, table, "who")
        users: set[str] = set()
        for entry in who:
            line = self.layout.rule(number, "who", entry)
            if entry.startswith("@"):
                group = entry[1:]
                if group not in groups:
                    known = [f"@{g}" for g in groups]
                    raise self.error(
                        line, f'unknown group "{entry}" in "who" of {name} {_hint(entry, known, "groups")}'
                    )
                users |= groups[group]
            elif entry not in (ANONYMOUS, AUTHENTICATED):
                self.user_name(entry, f'"who" of {name}', line)
                users.add(entry)
        actions = self.strings(number, table, "actions")
        for action in actions:
            if action not in ACTIONS:
                raise self.error(
                    self.layout.rule(number, "actions", action),
                    f'unknown action "{action}" in {name} {_hint(action, ACTIONS, "actions")}',
                )
        networks = self.networks(number, table) if "from" in table else None
        granted = frozenset(actions)
        grants = granted & REPOSITORY_ACTIONS
        if "push" in grants:
            grants |= {"pull"}
        return Rule(
            number=number,
            repositories=repositories,
            who=who,
            actions=granted,
            networks=networks,
            anonymous=ANONYMOUS in who,
            authenticated=AUTHENTICATED in who,
            users=frozenset(users),
            grants=grants,
            catalog="catalog" in granted,
            pattern=re.compile("|".join(fnmatch.translate(p) for p in repositories)),
            ranges=None if networks is None else tuple(_range(n) for n in networks),
        )

    def strings(self, number: int, table: dict[str, object], key: str) -> tuple[str, ...]:
        value = table[key]
        where = f'"{key}" in [[rule]] {number}'
        line = self.layout.rule(number, key)
        if not isinstance(value, list):
            example = json.dumps(value) if isinstance(value, str) else "…"
            raise self.error(
                line, f"{where} must be a list of strings, not {_kind(value)}: write {key} = [{example}]"
            )
        if not value:
            extra = " (leave it out to allow every address)" if key == "from" else ""
            raise self.error(line, f"{where} is empty{extra}")
        for item in value:
            if not isinstance(item, str):
                raise self.error(line, f"{where} holds {_kind(item)}, not a string")
        return tuple(value)

    def networks(self, number: int, table: dict[str, object]) -> tuple[Network, ...]:
        networks: list[Network] = []
        for text in self.strings(number, table, "from"):
            line = self.layout.rule(number, "from", text)
            try:
                networks.append(ipaddress.ip_network(text))
                continue
            except ValueError:
                pass
            try:
                loose = ipaddress.ip_network(text, strict=False)
            except ValueError:
                example = "a CIDR like 10.0.0.0/8 or fd00::/8"
                raise self.error(
                    line, f'bad address "{text}" in "from" of [[rule]] {number} ({example})'
                ) from None
            raise self.error(
                line, f'"{text}" in "from" of [[rule]] {number} has host bits set (did you mean "{loose}"?)'
            )
        return tuple(networks)


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


# --- finding lines ---------------------------------------------------------------------


@dataclass
class _Section:
    """A table of the file: the top (no header), ``[name]`` or ``[[name]]``."""

    kind: str  # "top", "table" or "array"
    parts: tuple[str, ...]
    line: int | None  # the header's line
    start: int  # its first line
    keys: list[tuple[tuple[str, ...], int]]
    end: int = 0  # its last line


_BARE = re.compile(r"[A-Za-z0-9_-]+")
_BASIC = re.compile(r'"((?:[^"\\]|\\.)*)"')
_LITERAL = re.compile(r"'([^']*)'")


def _dotted(text: str, pos: int) -> tuple[tuple[str, ...], int] | None:
    """A dotted key starting at ``text[pos]`` and the position after it, or None."""
    parts: list[str] = []
    while True:
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        for pattern in (_BARE, _BASIC, _LITERAL):
            found = pattern.match(text, pos)
            if found is not None:
                part = found.group(1) if pattern is not _BARE else found.group(0)
                if pattern is _BASIC:
                    with contextlib.suppress(ValueError):  # TOML's escapes are JSON's, mostly
                        part = json.loads(f'"{part}"')
                parts.append(part)
                pos = found.end()
                break
        else:
            return None
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos < len(text) and text[pos] == ".":
            pos += 1
            continue
        return tuple(parts), pos


class _Layout:
    """Where the tables and keys of a TOML text are, by line (1-based); best effort,
    for error messages only. Multi-line strings and arrays are skipped over, so their
    contents are never taken for headers or keys."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.sections = [_Section("top", (), None, 1, [])]
        depth = 0
        open_string: str | None = None
        for number, line in enumerate(self.lines, start=1):
            pos = 0
            if open_string is None and depth == 0:
                stripped = line.lstrip()
                indent = len(line) - len(stripped)
                if stripped.startswith("["):
                    array = stripped.startswith("[[")
                    found = _dotted(line, indent + (2 if array else 1))
                    if found is not None:
                        kind = "array" if array else "table"
                        self.sections.append(_Section(kind, found[0], number, number, []))
                    continue
                found = _dotted(line, indent)
                if found is None or found[1] >= len(line) or line[found[1]] != "=":
                    continue
                self.sections[-1].keys.append((found[0], number))
                pos = found[1] + 1
            depth, open_string = _skip(line, pos, depth, open_string)
        for section, following in zip(self.sections, [*self.sections[1:], None], strict=True):
            section.end = following.start - 1 if following is not None else len(self.lines)

    def top(self, key: str) -> int | None:
        """The line of a top-level key, or of a table named by it."""
        line = _key(self.sections[0], key)
        if line is None:
            line = next((s.line for s in self.sections[1:] if s.parts[:1] == (key,)), None)
        return line

    def group(self, name: str, value: str | None = None) -> int | None:
        section = next((s for s in self.sections if s.kind == "table" and s.parts == ("groups",)), None)
        if section is None:
            return self.top("groups")
        line = _key(section, name)
        if line is None:
            return next((s.line for s in self.sections if s.parts == ("groups", name)), section.line)
        return self.value(section, line, value)

    def rule(self, number: int, key: str | None = None, value: str | None = None) -> int | None:
        """The line of the Nth ``[[rule]]``, of a key in it, of a value of that key."""
        rules = [s for s in self.sections if s.kind == "array" and s.parts == ("rule",)]
        if number > len(rules):
            return self.top("rule")
        section = rules[number - 1]
        if key is None:
            return section.line
        line = _key(section, key)
        if line is None:  # a sub-table [rule.KEY] after the header
            after = section.start
            return next(
                (s.line for s in self.sections if s.parts == ("rule", key) and s.start > after), after
            )
        return self.value(section, line, value)

    def value(self, section: _Section, line: int, value: str | None) -> int:
        """The line, from a key's to the next key's, where ``value`` is written."""
        if value is None:
            return line
        following = [n for _, n in section.keys if n > line]
        end = following[0] - 1 if following else section.end
        quoted = (json.dumps(value), f"'{value}'")
        for number in range(line, end + 1):
            if any(q in self.lines[number - 1] for q in quoted):
                return number
        return line


def _key(section: _Section, key: str) -> int | None:
    return next((line for parts, line in section.keys if parts[0] == key), None)


def _skip(line: str, pos: int, depth: int, open_string: str | None) -> tuple[int, str | None]:
    """Past a line's value: the bracket depth and the open multi-line string after it."""
    while pos < len(line):
        if open_string is not None:
            close = line.find(open_string, pos)
            if close < 0:
                return depth, open_string
            pos, open_string = close + 3, None
            continue
        char = line[pos]
        if char == "#":
            break
        if line.startswith('"""', pos) or line.startswith("'''", pos):
            open_string, pos = line[pos : pos + 3], pos + 3
            continue
        if char in "\"'":
            found = (_BASIC if char == '"' else _LITERAL).match(line, pos)
            pos = found.end() if found is not None else len(line)
            continue
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth = max(0, depth - 1)
        pos += 1
    return depth, open_string
