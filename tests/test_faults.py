"""Faults of the CA and of the store. Whatever fails, the certificate in service
keeps serving, the store never holds a half-written pair, and the error and
the next attempt are visible."""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import pytest
import trustme
from aiohttp import web

from certproxy.acme_client import AcmeIssuer, AcmeSettings
from certproxy.acme_client.manager import CertManager
from certproxy.certs import FileStore, StoreError
from support.apps import serve_app
from support.pairs import issue
from support.procs import CertproxyProcess, free_port, wait_for
from test_acme_unit import FakeIssuer

Factory = Callable[..., CertproxyProcess]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """A small tmpfs (real ENOSPC, real read-only remounts), unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size_kib: int) -> Path:
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(point)],
                       check=True, timeout=30)
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], check=False, timeout=30)


def remount_ro(point: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True, timeout=30)


def fill(folder: Path) -> None:
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 1024)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _store_with_pair(root: Path, ca: trustme.CA, directory: str = "https://other.test/dir") -> FileStore:
    store = FileStore(root)
    store.ensure_layout()
    pair = issue(ca, "reg.example.com")
    store.write_live("reg.example.com", pair.chain, pair.key, {"directory": directory})
    return store


# -- store faults ---------------------------------------------------------------
async def test_disk_full_while_writing_keeps_the_old_pair_and_no_partial_files(no_blocking: None, 
        tmpfs: Callable[[int], Path], ca: trustme.CA) -> None:
    root = tmpfs(256)
    store = await asyncio.to_thread(_store_with_pair, root, ca)  # the test's set-up, off the loop
    live = root / "live" / "reg.example.com"
    before = snapshot(live)
    await asyncio.to_thread(fill, root)
    new = await asyncio.to_thread(issue, ca, "reg.example.com")
    with pytest.raises(StoreError, match="disk full"):
        await asyncio.to_thread(store.write_live, "reg.example.com", new.chain, new.key)
    assert snapshot(live) == before  # untouched, and no temporary files left behind
    # The manager reports it, plans a retry, and succeeds once there is room.
    settings = AcmeSettings(directory="https://ca.test/dir", domains=("reg.example.com",), retry_min=1)
    fake = FakeIssuer(ca)
    manager = CertManager(store, settings, fake, jitter=lambda: 0.5)  # type: ignore[arg-type]
    await manager.maintain()
    assert "disk full" in manager.status.last_error and manager.status.next_attempt
    assert snapshot(live) == before
    (root / "filler").unlink()
    await manager.maintain(force=True)
    assert manager.status.last_error is None
    assert store.live_meta("reg.example.com")["directory"] == "https://ca.test/dir"


def test_read_only_store_fails_writes_clearly_and_still_serves(
        tmpfs: Callable[[int], Path], ca: trustme.CA, certproxy_factory: Factory) -> None:
    root = tmpfs(256)
    store = _store_with_pair(root, ca)
    live = root / "live" / "reg.example.com"
    before = snapshot(live)
    remount_ro(root)
    new = issue(ca, "reg.example.com")
    with pytest.raises(StoreError, match="Read-only file system"):
        store.write_live("reg.example.com", new.chain, new.key)
    assert snapshot(live) == before
    # A read-only store holding a pair is served (certificates managed elsewhere).
    port = free_port()
    cp = certproxy_factory({port: "http://127.0.0.1:9"}, root,
                           extra_env={"CERTPROXY_DOMAINS": "reg.example.com", "CERTPROXY_ACME": "off"})
    with urllib.request.urlopen(cp.healthz, timeout=10) as r:
        health = json.load(r)
    assert health["certificates"][0]["kind"] == "live"
    assert "read-only" in cp.output()


def test_store_missing_at_start_is_created_and_an_unusable_one_stops_start_up(
        certproxy_factory: Factory, tmp_path: Path, tmpfs: Callable[[int], Path]) -> None:
    missing = tmp_path / "not" / "there" / "yet"
    certproxy_factory({free_port(): "http://127.0.0.1:9"}, missing)
    assert (missing / "bootstrap" / "localhost" / "privkey.pem").exists()
    empty_ro = tmpfs(64)
    remount_ro(empty_ro)
    env = {"PATH": os.environ["PATH"], "CERTPROXY_STORE": str(empty_ro / "store"),
           "CERTPROXY_HTTP_PORT": "off", "CERTPROXY_ROUTES": f"{free_port()}=http://127.0.0.1:9",
           "CERTPROXY_BIND": "127.0.0.1"}
    proc = subprocess.run([sys.executable, "-m", "certproxy", "serve"], env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2
    assert "CERTPROXY_STORE" in proc.stderr and "Read-only file system" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_key_readable_by_others_is_reported(certproxy_factory: Factory, store: Path) -> None:
    (store / "live" / "localhost" / "privkey.pem").chmod(0o644)
    cp = certproxy_factory({free_port(): "http://127.0.0.1:9"}, store)
    assert cp.wait_output("has mode 0644; it should be 0600")


# -- CA faults ------------------------------------------------------------------
class BrokenCA:
    """An ACME directory that fails in a chosen way."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.runner: web.AppRunner | None = None
        self.released = asyncio.Event()

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/dir", self.directory)
        self.runner, base = await serve_app(app)
        return base + "/dir"

    async def directory(self, request: web.Request) -> web.Response:
        if self.mode == "slow":  # answers only when stopped: past any client's network timeout
            await self.released.wait()
        return web.json_response({"type": "urn:ietf:params:acme:error:serverInternal",
                                  "detail": "the database is on fire"}, status=500,
                                 content_type="application/problem+json")

    async def stop(self) -> None:
        self.released.set()
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.mark.parametrize("mode, expected", [
    ("error500", "urn:ietf:params:acme:error:serverInternal: the database is on fire"),
    ("slow", "cannot reach the ACME server"),
])
async def test_ca_failures_leave_the_served_pair_alone(no_blocking: None, mode: str, expected: str, tmp_path: Path,
                                                       ca: trustme.CA) -> None:
    broken = BrokenCA(mode)
    directory = await broken.start()
    try:
        store = await asyncio.to_thread(_store_with_pair, tmp_path, ca)
        live = tmp_path / "live" / "reg.example.com"
        before = snapshot(live)
        settings = AcmeSettings(directory=directory, domains=("reg.example.com",),
                                network_timeout=1, retry_min=1)
        manager = CertManager(store, settings, AcmeIssuer(store, settings), jitter=lambda: 0.5)
        started = dt.datetime.now(dt.timezone.utc)
        await manager.maintain()
        assert expected in manager.status.last_error
        assert manager.status.next_attempt > started and manager.status.failures == 1
        assert snapshot(live) == before
    finally:
        await broken.stop()


async def test_an_invalid_certificate_from_the_ca_never_lands(no_blocking: None, tmp_path: Path, ca: trustme.CA) -> None:
    store = await asyncio.to_thread(_store_with_pair, tmp_path, ca)
    live = tmp_path / "live" / "reg.example.com"
    before = snapshot(live)

    class MismatchingIssuer(FakeIssuer):
        def issue(self, domains, *, replaces=None, progress=None):  # type: ignore[no-untyped-def]
            good = issue(self.ca, *domains)
            return good.chain, issue(self.ca, *domains).key  # a key that is not the certificate's

    settings = AcmeSettings(directory="https://ca.test/dir", domains=("reg.example.com",), retry_min=1)
    manager = CertManager(store, settings, MismatchingIssuer(ca), jitter=lambda: 0.5)  # type: ignore[arg-type]
    await manager.maintain()
    assert "does not match" in manager.status.last_error
    assert snapshot(live) == before


@pytest.mark.integration
async def test_a_failing_ca_is_visible_in_healthz_while_the_pair_keeps_serving(no_blocking: None, 
        certproxy_factory: Factory, tmp_path: Path, ca: trustme.CA) -> None:
    broken = BrokenCA("error500")
    directory = await broken.start()
    try:
        store = tmp_path / "store"
        await asyncio.to_thread(_store_with_pair, store, ca, directory="https://other.test/dir")
        cp = await asyncio.to_thread(certproxy_factory, {free_port(): "http://127.0.0.1:9"}, store,
                                     extra_env={"CERTPROXY_DOMAINS": "reg.example.com",
                                                "CERTPROXY_ACME_DIRECTORY": directory,
                                                "CERTPROXY_ACME_RETRY_MIN": "1"})

        def health() -> dict:
            with urllib.request.urlopen(cp.healthz, timeout=10) as r:
                return json.load(r)

        await asyncio.to_thread(wait_for, lambda: bool(health()["renewals"][0]["last_error"]), 15,
                                "the CA's error in /healthz", cp.proc, cp.log)
        body = await asyncio.to_thread(health)
        renewal = body["renewals"][0]
        assert "serverInternal: the database is on fire" in renewal["last_error"]
        assert renewal["next_attempt"] and body["status"] == "degraded"
        assert body["certificates"][0]["kind"] == "live"  # still serving the pair it had
    finally:
        await broken.stop()
