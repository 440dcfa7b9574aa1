"""The access policy file (service/access/policy.py): the issue's example as a table of
callers, `from` over IPv4 and IPv6, every error with its one line and line number, the
users file's resolution, and the compiled check against a direct reading of the rules."""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from certproxy.service.access import policy as module
from certproxy.service.access.policy import PolicyError, load_policy

EXAMPLE = """\
users = "htpasswd"        # bcrypt htpasswd; relative paths are relative to this file

[groups]
ci = ["ci-bot"]
admins = ["alice"]

[[rule]]
repositories = ["*"]
who = ["anonymous"]
actions = ["pull"]

[[rule]]
repositories = ["team/*"]
who = ["@ci", "bob"]
actions = ["pull", "push"]
from = ["10.0.0.0/8", "127.0.0.0/8"]

[[rule]]
repositories = ["*"]
who = ["@admins"]
actions = ["pull", "push", "delete", "catalog"]
"""

HTPASSWD = "alice:$2y$05$" + "a" * 53 + "\n"


def write(folder: Path, text: str, *, users: bool = True) -> Path:
    if users:
        (folder / "htpasswd").write_text(HTPASSWD)
    path = folder / "access.toml"
    path.write_text(text)
    return path


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


PULL = {"pull"}
WRITE = {"pull", "push"}
ALL = {"pull", "push", "delete"}

# caller, address, repository, expected actions
EXAMPLE_TABLE = [
    (None, "192.0.2.1", "library/alpine", PULL),  # anonymous pull of everything
    (None, "10.1.2.3", "team/app", PULL),  # the team's from-rule names no anonymous caller
    (None, "::1", "a/b/c", PULL),
    ("bob", "10.1.2.3", "team/app", WRITE),
    ("bob", "127.0.0.1", "team/app", WRITE),
    ("bob", "10.1.2.3", "team/sub/deep", WRITE),  # "*" also matches "/"
    ("bob", "10.1.2.3", "teams/app", PULL),  # team/* is not teams/*
    ("bob", "10.1.2.3", "team", PULL),
    ("bob", "10.1.2.3", "library/alpine", PULL),
    ("bob", "192.0.2.1", "team/app", PULL),  # outside 10/8 and 127/8
    ("bob", "::1", "team/app", PULL),  # ::1 is not in 127.0.0.0/8
    ("bob", "::ffff:10.1.2.3", "team/app", WRITE),  # IPv4 on a dual-stack socket
    ("ci-bot", "127.0.0.1", "team/app", WRITE),  # through @ci
    ("ci-bot", "11.0.0.1", "team/app", PULL),
    ("alice", "192.0.2.1", "team/app", ALL),  # admins: everything, from anywhere
    ("alice", "2001:db8::1", "library/alpine", ALL),
    ("mallory", "10.1.2.3", "team/app", PULL),  # a user no rule names: what anonymous may
    ("carol", "10.1.2.3", "Team/app", PULL),  # globs are case-sensitive
]


@pytest.mark.parametrize(("user", "address", "repository", "expected"), EXAMPLE_TABLE)
def test_the_issue_example_as_a_table_of_callers(
    tmp_path: Path, user: str | None, address: str, repository: str, expected: set[str]
) -> None:
    policy = load_policy(write(tmp_path, EXAMPLE))
    assert policy.actions(user, ip(address), repository) == expected
    assert policy.actions(user, ip(address), repository) == expected  # remembered, same answer


@pytest.mark.parametrize(
    ("user", "address", "expected"),
    [
        (None, "10.0.0.1", False),
        ("bob", "10.0.0.1", False),
        ("ci-bot", "127.0.0.1", False),
        ("alice", "::1", True),
    ],
)
def test_only_admins_list_the_catalog(tmp_path: Path, user: str | None, address: str, expected: bool) -> None:
    assert load_policy(write(tmp_path, EXAMPLE)).may_catalog(user, ip(address)) is expected


def test_push_brings_pull_and_catalog_ignores_repositories(tmp_path: Path) -> None:
    policy = load_policy(
        write(
            tmp_path,
            rules_text(
                'repositories = ["x/*"]\nwho = ["bob"]\nactions = ["push"]\n',
                'repositories = ["nothing-is-called-this"]\nwho = ["authenticated"]\nactions = ["catalog"]\n',
                'repositories = ["gone/*"]\nwho = ["bob"]\nactions = ["delete"]\n',
            ),
        )
    )
    assert policy.actions("bob", ip("192.0.2.1"), "x/y") == WRITE
    assert policy.actions("bob", ip("192.0.2.1"), "gone/y") == {"delete"}  # delete brings nothing
    assert policy.actions(None, ip("192.0.2.1"), "x/y") == set()
    assert policy.actions("carol", ip("192.0.2.1"), "nothing-is-called-this") == set()  # catalog only
    assert policy.may_catalog("carol", ip("192.0.2.1"))
    assert not policy.may_catalog(None, ip("192.0.2.1"))  # "authenticated" needs credentials


def test_anonymous_admits_callers_with_credentials_and_authenticated_any_user(tmp_path: Path) -> None:
    policy = load_policy(
        write(
            tmp_path,
            'users = "htpasswd"\n'
            '[[rule]]\nrepositories = ["pub/*"]\nwho = ["anonymous"]\nactions = ["pull"]\n'
            '[[rule]]\nrepositories = ["in/*"]\nwho = ["authenticated"]\nactions = ["pull"]\n',
        )
    )
    assert policy.actions("someone", ip("192.0.2.1"), "pub/a") == PULL
    assert policy.actions("someone", ip("192.0.2.1"), "in/a") == PULL
    assert policy.actions(None, ip("192.0.2.1"), "in/a") == set()


FROM_POLICY = """\
users = "htpasswd"
[[rule]]
repositories = ["*"]
who = ["anonymous"]
actions = ["pull"]
from = ["fd00::/8", "192.168.1.7", "2001:db8::1", "::ffff:10.0.0.0/104", "172.16.0.0/12"]
"""


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("fd12:3456::1", True),
        ("fe80::1", False),
        ("192.168.1.7", True),  # a bare address is a /32
        ("192.168.1.8", False),
        ("2001:db8::1", True),  # and a /128
        ("2001:db8::2", False),
        ("::ffff:192.168.1.7", True),  # an IPv4-mapped peer is its IPv4 address
        ("10.20.30.40", True),  # an IPv4-mapped network is its IPv4 network
        ("11.0.0.1", False),
        ("172.31.255.255", True),
        ("172.32.0.0", False),
        ("::ffff:172.20.0.1", True),
    ],
)
def test_from_takes_ipv4_and_ipv6(tmp_path: Path, address: str, allowed: bool) -> None:
    policy = load_policy(write(tmp_path, FROM_POLICY))
    assert policy.actions(None, ip(address), "a") == (PULL if allowed else set())


def test_a_relative_users_file_is_relative_to_the_policy_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf, secrets = tmp_path / "conf", tmp_path / "secrets"
    conf.mkdir()
    secrets.mkdir()
    (secrets / "htpasswd").write_text(HTPASSWD)
    (conf / "access.toml").write_text('users = "../secrets/htpasswd"\n')
    monkeypatch.chdir(tmp_path)  # a relative policy path is relative to the working directory
    policy = load_policy(Path("conf/access.toml"))
    assert policy.users_file == tmp_path / "conf" / ".." / "secrets" / "htpasswd"
    assert policy.users_file.is_absolute() and policy.users_file.is_file()
    assert policy.rules == ()  # no rule: everything is refused
    assert policy.actions("alice", ip("127.0.0.1"), "a") == set()
    (conf / "access.toml").write_text(f"users = {json.dumps(str(secrets / 'htpasswd'))}\n")
    assert load_policy(conf / "access.toml").users_file == secrets / "htpasswd"


def test_users_named_in_rules_need_not_exist_yet(tmp_path: Path) -> None:
    policy = load_policy(
        write(
            tmp_path,
            'users = "htpasswd"\n[groups]\nlater = ["nobody-yet"]\n'
            '[[rule]]\nrepositories = ["*"]\nwho = ["@later", "not-yet-either"]\nactions = ["pull"]\n',
        )
    )
    assert policy.actions("nobody-yet", ip("192.0.2.1"), "a") == PULL
    assert policy.groups["later"] == {"nobody-yet"}


def rules_text(*rules: str, groups: str = "") -> str:
    """A policy with the users file, ``groups`` (lines of [groups]) and these rules."""
    head = 'users = "htpasswd"\n' + (f"[groups]\n{groups}" if groups else "")
    return head + "".join(f"\n[[rule]]\n{rule}" for rule in rules)


GOOD = 'repositories = ["*"]\nwho = ["anonymous"]\nactions = ["pull"]\n'

# the file's text, and the error's exact one line
ERRORS = [
    (
        rules_text(GOOD, 'repository = ["team/*"]\nwho = ["bob"]\nactions = ["push"]\n'),
        'access.toml:9: unknown key "repository" in [[rule]] 2 (did you mean "repositories"?)',
    ),
    (
        rules_text('repositories = ["*"]\nwho = ["anonymous"]\nactions = ["pull"]\nform = ["10.0.0.0/8"]\n'),
        'access.toml:7: unknown key "form" in [[rule]] 1 (did you mean "from"?)',
    ),
    (
        rules_text(GOOD + "colour = 1\n"),
        'access.toml:7: unknown key "colour" in [[rule]] 1 (the keys are repositories, who, actions, from)',
    ),
    (
        'users = "htpasswd"\n\n[[rules]]\n' + GOOD,
        'access.toml:3: unknown key "rules" (did you mean "rule"?)',
    ),
    (
        'users = "htpasswd"\n[group]\nci = ["ci-bot"]\n',
        'access.toml:2: unknown key "group" (did you mean "groups"?)',
    ),
    (
        rules_text(
            'repositories = ["*"]\nwho = ["anonymous", "@dev"]\nactions = ["pull"]\n',
            groups='devs = ["dan"]\n',
        ),
        'access.toml:7: unknown group "@dev" in "who" of [[rule]] 1 (did you mean "@devs"?)',
    ),
    (
        rules_text('repositories = ["*"]\nwho = ["@ops"]\nactions = ["pull"]\n'),
        'access.toml:5: unknown group "@ops" in "who" of [[rule]] 1 (there are no groups)',
    ),
    (
        rules_text('repositories = ["*"]\nwho = ["anonymous"]\nactions = ["pul"]\n'),
        'access.toml:6: unknown action "pul" in [[rule]] 1 (did you mean "pull"?)',
    ),
    (
        rules_text('repositories = ["*"]\nwho = ["anonymous"]\nactions = [\n  "pull",\n  "fetch",\n]\n'),
        'access.toml:8: unknown action "fetch" in [[rule]] 1 (the actions are pull, push, delete, catalog)',
    ),
    (
        rules_text(GOOD + 'from = ["10.0.0.0/33"]\n'),
        'access.toml:7: bad address "10.0.0.0/33" in "from" of [[rule]] 1 (a CIDR like 10.0.0.0/8 or fd00::/8)',
    ),
    (
        rules_text(GOOD + 'from = [\n  "::1",\n  "fd00::/7x",\n]\n'),
        'access.toml:9: bad address "fd00::/7x" in "from" of [[rule]] 1 (a CIDR like 10.0.0.0/8 or fd00::/8)',
    ),
    (
        rules_text(GOOD + 'from = ["10.0.0.1/8"]\n'),
        'access.toml:7: "10.0.0.1/8" in "from" of [[rule]] 1 has host bits set (did you mean "10.0.0.0/8"?)',
    ),
    (
        rules_text(GOOD + "from = []\n"),
        'access.toml:7: "from" in [[rule]] 1 is empty (leave it out to allow every address)',
    ),
    (
        rules_text('repositories = ["*"]\nwho = "bob"\nactions = ["pull"]\n'),
        'access.toml:5: "who" in [[rule]] 1 must be a list of strings, not a string: write who = ["bob"]',
    ),
    (
        rules_text('repositories = "team/*"\nwho = ["bob"]\nactions = ["pull"]\n'),
        'access.toml:4: "repositories" in [[rule]] 1 must be a list of strings, not a string: '
        'write repositories = ["team/*"]',
    ),
    (
        rules_text('repositories = ["*"]\nwho = ["bob"]\nactions = [1]\n'),
        'access.toml:6: "actions" in [[rule]] 1 holds a number, not a string',
    ),
    (
        rules_text('repositories = []\nwho = ["bob"]\nactions = ["pull"]\n'),
        'access.toml:4: "repositories" in [[rule]] 1 is empty',
    ),
    (
        rules_text('repositories = ["*"]\nwho = []\nactions = ["pull"]\n'),
        'access.toml:5: "who" in [[rule]] 1 is empty',
    ),
    (
        rules_text('repositories = ["*"]\nwho = ["bob"]\nactions = []\n'),
        'access.toml:6: "actions" in [[rule]] 1 is empty',
    ),
    (
        rules_text(GOOD, 'repositories = ["*"]\nactions = ["pull"]\n'),
        'access.toml:8: [[rule]] 2 has no "who"',
    ),
    (
        rules_text('repositories = [""]\nwho = ["bob"]\nactions = ["pull"]\n'),
        "access.toml:4: empty pattern in [[rule]] 1",
    ),
    (
        rules_text('repositories = ["*"]\nwho = ["a:b"]\nactions = ["pull"]\n'),
        'access.toml:5: "a:b" in "who" of [[rule]] 1 cannot be a user name (htpasswd names have no ":")',
    ),
    (
        'users = "htpasswd"\n[groups]\nci = "ci-bot"\n',
        'access.toml:3: group "ci" in [groups] must be a list of user names, not a string: write ci = ["ci-bot"]',
    ),
    (
        'users = "htpasswd"\n[groups]\nops = ["ann"]\nci = ["bot", "@ops"]\n',
        'access.toml:4: group "ci" in [groups] holds "@ops": groups hold user names, not groups',
    ),
    (
        'users = "htpasswd"\ngroups = ["ci"]\n',
        'access.toml:2: [groups] must be a table of name = ["user", …], not a list',
    ),
    (
        'users = "htpasswd"\n[rule]\n' + GOOD,
        "access.toml:2: rules are [[rule]] tables (an array of tables): write [[rule]], not [rule]",
    ),
    (
        'users = "htpasswd"\nrule = ["pull"]\n',
        "access.toml:2: rule 1 is a string, not a [[rule]] table",
    ),
    (
        'users = ["htpasswd"]\n',
        'access.toml:1: "users" must be a string (the path of an htpasswd file), not a list',
    ),
    (
        '[groups]\nci = ["ci-bot"]\nusers = "htpasswd"\n',
        "access.toml:3: users = … is inside [groups]: put it above the first [table] header",
    ),
    (
        "[[rule]]\n" + GOOD + 'users = "htpasswd"\n',
        "access.toml:5: users = … is inside [[rule]] 1: put it above the first [table] header",
    ),
    (
        "[[rule]]\n" + GOOD,
        'access.toml: no users = "…" (the htpasswd file with the users\' passwords)',
    ),
    (
        'users = "htpasswd"\n\n[[rule]]\nrepositories = ["*"\nwho = ["bob"]\n',
        "access.toml:5: invalid TOML: Unclosed array (column 1)",
    ),
    (
        'users = "htpasswd"\nusers = "other"\n',
        "access.toml:2: invalid TOML: Cannot overwrite a value (column 16)",
    ),
    (
        'users = "htpasswd"\n[[rule]]\nrepositories = [\n  "a",\n',
        "access.toml:4: invalid TOML: Invalid value (at the end of the file)",
    ),
]


@pytest.mark.parametrize(("text", "message"), ERRORS, ids=[m.split(": ", 1)[1][:40] for _, m in ERRORS])
def test_every_error_is_one_line_naming_its_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(write(tmp_path, text))
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)
    expected_line = message.split(":")[1]
    assert caught.value.line == (int(expected_line) if expected_line.isdigit() else None)
    assert caught.value.file == tmp_path / "access.toml"
    assert str(caught.value).endswith(caught.value.reason)


def test_a_missing_users_file_is_named_by_its_resolved_path(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "access.toml"
    path.write_text('# the users\n\nusers = "../missing/htpasswd"\n' + "[[rule]]\n" + GOOD)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    resolved = tmp_path / "conf" / ".." / "missing" / "htpasswd"
    assert str(caught.value) == f"access.toml:3: users file {resolved} does not exist"
    (tmp_path / "missing" / "htpasswd").mkdir(parents=True)
    with pytest.raises(PolicyError, match=r"^access\.toml:3: users file .* is not a file$"):
        load_policy(path)


def test_an_unreadable_or_undecodable_policy_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path / "access.toml")
    assert str(caught.value) == "access.toml: cannot read the policy: No such file or directory"
    (tmp_path / "access.toml").write_bytes(b'users = "htpasswd"\n# caf\xe9\n')
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path / "access.toml")
    assert str(caught.value) == "access.toml:2: not UTF-8 text"


def test_lines_are_found_past_multi_line_strings_and_arrays(tmp_path: Path) -> None:
    """Text that looks like a header or a key inside a multi-line string or array is
    not taken for one."""
    text = (
        'users = "htpasswd"\n'
        "[[rule]]\n"
        'repositories = [\n  "a/*",\n  # [[rule]]\n  "b/*",\n]\n'
        'who = ["anonymous"]\n'
        'actions = ["pull"]\n'
        "\n[[rule]]\n"
        'repositories = ["""\n[[rule]]\nwho = 1\n"""]\n'
        'who = ["anonymous"]\n'
        'actions = ["pull", "pusj"]\n'
    )
    with pytest.raises(PolicyError) as caught:
        load_policy(write(tmp_path, text))
    assert str(caught.value) == 'access.toml:17: unknown action "pusj" in [[rule]] 2 (did you mean "push"?)'


def test_the_remembered_answers_are_bounded_and_stay_right(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, EXAMPLE))
    for i in range(module.CACHE_MAX + 500):
        assert policy.actions("bob", ip("10.0.0.1"), f"team/r{i}") == WRITE
        assert policy.actions("bob", ip("192.0.2.1"), f"team/r{i}") == PULL  # same key, other address
    assert len(policy._cache) <= module.CACHE_MAX


def test_with_a_hundred_rules_the_rules_are_read_once_per_user_and_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-request path is a lookup (a fraction of a microsecond), not a walk of the
    rules (tens of microseconds for a hundred): the walk happens once per (user,
    repository), whatever the address, and a from-rule still decides per address."""
    rules = [
        f'repositories = ["proj{i}/*", "x{i}"]\nwho = ["user{i}", "@g"]\nactions = ["push"]\n'
        for i in range(99)
    ]
    rules.append('repositories = ["*"]\nwho = ["anonymous"]\nactions = ["delete"]\nfrom = ["10.0.0.0/8"]\n')
    policy = load_policy(write(tmp_path, rules_text(*rules, groups='g = ["ci"]\n')))
    assert len(policy.rules) == 100
    walks: list[tuple[str | None, str]] = []
    walk = module.Policy._grant

    def counted(self: module.Policy, user: str | None, repository: str) -> object:
        walks.append((user, repository))
        return walk(self, user, repository)

    monkeypatch.setattr(module.Policy, "_grant", counted)
    for i in range(1000):
        inside = policy.actions("ci", ip(f"10.0.{i // 256}.{i % 256}"), "proj42/app")
        outside = policy.actions("ci", ip(f"192.0.{i // 256}.{i % 256}"), "proj42/app")
        assert inside == ALL and outside == WRITE
    assert policy.actions("user7", ip("::1"), "x7") == WRITE
    assert walks == [("ci", "proj42/app"), ("user7", "x7")]


# --- the compiled check against a direct reading of the rules ----------------------------

USERS = ["alice", "bob", "ci-bot", "carol", "anonymous"]  # a user may even be called that
GROUPS = ["ci", "admins", "devs", "empty"]
ALNUM = string.ascii_lowercase + string.digits
SEPARATORS = [".", "_", "__", "-", "--", "---"]

# Mostly a few letters, so that names and globs meet; any of the grammar's letters too.
alnum = st.text(alphabet=st.one_of(st.sampled_from("ab0"), st.sampled_from(ALNUM)), min_size=1, max_size=4)
component = st.builds(
    lambda first, rest: first + "".join(sep + part for sep, part in rest),
    alnum,
    st.lists(st.tuples(st.sampled_from(SEPARATORS), alnum), max_size=3),
)
names = st.lists(component, min_size=1, max_size=4).map("/".join)


@st.composite
def globs(draw: st.DrawFn) -> str:
    """A glob made from a name: some characters and stretches replaced by glob syntax."""
    name = draw(names)
    out = list(name)
    for _ in range(draw(st.integers(0, 3))):
        if not out:
            break
        at = draw(st.integers(0, len(out) - 1))
        end = draw(st.integers(at, min(len(out), at + 6)))
        out[at:end] = [draw(st.sampled_from(["*", "?", "[a-m]", "[!a]", "[0-9]", "**", "*/*", "/"]))]
    return draw(st.sampled_from(["", "", "*", "team/"])) + "".join(out)


networks_v4 = st.builds(
    lambda a, p: str(ipaddress.ip_network(f"{a}/{p}", strict=False)), st.ip_addresses(v=4), st.integers(0, 32)
)
networks_v6 = st.builds(
    lambda a, p: str(ipaddress.ip_network(f"{a}/{p}", strict=False)),
    st.ip_addresses(v=6),
    st.integers(0, 128),
)
mapped_networks = st.builds(
    lambda a, p: str(ipaddress.ip_network(f"::ffff:{a}/{96 + p}", strict=False)),
    st.ip_addresses(v=4),
    st.integers(0, 32),
)
bare = st.ip_addresses().map(str)
networks = st.one_of(networks_v4, networks_v6, mapped_networks, bare)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, object]:
    groups = {
        g: draw(st.lists(st.sampled_from(USERS), max_size=3)) for g in draw(st.sets(st.sampled_from(GROUPS)))
    }
    who_pool = ["anonymous", "authenticated", *USERS, *(f"@{g}" for g in groups)]
    rules = []
    for _ in range(draw(st.integers(0, 8))):
        rule: dict[str, object] = {
            "repositories": draw(st.lists(globs(), min_size=1, max_size=3)),
            "who": draw(st.lists(st.sampled_from(who_pool), min_size=1, max_size=3)),
            "actions": draw(st.lists(st.sampled_from(module.ACTIONS), min_size=1, max_size=4)),
        }
        if draw(st.booleans()):
            rule["from"] = draw(st.lists(networks, min_size=1, max_size=3))
        rules.append(rule)
    return {"groups": groups, "rule": rules}


def to_toml(document: dict[str, object]) -> str:
    lines = ['users = "htpasswd"', "[groups]"]
    groups = document["groups"]
    assert isinstance(groups, dict)
    lines += [f"{name} = {json.dumps(members)}" for name, members in groups.items()]
    rules = document["rule"]
    assert isinstance(rules, list)
    for rule in rules:
        lines.append("[[rule]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in rule.items()]
    return "\n".join(lines) + "\n"


def plain(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def plain_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    network = ipaddress.ip_network(text)
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def admits(document: dict[str, object], rule: dict[str, object], user: str | None) -> bool:
    groups = document["groups"]
    assert isinstance(groups, dict) and isinstance(rule["who"], list)
    for who in rule["who"]:
        if who == "anonymous":
            return True
        if user is None:
            continue
        if who == "authenticated" or who == user or (who.startswith("@") and user in groups[who[1:]]):
            return True
    return False


def reaches(rule: dict[str, object], address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if "from" not in rule:
        return True
    assert isinstance(rule["from"], list)
    return any(plain(address) in plain_network(text) for text in rule["from"])


def slow_actions(
    document: dict[str, object],
    user: str | None,
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    repository: str,
) -> set[str]:
    """The rules read directly, one by one, every time."""
    granted: set[str] = set()
    rules = document["rule"]
    assert isinstance(rules, list)
    for rule in rules:
        assert isinstance(rule["repositories"], list) and isinstance(rule["actions"], list)
        if not admits(document, rule, user) or not reaches(rule, address):
            continue
        if not any(fnmatch.fnmatchcase(repository, pattern) for pattern in rule["repositories"]):
            continue
        for action in rule["actions"]:
            if action in ("pull", "push", "delete"):
                granted.add(action)
            if action == "push":
                granted.add("pull")
    return granted


def slow_catalog(
    document: dict[str, object], user: str | None, address: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> bool:
    rules = document["rule"]
    assert isinstance(rules, list)
    return any(
        "catalog" in rule["actions"] and admits(document, rule, user) and reaches(rule, address)
        for rule in rules
    )


@st.composite
def cases(draw: st.DrawFn) -> tuple[dict[str, object], list[tuple[str | None, object, str]]]:
    document = draw(documents())
    rules = document["rule"]
    assert isinstance(rules, list)
    # addresses: anywhere, inside the rules' networks, and IPv4 ones seen as IPv4-mapped IPv6
    inside = [
        st.ip_addresses(network=ipaddress.ip_network(text)) for rule in rules for text in rule.get("from", [])
    ]
    addresses = st.one_of(st.ip_addresses(), *inside)
    addresses = st.one_of(
        addresses, addresses.map(lambda a: ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a)
    )
    # repositories: from the whole grammar, and made to fit the rules' globs
    fitted = [
        st.just(pattern).map(lambda p: p.replace("**", "*").replace("*", "a/b").replace("?", "0"))
        for rule in rules
        for pattern in rule["repositories"]
    ]
    repositories = st.one_of(names, *fitted)
    users = st.one_of(st.none(), st.sampled_from([*USERS, "stranger"]))
    queries = draw(st.lists(st.tuples(users, addresses, repositories), min_size=1, max_size=12))
    # the same (user, repository) again from other addresses: the remembered part is shared
    again = [(user, draw(addresses), repository) for user, _, repository in queries]
    return document, queries + again


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(cases())
def test_the_compiled_check_agrees_with_reading_the_rules(
    tmp_path: Path, case: tuple[dict[str, object], list[tuple[str | None, object, str]]]
) -> None:
    document, queries = case
    policy = load_policy(write(tmp_path, to_toml(document)))
    for user, address, repository in queries:
        assert isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address)
        assert policy.actions(user, address, repository) == slow_actions(
            document, user, address, repository
        ), (user, address, repository)
        assert policy.may_catalog(user, address) == slow_catalog(document, user, address)
