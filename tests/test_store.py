"""The certificate store: atomic writes, validation, bootstrap, inventory."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import stat
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from certproxy.certs import FileStore, LockBusy, PairError, StoreError, load_pair, utcnow
from certproxy.certs.atomic import write_atomic, write_pair_atomic
from conftest import write_live


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_sets_mode_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "privkey.pem"
    target.write_text("old")
    os.umask(0o022)
    write_atomic(target, b"new", 0o600)
    assert target.read_bytes() == b"new" and _mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["privkey.pem"]


def test_failed_pair_write_leaves_old_files_and_no_temp_files(tmp_path: Path) -> None:
    folder = tmp_path / "live" / "x"
    write_pair_atomic(folder, {"privkey.pem": (b"k1", 0o600), "fullchain.pem": (b"c1", 0o644)})

    with pytest.raises(TypeError):
        write_pair_atomic(folder, {"privkey.pem": (b"k2", 0o600), "fullchain.pem": (None, 0o644)})  # type: ignore[dict-item]
    assert (folder / "privkey.pem").read_bytes() == b"k1"
    assert (folder / "fullchain.pem").read_bytes() == b"c1"
    assert sorted(p.name for p in folder.iterdir()) == ["fullchain.pem", "privkey.pem"]


def test_bootstrap_is_self_signed_p256_in_its_own_folder_and_reused(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.ensure_layout()
    inv = store.inventory(("reg.example.com", "ui.example.com", "127.0.0.1"))
    pair = inv.primary
    assert pair.kind == "bootstrap" and pair.self_signed
    assert pair.source == tmp_path / "bootstrap" / "reg.example.com"
    assert set(pair.domains) == {"reg.example.com", "ui.example.com", "127.0.0.1"}
    assert not any((tmp_path / "live").iterdir())
    assert _mode(pair.source / "privkey.pem") == 0o600
    leaf = x509.load_pem_x509_certificate(pair.chain_pem)
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    again = store.inventory(("reg.example.com", "ui.example.com", "127.0.0.1")).primary
    assert again.serial == pair.serial
    # A different set of names makes a new one.
    other = store.inventory(("reg.example.com", "new.example.com")).primary
    assert other.serial != pair.serial and "new.example.com" in other.domains


def test_live_pair_wins_over_bootstrap(tmp_path: Path, ca: trustme.CA) -> None:
    store = FileStore(tmp_path)
    store.ensure_layout()
    store.inventory(("localhost",))
    write_live(tmp_path, "localhost", ca)
    inv = store.inventory(("localhost",))
    assert inv.primary.kind == "live" and not inv.primary.self_signed
    assert inv.primary.issuer == "certproxy test CA"
    assert [p.kind for p in inv.pairs] == ["live"]


def test_certbot_symlink_layout_loads(tmp_path: Path, ca: trustme.CA) -> None:
    leaf = ca.issue_cert("reg.example.com")
    archive = tmp_path / "archive" / "reg.example.com"
    archive.mkdir(parents=True)
    (archive / "fullchain1.pem").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    (archive / "privkey1.pem").write_bytes(leaf.private_key_pem.bytes())
    live = tmp_path / "live" / "reg.example.com"
    live.mkdir(parents=True)
    (live / "fullchain.pem").symlink_to("../../archive/reg.example.com/fullchain1.pem")
    (live / "privkey.pem").symlink_to("../../archive/reg.example.com/privkey1.pem")
    store = FileStore(tmp_path)
    assert store.inventory(("reg.example.com",)).primary.kind == "live"


def _break(folder: Path, how: str, ca: trustme.CA) -> str:
    chain, key = folder / "fullchain.pem", folder / "privkey.pem"
    if how == "truncated":
        chain.write_bytes(chain.read_bytes()[:200])
        return "not a PEM certificate chain"
    if how == "mismatched":
        key.write_bytes(ca.issue_cert("other.example").private_key_pem.bytes())
        return "does not match"
    if how == "empty-key":
        key.write_bytes(b"")
        return "empty"
    if how == "missing-key":
        key.unlink()
        return "missing"
    if how == "garbage-key":
        key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        return "private key"
    if how == "out-of-order":
        pems = x509.load_pem_x509_certificates(chain.read_bytes())
        other = trustme.CA().issue_cert("localhost")
        chain.write_bytes(pems[0].public_bytes(Encoding.PEM) + other.cert_chain_pems[-1].bytes())
        return "chain out of order"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated", "mismatched", "empty-key", "missing-key",
                                 "garbage-key", "out-of-order"])
def test_broken_pairs_are_reported_and_never_served(how: str, tmp_path: Path, ca: trustme.CA) -> None:
    write_live(tmp_path, "localhost", ca)
    expected = _break(tmp_path / "live" / "localhost", how, ca)
    with pytest.raises(PairError) as err:
        load_pair(tmp_path / "live" / "localhost", "localhost", "live", utcnow())
    assert expected in err.value.reason
    inv = FileStore(tmp_path).inventory(("localhost",))
    assert inv.primary.kind == "bootstrap"
    assert any(expected in reason for reason in inv.errors.values())


def test_expired_and_future_pairs_are_refused(tmp_path: Path, ca: trustme.CA) -> None:
    folder = tmp_path / "live" / "localhost"
    now = utcnow()
    for start, end, message in (
        (now - dt.timedelta(days=10), now - dt.timedelta(seconds=1), "expired"),
        (now + dt.timedelta(days=1), now + dt.timedelta(days=10), "not valid before"),
    ):
        leaf = ca.issue_cert("localhost", not_before=start, not_after=end)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "fullchain.pem").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
        (folder / "privkey.pem").write_bytes(leaf.private_key_pem.bytes())
        with pytest.raises(PairError, match=message):
            load_pair(folder, "localhost", "live", now)
        assert FileStore(tmp_path).inventory(("localhost",)).primary.kind == "bootstrap"


def test_store_layout_errors_are_clear(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="not a folder"):
        FileStore(blocker).ensure_layout()
    with pytest.raises(StoreError):
        FileStore(blocker / "sub").ensure_layout()


def test_store_layout_modes(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    store.ensure_layout()
    assert _mode(tmp_path / "s" / "accounts") == 0o700
    assert {p.name for p in (tmp_path / "s").iterdir()} == {
        "live", "bootstrap", "accounts", "challenges", "locks"}


async def test_a_names_lock_is_held_with_its_heartbeat_and_waited_for(no_blocking: None, tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    await asyncio.to_thread(store.ensure_layout)
    other = store.lock("reg.example.com")
    assert await asyncio.to_thread(other.try_acquire)
    told: list[str] = []
    with pytest.raises(LockBusy) as busy:
        async with store.lock("reg.example.com").held(0.3, waiting=told.append):
            raise AssertionError("held while another issuer holds it")
    assert busy.value.holder == f"pid {os.getpid()} on {socket.gethostname()}"
    assert told == [busy.value.holder] and busy.value.path == other.path
    # The holder lets go while a waiter waits: the waiter takes it.
    asyncio.get_running_loop().call_later(0.3, other.release)
    lock = store.lock("reg.example.com", ttl=0.3)
    async with lock.held(5.0):
        assert lock.taken
        before = os.stat(lock.path).st_mtime_ns
        await asyncio.sleep(0.45)  # past the ttl: only the heartbeat keeps it alive
        assert os.stat(lock.path).st_mtime_ns > before
        assert not await asyncio.to_thread(store.lock("reg.example.com", ttl=0.3).try_acquire)
    assert not lock.path.exists()



@pytest.mark.parametrize("given, folder", [
    ("127.0.0.1", "127.0.0.1"),
    ("::1", "::1"),                                   # certbot's lineage name: the address's text
    ("2001:DB8:0:0::1", "2001:db8::1"),              # canonical: compressed, lower case
    ("[2001:db8::1]", "2001:db8::1"),
    ("*.Example.COM", "example.com"),
])
def test_certificate_folders_for_addresses_round_trip(given: str, folder: str, tmp_path: Path) -> None:
    import ipaddress

    from certproxy.certs import name_for_domain
    from certproxy.certs.paths import StorePaths, canonical_ip
    assert name_for_domain(given) == folder
    path = StorePaths(tmp_path).live_dir(folder)
    assert path.parent == tmp_path / "live" and path.name == folder
    if canonical_ip(given):
        assert str(ipaddress.ip_address(path.name)) == folder  # the folder name parses back


@pytest.mark.parametrize("bad", ["::1/../x", "fe80::1%eth0", "0:0::1", "::1:", ":::", "../::1", "a:b"])
def test_colons_name_a_folder_only_in_a_canonical_address(bad: str, tmp_path: Path) -> None:
    from certproxy.certs import InvalidName
    from certproxy.certs.paths import StorePaths
    with pytest.raises(InvalidName):
        StorePaths(tmp_path).live_dir(bad)


def test_an_ipv6_pair_is_written_read_and_locked_under_its_address(tmp_path: Path, ca: trustme.CA) -> None:
    leaf = ca.issue_cert("::1")
    store = FileStore(tmp_path)
    store.ensure_layout()
    folder = store.write_live("::1", b"".join(b.bytes() for b in leaf.cert_chain_pems),
                              leaf.private_key_pem.bytes(), {"directory": "x"})
    assert folder == tmp_path / "live" / "::1"
    assert _mode(folder / "privkey.pem") == 0o600
    pair = store.load_live("::1")
    assert pair.domains == ("::1",) and pair.covers("::1")
    assert store.lock("::1").path.name == "::1.lock"
