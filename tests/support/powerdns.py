"""PowerDNS (Debian's ``pdns-server`` + ``pdns-backend-sqlite3``) on loopback: authoritative
for one zone, its HTTP API on, the server dns-lexicon's ``powerdns`` provider updates."""

from __future__ import annotations

import secrets
import shutil
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .procs import free_port, stop_process, tcp_open, wait_for

SCHEMA = Path("/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql")


@dataclass
class PowerDNS:
    proc: subprocess.Popen[bytes]
    dns_port: int
    api_port: int
    api_key: str
    log: Path
    sockets: Path  # the control socket's folder: a short path of its own

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.dns_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.sockets, ignore_errors=True)


def start_powerdns(tmp: Path, zone: str) -> PowerDNS:
    for path in ("/usr/sbin/pdns_server", "/usr/bin/pdnsutil", str(SCHEMA)):
        if not Path(path).exists():
            raise RuntimeError(f"{path} is missing (scripts/install-system-deps.sh installs PowerDNS)")
    folder = tmp / f"pdns-{zone}"
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "pdns.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.executescript(SCHEMA.read_text())
    dns_port, api_port, key = free_port(), free_port(), secrets.token_hex(16)
    # A unix socket path holds at most 107 bytes: pytest's folders (a worker's, a test's
    # long name) may not leave room, so the control socket lives in a short folder.
    sockets = Path(tempfile.mkdtemp(prefix="pdns-"))
    (folder / "pdns.conf").write_text(
        f"launch=gsqlite3\ngsqlite3-database={db}\nlocal-address=127.0.0.1\nlocal-port={dns_port}\n"
        f"api=yes\napi-key={key}\nwebserver=yes\nwebserver-address=127.0.0.1\nwebserver-port={api_port}\n"
        f"webserver-allow-from=127.0.0.1\nsocket-dir={sockets}\nguardian=no\ndaemon=no\ndisable-syslog=yes\n"
        "cache-ttl=0\nnegquery-cache-ttl=0\nquery-cache-ttl=0\n")
    subprocess.run(["pdnsutil", f"--config-dir={folder}", "create-zone", zone, f"ns.{zone}"], check=True,
                   capture_output=True, timeout=30)
    log = folder / "pdns.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(["pdns_server", f"--config-dir={folder}"], stdout=fh, stderr=subprocess.STDOUT)
    server = PowerDNS(proc, dns_port, api_port, key, log, sockets)
    try:
        wait_for(lambda: tcp_open(dns_port) and tcp_open(api_port), 30, "pdns_server", proc, log)
    except BaseException:
        server.stop()
        raise
    return server
