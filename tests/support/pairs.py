"""Ways certificate pairs get replaced in a store, as they happen in practice."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509

from certproxy.certs.pair import serial_hex


@dataclass
class Pair:
    chain: bytes
    key: bytes
    serial: str


def issue(ca: trustme.CA, *names: str, **kw: object) -> Pair:
    leaf = ca.issue_cert(*names, **kw)  # type: ignore[arg-type]
    chain = b"".join(b.bytes() for b in leaf.cert_chain_pems)
    serial = serial_hex(x509.load_pem_x509_certificate(chain).serial_number)
    return Pair(chain, leaf.private_key_pem.bytes(), serial)


def _unlink_if_link(path: Path) -> None:
    if path.is_symlink():
        path.unlink()


def replace_atomic(folder: Path, pair: Pair) -> None:
    """Both files written aside, then renamed into place (key first)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in (("privkey.pem", pair.key), ("fullchain.pem", pair.chain)):
        tmp = folder / f".{name}.new"
        tmp.write_bytes(data)
        os.replace(tmp, folder / name)


def replace_in_place(folder: Path, pair: Pair) -> None:
    """Two separate overwrites, certificate then key, as `cp` would do."""
    for name, data in (("fullchain.pem", pair.chain), ("privkey.pem", pair.key)):
        path = folder / name
        _unlink_if_link(path)
        with open(path, "wb") as fh:
            fh.write(data)


def replace_certbot(store: Path, name: str, pair: Pair, version: int) -> None:
    """certbot's renewal: new files in archive/, live/ symlinks re-pointed by rename."""
    archive = store / "archive" / name
    archive.mkdir(parents=True, exist_ok=True)
    live = store / "live" / name
    live.mkdir(parents=True, exist_ok=True)
    for base, data in (("privkey", pair.key), ("fullchain", pair.chain)):
        (archive / f"{base}{version}.pem").write_bytes(data)
    for base in ("privkey", "fullchain"):
        tmp = live / f".{base}.link"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(f"../../archive/{name}/{base}{version}.pem")
        os.replace(tmp, live / f"{base}.pem")
