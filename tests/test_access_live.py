"""The access policy over time, against the real registry behind certproxy: failed
logins throttled per address (and a pull's latency during a flood of wrong passwords),
the policy and its htpasswd edited while pulls run, a broken policy at start-up, and
replicas sharing a store. The throttling tests use addresses of their own (127.0.0.3-5).
"""

from __future__ import annotations

import pytest

from support.access_site import *  # noqa: F403 - the site, its clients and helpers
from support.access_site import registry_call  # noqa: F401

pytestmark = pytest.mark.integration


# --- 5. failed logins ------------------------------------------------------------------


async def test_wrong_passwords_are_throttled_per_address(site: Site) -> None:
    seed(site.registry, "team/throttle")
    token_path = f"/token?service={site.host}&scope=repository:team/throttle:pull"
    statuses = []
    async with Conn(site, "127.0.0.3") as conn:
        for _ in range(11):
            resp = await conn.send("GET", token_path, {"Authorization": basic("bob", "guess")})
            statuses.append(resp.status)
        assert statuses == [401] * 10 + [429]
        assert error_code(resp) == "TOOMANYREQUESTS"
        retry = int(resp.header("Retry-After")[0])
        assert 1 <= retry <= 60
        # the address's logins wait, good ones too, at the token endpoint and in Basic
        assert (await conn.send("GET", token_path, {"Authorization": basic("bob")})).status == 429
        resp = await conn.send("GET", manifest("team/throttle"), {"Authorization": basic("bob"), **ACCEPT})
        assert resp.status == 429
        # anonymous callers from there are not logging in: served
        assert (await conn.send("GET", manifest("team/throttle"), ACCEPT)).status == 200
    # another address is unaffected: a wrong password is a 401, the right one a token
    async with Conn(site, "127.0.0.4") as conn:
        assert (await conn.send("GET", token_path, {"Authorization": basic("bob", "guess")})).status == 401
        assert (await conn.send("GET", token_path, {"Authorization": basic("bob")})).status == 200
    log = logged(site.cp, "throttled logins from 127.0.0.3")
    assert log.count("throttled logins from 127.0.0.3") == 1  # once per window
    assert log.count("failed login from 127.0.0.3: user 'bob'") == 10
    assert "guess" not in log


async def timed_pulls(conn: Conn, target: str, headers: dict[str, str], count: int,
                      every: float) -> list[float]:
    """``count`` GETs, one each ``every`` seconds; their latencies in milliseconds."""
    times = []
    start = time.monotonic()
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i * every - time.monotonic()))
        t0 = time.perf_counter()
        resp = await conn.send("GET", target, headers)
        times.append((time.perf_counter() - t0) * 1000)
        assert resp.status == 200, resp.body
    return times


def figures(times: list[float]) -> str:
    p95 = statistics.quantiles(times, n=20)[-1]
    return f"median {statistics.median(times):.1f} ms, p95 {p95:.1f} ms"


async def test_pull_latency_while_another_address_floods_wrong_passwords(
        site: Site, measure: Callable[[str, str], None]) -> None:
    seed(site.registry, "team/latency")
    token = await get_token(site, ["repository:team/latency:pull"], "bob")
    headers = {**bearer(token), **ACCEPT}
    target = manifest("team/latency")
    flood_statuses: list[int] = []
    stop = asyncio.Event()

    async def flood() -> None:  # 50 wrong passwords a second from 127.0.0.5
        wrong = {"Authorization": basic("bob", "brute-force")}
        path = f"/token?service={site.host}&scope=repository:team/latency:pull,push"
        start = time.monotonic()
        async with Conn(site, "127.0.0.5") as conn:
            i = 0
            while not stop.is_set():
                await asyncio.sleep(max(0.0, start + i * 0.02 - time.monotonic()))
                flood_statuses.append((await conn.send("GET", path, wrong)).status)
                i += 1

    count, every = 200, 0.01
    async with Conn(site) as conn:
        await timed_pulls(conn, target, headers, 20, every)  # warm
        idle = await timed_pulls(conn, target, headers, count, every)
        flooding = asyncio.create_task(flood())
        await asyncio.sleep(0.5)
        try:
            busy = await timed_pulls(conn, target, headers, count, every)
        finally:
            stop.set()
            await asyncio.wait_for(flooding, 15)
    assert flood_statuses[:10] == [401] * 10 and set(flood_statuses[10:]) == {429}
    rate = len(flood_statuses) / (0.5 + count * every)
    measure("authenticated manifest GET (token, keep-alive), idle",
            f"{figures(idle)} over {count}")
    measure("authenticated manifest GET while another address sends 50 wrong passwords/s",
            f"{figures(busy)} over {count} (flood: {len(flood_statuses)} logins at {rate:.0f}/s, "
            f"{flood_statuses.count(401)} x 401 then {flood_statuses.count(429)} x 429)")
    assert statistics.median(busy) < 1000  # generous: the machine is shared


# --- 6. editing the policy while pulls run ------------------------------------------------

LIVE_POLICY = """\
users = "htpasswd"

[[rule]]
repositories = ["team/*"]
who = ["anonymous"]
actions = ["pull"]

[[rule]]
repositories = ["extra/*"]
who = ["bob"]
actions = ["pull"]
"""
WITHOUT_BOB = LIVE_POLICY.split("\n[[rule]]\nrepositories = [\"extra/*\"]")[0]
BROKEN = LIVE_POLICY.replace('who = ["bob"]', 'who = ["@pullers"]')  # line 10: no such group


@dataclass
class Loop:
    """Pulls over one keep-alive connection until told to stop: (time, status) of each."""

    name: str
    target: str
    headers: dict[str, str]
    seen: list[tuple[float, int]] = field(default_factory=list)

    async def run(self, site: Site, stop: asyncio.Event) -> None:
        async with Conn(site) as conn:  # one connection: any drop fails the loop
            while not stop.is_set():
                resp = await conn.send("GET", self.target, {**self.headers, **ACCEPT})
                assert resp.header("Connection") != ["close"], resp.head
                self.seen.append((time.monotonic(), resp.status))
                await asyncio.sleep(0.01)

    def since(self, t: float) -> list[int]:
        return [status for when, status in self.seen if when > t]


async def until_status(loops: list[Loop], status: int, since: float, timeout: float = 5) -> float:
    """Seconds from ``since`` until every loop has answered ``status`` (the first such answer
    of the slowest loop); fails past ``timeout``."""
    deadline = since + timeout
    while time.monotonic() < deadline:
        if all(loop.since(since) and loop.since(since)[-1] == status for loop in loops):
            return max(next(t for t, s in loop.seen if t > since and s == status) for loop in loops) - since
        await asyncio.sleep(0.02)
    recent = {loop.name: loop.since(since)[-5:] for loop in loops}
    raise AssertionError(f"not {status} within {timeout} s: {recent}")


def changed_once(statuses: list[int], before: int, after: int) -> bool:
    """``before`` for a while, then ``after`` for good: no flapping."""
    turn = statuses.index(after) if after in statuses else len(statuses)
    return set(statuses[:turn]) <= {before} and set(statuses[turn:]) <= {after}


async def test_policy_edits_under_load_take_effect_without_dropping_a_connection(
        site: Site, tmp_path: Path, ca: trustme.CA, ca_dir: Path,
        measure: Callable[[str, str], None]) -> None:
    seed(site.registry, "team/live")
    seed(site.registry, "extra/live")
    live = await asyncio.to_thread(start_site, tmp_path / "live", ca, ca_dir, LIVE_POLICY, site.registry)
    try:
        token = await get_token(live, ["repository:extra/live:pull"], "bob")
        public = Loop("anonymous team/live", manifest("team/live"), {})
        basic_loop = Loop("bob Basic extra/live", manifest("extra/live"), {"Authorization": basic("bob")})
        token_loop = Loop("bob token extra/live", manifest("extra/live"), bearer(token))
        bobs = [basic_loop, token_loop]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(lp.run(live, stop)) for lp in (public, *bobs)]
        try:
            await until_status([public, *bobs], 200, time.monotonic())
            # 1. bob's grant taken away by a rename over the file
            t_rename = time.monotonic()
            (live.root / "access.new").write_text(WITHOUT_BOB)
            os.replace(live.root / "access.new", live.policy)
            rename_s = await until_status(bobs, 403, t_rename)
            # 2. given back by an edit in place
            t_edit = time.monotonic()
            live.policy.write_text(LIVE_POLICY)
            edit_s = await until_status(bobs, 200, t_edit)
            # 3. a broken edit in place: the last good policy stays
            t_broken = time.monotonic()
            live.policy.write_text(BROKEN)
            await asyncio.to_thread(logged, live.cp, r"access\.toml:10: unknown group")
            await asyncio.sleep(1.5)  # three more looks at the file
            # 4. the file gone for a while: still the last good policy, said once
            live.policy.unlink()
            await asyncio.to_thread(logged, live.cp, r"access\.toml: No such file or directory")
            await asyncio.sleep(1.5)
            live.policy.write_text(LIVE_POLICY)  # back, and good again
            await asyncio.to_thread(wait_for, lambda: live.cp.output().count("access.toml reloaded") == 3,
                                    5, "the policy back")
        finally:
            stop.set()
            done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
        errors = [repr(r) for r in done if r is not None]
        assert not errors, errors  # no request failed, no connection dropped
        assert public.seen and set(public.since(0)) == {200}
        for lp in bobs:
            before_edit = [s for when, s in lp.seen if when <= t_edit]
            assert changed_once(before_edit, 200, 403), (lp.name, before_edit)
            after_edit = [s for when, s in lp.seen if when > t_edit]
            assert changed_once(after_edit, 403, 200), (lp.name, after_edit)
            assert set(lp.since(t_broken)) == {200}
        assert rename_s < 1.5 and edit_s < 1.5, (rename_s, edit_s)
        log = live.cp.output()
        problem = [line for line in log.splitlines() if "access.toml:10:" in line]
        assert len(problem) == 1, problem  # said once
        assert problem[0].endswith('access.toml:10: unknown group "@pullers" in "who" of [[rule]] 2 '
                                   '(there are no groups); keeping the last good policy'), problem
        assert log.count("access.toml reloaded") == 3
        gone = [line for line in log.splitlines() if "No such file or directory" in line]
        assert len(gone) == 1 and gone[0].endswith("keeping the last good policy"), gone
        measure("policy edit to effect under load (rename / in place)", f"{rename_s:.2f} s / {edit_s:.2f} s")
    finally:
        stop_process(live.cp.proc)


async def test_a_changed_password_takes_effect_without_a_restart(site: Site, tmp_path: Path, ca: trustme.CA,
                                                                 ca_dir: Path) -> None:
    seed(site.registry, "extra/pw")
    live = await asyncio.to_thread(start_site, tmp_path / "pw", ca, ca_dir, LIVE_POLICY, site.registry)
    try:
        target = manifest("extra/pw")
        async with Conn(live) as conn:
            assert (await conn.send("GET", target, {"Authorization": basic("bob"), **ACCEPT})).status == 200
            users = live.root / "htpasswd"
            lines = [ln for ln in users.read_text().splitlines() if not ln.startswith("bob:")]
            lines.append(make_entry("bob", "new-pw", cost=8))
            (live.root / "htpasswd.new").write_text("\n".join(lines) + "\n")
            t0 = time.monotonic()
            os.replace(live.root / "htpasswd.new", users)
            while True:  # bounded: one failed login at most, the throttle stays far
                resp = await conn.send("GET", target, {"Authorization": basic("bob"), **ACCEPT})
                if resp.status != 200 or time.monotonic() - t0 > 5:
                    break
                await asyncio.sleep(0.1)
            assert resp.status == 401 and time.monotonic() - t0 < 2.5
            resp = await conn.send("GET", target, {"Authorization": basic("bob", "new-pw"), **ACCEPT})
            assert resp.status == 200
    finally:
        stop_process(live.cp.proc)


# --- 7. a broken policy at start-up ------------------------------------------------------

BROKEN_AT_START = [
    ("unknown key", POLICY.replace('repositories = ["private/*"]', 'repository = ["private/*"]'),
     'repository = ["private/*"]',
     'unknown key "repository" in [[rule]] 4 (did you mean "repositories"?)'),
    ("unknown group", POLICY.replace('who = ["@ci", "bob"]', 'who = ["@cl", "bob"]'), 'who = ["@cl", "bob"]',
     'unknown group "@cl" in "who" of [[rule]] 2 (did you mean "@ci"?)'),
    ("bad CIDR", POLICY.replace('"10.0.0.0/8"', '"10.0.0/8"'), '"10.0.0/8"',
     'bad address "10.0.0/8" in "from" of [[rule]] 2 (a CIDR like 10.0.0.0/8 or fd00::/8)'),
    ("host bits", POLICY.replace('"10.0.0.0/8"', '"10.1.2.3/8"'), '"10.1.2.3/8"',
     '"10.1.2.3/8" in "from" of [[rule]] 2 has host bits set (did you mean "10.0.0.0/8"?)'),
    ("missing users file", POLICY.replace('users = "htpasswd"', 'users = "no-such-htpasswd"'),
     'users = "no-such-htpasswd"', "users file {root}/no-such-htpasswd does not exist"),
]


@pytest.mark.parametrize(("text", "culprit", "reason"), [case[1:] for case in BROKEN_AT_START],
                         ids=[case[0] for case in BROKEN_AT_START])
def test_a_broken_policy_stops_start_up_with_one_line(text: str, culprit: str, reason: str, tmp_path: Path,
                                                      store: Path) -> None:
    root = tmp_path / "broken"
    root.mkdir()
    write_users(root / "htpasswd")
    (root / "access.toml").write_text(text)
    line = next(n for n, ln in enumerate(text.splitlines(), start=1) if culprit in ln)
    port = free_port()
    cp = start_certproxy(tmp_path, {port: "http://127.0.0.1:9"}, store, wait=False, extra_env={
        "CERTPROXY_ACCESS": str(root / "access.toml"), "CERTPROXY_ACCESS_PORTS": str(port)})
    try:
        assert cp.proc.wait(30) == 2
    finally:
        stop_process(cp.proc)
    out = cp.output()
    expected = f"certproxy: CERTPROXY_ACCESS: access.toml:{line}: {reason.format(root=root)}"
    named = [ln for ln in out.splitlines() if "access.toml" in ln or "ERROR" in ln or "Traceback" in ln]
    assert named == [expected], out
    assert "listening on" not in out


# --- 8. replicas sharing a store -----------------------------------------------------------


async def test_replicas_sharing_a_store_accept_each_others_tokens(site: Site, tmp_path: Path, ca: trustme.CA,
                                                                  ca_dir: Path) -> None:
    seed(site.registry, "team/replicated")
    store = tmp_path / "store"
    write_live(store, "localhost", ca, "localhost", "127.0.0.1")
    a = await asyncio.to_thread(start_site, tmp_path / "a", ca, ca_dir, POLICY, site.registry, store)
    try:
        b = await asyncio.to_thread(start_site, tmp_path / "b", ca, ca_dir, POLICY, site.registry, store)
        try:
            scopes = ["repository:team/replicated:pull,push"]
            target = manifest("team/replicated")
            # replicas behind one name: the client's Host is the same whichever answers
            from_a = await get_token(a, scopes, "bob")
            resp = await call(b, "GET", target, {**bearer(from_a), **ACCEPT}, host=a.host)
            assert resp.status == 200, resp.body
            resp = await call(b, "POST", "/v2/team/replicated/blobs/uploads/", bearer(from_a), host=a.host)
            assert resp.status == 202, resp.body
            from_b = await get_token(b, scopes, "bob")
            resp = await call(a, "GET", target, {**bearer(from_b), **ACCEPT}, host=b.host)
            assert resp.status == 200, resp.body
            # a token is for the service it was asked for
            resp = await call(b, "GET", target, {**bearer(from_a), **ACCEPT})
            assert resp.status == 401 and 'error="invalid_token"' in resp.header("WWW-Authenticate")[0]
            # a forged one is refused and is no failed login
            forged = from_a[:-4] + ("AAAA" if not from_a.endswith("AAAA") else "BBBB")
            resp = await call(b, "GET", target, {**bearer(forged), **ACCEPT}, host=a.host)
            assert resp.status == 401 and 'error="invalid_token"' in resp.header("WWW-Authenticate")[0]
            # a key no replica made: refused after one reread of the store's keys
            unknown = "0123456789abcdef" + from_a[16:]
            t0 = time.monotonic()
            resp = await call(b, "GET", target, {**bearer(unknown), **ACCEPT}, host=a.host)
            assert resp.status == 401 and 'error="invalid_token"' in resp.header("WWW-Authenticate")[0]
            assert time.monotonic() - t0 < 5
            assert "failed login" not in b.cp.output()
        finally:
            stop_process(b.cp.proc)
    finally:
        stop_process(a.cp.proc)
    keys = list((store / "tokens").iterdir())
    assert keys and all(k.stat().st_mode & 0o077 == 0 for k in keys)
