"""The watcher and the reload path on their own: debounce, validation, symlinks."""

from __future__ import annotations

import asyncio
import logging
import datetime as dt
import os
import time
from pathlib import Path

import pytest
import trustme

from certproxy.certs import FileStore
from certproxy.certs.watcher import StoreWatcher
from certproxy.service.health import HealthState
from certproxy.service.reload import Reloader
from certproxy.proxy.tls import CertificateSet, TLSState
from support.pairs import issue, replace_atomic, replace_certbot, replace_in_place


async def _reloader(root: Path, ca: trustme.CA, **kw: object) -> tuple[Reloader, TLSState, HealthState]:
    def set_up() -> tuple[FileStore, TLSState]:  # the test's, off the loop (certproxy loads in a thread too)
        replace_atomic(root / "live" / "localhost", issue(ca, "localhost"))
        store = FileStore(root)
        store.ensure_layout()
        inv = store.inventory(("localhost",))
        return store, TLSState(CertificateSet(inv.primary, inv.pairs))

    store, tls = await asyncio.to_thread(set_up)
    health = HealthState()
    return Reloader(store, ("localhost",), tls, health, **kw), tls, health  # type: ignore[arg-type]


async def test_a_burst_of_events_is_one_reload(no_blocking: None, tmp_path: Path, ca: trustme.CA) -> None:
    debounce = 0.3
    reloader, tls, _ = await _reloader(tmp_path, ca, poll_interval=0, debounce=debounce, max_delay=10.0)
    calls: list[str] = []

    async def fake(reason: str, fresh: bool = False) -> bool:
        calls.append(reason)
        return True

    async def until(count: int) -> None:
        deadline = time.monotonic() + 20
        while len(calls) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    reloader.reload = fake  # type: ignore[method-assign]
    await reloader.start(watch=False)
    try:
        for _ in range(50):  # a burst: events one loop turn apart, however busy the machine
            reloader.notify()
            await asyncio.sleep(0)
        await until(1)
        await asyncio.sleep(2 * debounce)  # quiet: nothing more comes
        assert calls == ["store changed"]
        reloader.notify()
        await until(2)
        assert len(calls) == 2
    finally:
        await reloader.stop()


async def test_a_steady_stream_of_events_still_reloads(no_blocking: None, tmp_path: Path, ca: trustme.CA) -> None:
    reloader, _, _ = await _reloader(tmp_path, ca, poll_interval=0, debounce=0.1, max_delay=0.3)
    calls: list[float] = []

    async def fake(reason: str, fresh: bool = False) -> bool:
        calls.append(time.monotonic())
        return True

    reloader.reload = fake  # type: ignore[method-assign]
    await reloader.start(watch=False)
    try:
        end = time.monotonic() + 1.2
        while time.monotonic() < end:
            reloader.notify()
            await asyncio.sleep(0.05)
        assert len(calls) >= 2  # never starved by a write that never stops
    finally:
        await reloader.stop()


@pytest.mark.parametrize("bad, reason", [
    (lambda f, ca: (f / "privkey.pem").write_bytes(issue(ca, "x").key), "does not match"),
    (lambda f, ca: (f / "fullchain.pem").write_bytes((f / "fullchain.pem").read_bytes()[:300]),
     "not a PEM certificate chain"),
    (lambda f, ca: (f / "privkey.pem").unlink(), "missing"),
    (lambda f, ca: replace_atomic(f, issue(ca, "localhost", not_before=dt.datetime(2020, 1, 1),
                                           not_after=dt.datetime(2020, 2, 1))), "expired"),
])
async def test_a_bad_pair_keeps_the_old_one_in_service(no_blocking: None, bad, reason: str, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                        ca: trustme.CA) -> None:
    reloader, tls, health = await _reloader(tmp_path, ca, poll_interval=0)
    served = tls.current.primary.serial
    folder = tmp_path / "live" / "localhost"
    await asyncio.to_thread(bad, folder, ca)
    assert await reloader.reload("test") is False
    assert tls.current.primary.serial == served and tls.current.primary.kind == "live"
    assert health.last_reload_error and reason in health.last_reload_error
    assert "kept serving serial " + served in health.last_reload_error
    good = await asyncio.to_thread(issue, ca, "localhost")
    await asyncio.to_thread(replace_atomic, folder, good)
    assert await reloader.reload("test") is True
    assert tls.current.primary.serial == good.serial
    assert health.last_reload_error is None


async def test_removed_names_go_unless_they_are_the_last(no_blocking: None, tmp_path: Path, ca: trustme.CA) -> None:
    reloader, tls, _ = await _reloader(tmp_path, ca, poll_interval=0)
    await asyncio.to_thread(lambda: replace_atomic(tmp_path / "live" / "other.test", issue(ca, "other.test")))
    await reloader.reload("test")
    assert {p.name for p in tls.current.pairs} == {"localhost", "other.test"}
    for f in (tmp_path / "live" / "other.test").iterdir():
        f.unlink()
    (tmp_path / "live" / "other.test").rmdir()
    await reloader.reload("test")
    assert {p.name for p in tls.current.pairs} == {"localhost"}
    primary = tls.current.primary.serial
    for f in (tmp_path / "live" / "localhost").iterdir():
        f.unlink()
    await reloader.reload("test")
    assert tls.current.primary.serial == primary and tls.current.primary.kind == "live"


async def test_unchanged_pairs_keep_their_context_and_load_time(no_blocking: None, tmp_path: Path, ca: trustme.CA) -> None:
    reloader, tls, _ = await _reloader(tmp_path, ca, poll_interval=0)
    before = tls.current.primary
    ctx = tls.current.select(None)
    await asyncio.to_thread(lambda: replace_atomic(tmp_path / "live" / "other.test", issue(ca, "other.test")))
    assert await reloader.reload("test") is True
    assert tls.current.primary is before and tls.current.select(None) is ctx
    assert await reloader.reload("test") is False
    assert await reloader.reload("SIGHUP", fresh=True) is True
    assert tls.current.primary is not before and tls.current.primary.serial == before.serial
    assert tls.current.primary.loaded_at > before.loaded_at


class Collect:
    """Paths the watcher reported, from its thread."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def __call__(self, path: str) -> None:
        self.paths.append(path)

    def settle(self) -> None:
        time.sleep(0.2)  # let events of the previous step arrive
        self.paths.clear()

    def saw(self, fragment: str, timeout: float = 20) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(fragment in p for p in list(self.paths)):
                return True
            time.sleep(0.02)
        return False


def test_watcher_sees_every_way_a_pair_changes_and_not_reads(tmp_path: Path, ca: trustme.CA) -> None:
    store = FileStore(tmp_path)
    store.ensure_layout()
    folder = tmp_path / "live" / "localhost"
    replace_atomic(folder, issue(ca, "localhost"))
    seen = Collect()
    watcher = StoreWatcher(tmp_path, seen)
    watcher.start()
    try:
        seen.settle()
        (folder / "fullchain.pem").read_bytes()  # reading is not a change
        (tmp_path / "challenges" / "tok").write_text("x")  # not a certificate
        time.sleep(0.5)
        assert seen.paths == []
        for step, fragment in (
            (lambda: replace_atomic(folder, issue(ca, "localhost")), "live/localhost/"),
            (lambda: replace_in_place(folder, issue(ca, "localhost")), "live/localhost/privkey.pem"),
            (lambda: replace_certbot(tmp_path, "localhost", issue(ca, "localhost"), 1), "live/localhost/"),
            (lambda: replace_certbot(tmp_path, "localhost", issue(ca, "localhost"), 2),  # symlink flip
             "live/localhost/"),
            (lambda: replace_atomic(tmp_path / "live" / "new.test", issue(ca, "new.test")), "live/new.test"),
            (lambda: (folder / "privkey.pem").unlink(), "live/localhost/privkey.pem"),
        ):
            seen.settle()
            step()
            assert seen.saw(fragment), (fragment, seen.paths)
    finally:
        watcher.stop()


async def test_reloader_with_the_real_watcher_follows_a_certbot_flip(no_blocking: None, tmp_path: Path, ca: trustme.CA) -> None:
    reloader, tls, _ = await _reloader(tmp_path, ca, poll_interval=0)
    await reloader.start()
    try:
        for version in (1, 2, 3):
            # the test's own work in a thread: the guard is for certproxy's code, and
            # issuing and writing a pair can take 100 ms on a loaded machine
            new = await asyncio.to_thread(issue, ca, "localhost")
            await asyncio.to_thread(replace_certbot, tmp_path, "localhost", new, version)
            deadline = time.monotonic() + 20
            while tls.current.primary.serial != new.serial and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert tls.current.primary.serial == new.serial
    finally:
        await reloader.stop()


async def test_poll_notices_changes_no_event_reported(no_blocking: None, tmp_path: Path, ca: trustme.CA) -> None:
    outside = tmp_path / "outside"
    root = tmp_path / "store"

    def set_up() -> tuple[FileStore, TLSState]:  # the test's, off the loop
        outside.mkdir()
        first = issue(ca, "localhost")
        (outside / "c.pem").write_bytes(first.chain)
        (outside / "k.pem").write_bytes(first.key)
        folder = root / "live" / "localhost"
        folder.mkdir(parents=True)
        (folder / "fullchain.pem").symlink_to(outside / "c.pem")
        (folder / "privkey.pem").symlink_to(outside / "k.pem")
        store = FileStore(root)
        store.ensure_layout()
        inv = store.inventory(("localhost",))
        return store, TLSState(CertificateSet(inv.primary, inv.pairs))

    store, tls = await asyncio.to_thread(set_up)
    reloader = Reloader(store, ("localhost",), tls, HealthState(), poll_interval=0.2)
    await reloader.start()
    try:
        new = await asyncio.to_thread(issue, ca, "localhost")
        for name, data in (("k.pem", new.key), ("c.pem", new.chain)):  # outside the watched tree
            (outside / f"{name}.tmp").write_bytes(data)
            os.replace(outside / f"{name}.tmp", outside / name)
        deadline = time.monotonic() + 20
        while tls.current.primary.serial != new.serial and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert tls.current.primary.serial == new.serial
    finally:
        await reloader.stop()


async def test_a_pair_written_between_the_load_and_the_watch_is_served(
        no_blocking: None, tmp_path: Path, ca: trustme.CA) -> None:
    reloader, tls, _ = await _reloader(tmp_path, ca, poll_interval=3600)
    baseline = await asyncio.to_thread(reloader.store.fingerprint)  # taken before the load
    new = await asyncio.to_thread(issue, ca, "localhost")
    await asyncio.to_thread(replace_atomic, tmp_path / "live" / "localhost", new)  # before watching begins
    await reloader.start(watch=False, baseline=baseline)
    try:
        deadline = time.monotonic() + 20
        while tls.current.primary.serial != new.serial and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert tls.current.primary.serial == new.serial
    finally:
        await reloader.stop()


async def test_a_pair_still_being_written_is_not_an_error_unless_it_stays_so(
        no_blocking: None, tmp_path: Path, ca: trustme.CA, caplog: pytest.LogCaptureFixture) -> None:
    reloader, tls, _ = await _reloader(tmp_path, ca, poll_interval=0)
    await reloader.start(watch=False)
    try:
        half = tmp_path / "live" / "half.example.com"
        half.mkdir()
        (half / "fullchain.pem").write_bytes((await asyncio.to_thread(issue, ca, "half.example.com")).chain)
        caplog.clear()
        caplog.set_level(logging.INFO, logger="certproxy.reload")
        await reloader.reload("test")
        assert "still being written" in caplog.text and "ERROR" not in caplog.text
        await reloader.reload("test")  # still half: now it is an error
        assert any(r.levelname == "ERROR" and "half.example.com" in r.getMessage() for r in caplog.records)
    finally:
        await reloader.stop()
