"""`certproxy status`, and a live certificate served from the first handshake after a restart."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import trustme
from conftest import write_live
from cryptography import x509
from support.procs import CertproxyProcess, free_port, stop_process

from certproxy.certs.pair import serial_hex


def status(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTPROXY_")}
    return subprocess.run([sys.executable, "-m", "certproxy", "status", "--store", str(store),
                           "--url", f"http://127.0.0.1:{free_port()}/healthz", *args],
                          env=env, capture_output=True, text=True, timeout=30)


def test_status_lists_live_bootstrap_and_broken_pairs(tmp_path: Path, ca: trustme.CA) -> None:
    store = tmp_path / "s"
    leaf = write_live(store, "reg.example.com", ca, "reg.example.com", "ui.example.com")
    (store / "live" / "broken.example.com").mkdir(parents=True)
    (store / "live" / "broken.example.com" / "fullchain.pem").write_text("garbage")
    (store / "live" / "broken.example.com" / "privkey.pem").write_text("garbage")
    from certproxy.certs import FileStore
    FileStore(store).ensure_bootstrap(("localhost",))

    out = status(store, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    by_name = {(c["name"], c["kind"]): c for c in data["certificates"]}
    live = by_name[("reg.example.com", "live")]
    serial = serial_hex(x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number)
    assert live["serial"] == serial and live["domains"] == ["reg.example.com", "ui.example.com"]
    assert live["issuer"] == "certproxy test CA" and live["self_signed"] is False
    assert "not a PEM certificate chain" in by_name[("broken.example.com", "live")]["error"]
    assert by_name[("localhost", "bootstrap")]["self_signed"] is True

    table = status(store)
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].startswith("no running certproxy answered")
    assert lines[2].split()[:2] == ["NAME", "KIND"]
    assert any(line.startswith("reg.example.com") and "live" in line and serial[:16] in line
               for line in lines)
    assert any("INVALID" in line for line in lines)


def _served_serial(port: int, ca: trustme.CA) -> str:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    return serial_hex(x509.load_der_x509_certificate(der).serial_number)


@pytest.mark.integration
def test_live_certificate_served_from_the_first_handshake_after_restart(
        certproxy_factory: Callable[..., CertproxyProcess], store: Path, ca: trustme.CA) -> None:
    live_serial = serial_hex(x509.load_pem_x509_certificate(
        (store / "live" / "localhost" / "fullchain.pem").read_bytes()).serial_number)
    port = free_port()
    for _ in range(2):
        cp = certproxy_factory({port: "http://127.0.0.1:9"}, store)
        assert _served_serial(port, ca) == live_serial  # verified against the CA, not bootstrap
        assert stop_process(cp.proc) == 0
    assert not (store / "bootstrap" / "localhost").exists()
