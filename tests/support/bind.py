"""BIND 9 (Debian's ``bind9``) on loopback: authoritative for one test zone, taking
RFC 2136 updates signed with one TSIG key, as a user's primary DNS server does."""

from __future__ import annotations

import base64
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype

from .procs import free_port, stop_process, tcp_open, wait_for

KEY_NAME = "certproxy-key"


@dataclass
class Bind:
    proc: subprocess.Popen[bytes]
    port: int
    zone: str
    secret: str  # base64, of KEY_NAME (hmac-sha256)
    log: Path

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def txt(self, name: str) -> list[str]:
        """The TXT values BIND answers for ``name`` (asked directly, never cached)."""
        response = dns.query.tcp(dns.message.make_query(name, dns.rdatatype.TXT), "127.0.0.1",
                                 port=self.port, timeout=5)
        return [b"".join(rd.strings).decode() for rrset in response.answer for rd in rrset
                if rrset.rdtype == dns.rdatatype.TXT]

    def stop(self) -> None:
        stop_process(self.proc)


def start_bind(tmp: Path, zone: str = "example.test") -> Bind:
    if not Path("/usr/sbin/named").exists():
        raise RuntimeError("named is not installed (scripts/install-system-deps.sh installs bind9)")
    folder = tmp / f"bind-{zone}"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    secret = base64.b64encode(os.urandom(32)).decode()
    (folder / f"{zone}.zone").write_text(
        "$TTL 60\n"
        f"@ IN SOA ns.{zone}. hostmaster.{zone}. 1 60 60 600 60\n"
        f"@ IN NS ns.{zone}.\n"
        "ns IN A 127.0.0.1\n"
        "@ IN A 127.0.0.1\n"
        "* IN A 127.0.0.1\n")
    (folder / "named.conf").write_text(f"""
options {{
    directory "{folder}";
    pid-file "{folder}/named.pid";
    session-keyfile "{folder}/session.key";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    allow-query {{ any; }};
}};
key "{KEY_NAME}" {{ algorithm hmac-sha256; secret "{secret}"; }};
zone "{zone}" {{
    type primary;
    file "{folder}/{zone}.zone";
    allow-update {{ key "{KEY_NAME}"; }};
}};
""")
    log = folder / "named.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(["/usr/sbin/named", "-g", "-c", str(folder / "named.conf")],
                                stdout=fh, stderr=subprocess.STDOUT)
    bind = Bind(proc, port, zone, secret, log)
    try:
        wait_for(lambda: tcp_open(port) and "running" in log.read_text(errors="replace"), 30, "named", proc, log)
    except BaseException:
        bind.stop()
        raise
    return bind
