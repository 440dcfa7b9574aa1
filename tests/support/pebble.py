"""Let's Encrypt's own test CA, Pebble, with pebble-challtestsrv as its DNS,
both from Debian's ``pebble`` package, on loopback.

Pebble's API is served with a certificate from the test's trustme CA. Every
name resolves to 127.0.0.1 through challtestsrv, and Pebble validates HTTP-01
on ``http_port``: the certproxy under test's plain-HTTP listener.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import trustme

from .procs import free_port, stop_process, tcp_open, wait_for


@dataclass
class Pebble:
    proc: subprocess.Popen
    dns: subprocess.Popen
    port: int
    mgmt_port: int
    ca_bundle: Path  # trust for Pebble's API
    log: Path
    host: str = "localhost"

    @property
    def directory(self) -> str:
        return f"https://{self.host}:{self.port}/dir"

    def roots_pem(self) -> bytes:
        """Pebble's issuing root (made anew at every start), to verify what it issued."""
        ctx = ssl.create_default_context(cafile=str(self.ca_bundle))
        with urllib.request.urlopen(f"https://{self.host}:{self.mgmt_port}/roots/0",
                                    context=ctx, timeout=10) as r:
            return r.read()

    def stop(self) -> None:
        stop_process(self.proc)
        stop_process(self.dns)


def start_pebble(tmp: Path, ca: trustme.CA, http_port: int, *, validity: int | None = None,
                 port: int | None = None, eab_keys: dict[str, str] | None = None,
                 env: dict[str, str] | None = None,
                 extra_config: dict[str, object] | None = None,
                 listen: str = "127.0.0.1", names_resolve_to: str = "127.0.0.1",
                 prefix: tuple[str, ...] = (), dns_server: str | None = None) -> Pebble:
    """Pebble on ``listen`` (its API certificate also names it), every name
    resolving to ``names_resolve_to``; ``prefix`` runs both programs through a
    command such as ``nsenter --net=...`` (a network namespace of the test's).
    ``dns_server`` (``host:port``): Pebble resolves through it (BIND for dns-01)
    instead of its own challtestsrv."""
    port = port or free_port()
    mgmt = free_port()
    dns_port = free_port()
    folder = tmp / f"pebble-{port}"
    folder.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue_cert("localhost", "127.0.0.1", listen)
    leaf.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(folder / "key.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    config: dict[str, object] = {
        "listenAddress": f"{listen}:{port}",
        "managementListenAddress": f"{listen}:{mgmt}",
        "certificate": str(folder / "cert.pem"),
        "privateKey": str(folder / "key.pem"),
        "httpPort": http_port,
        "tlsPort": free_port(),
        "ocspResponderURL": "",
        "externalAccountBindingRequired": bool(eab_keys),
    }
    if eab_keys:
        config["externalAccountMACKeys"] = eab_keys
    if validity:
        config["certificateValidityPeriod"] = validity
    config.update(extra_config or {})
    (folder / "config.json").write_text(json.dumps({"pebble": config}))
    log = folder / "pebble.log"
    dns_log = folder / "challtestsrv.log"
    with open(dns_log, "wb") as fh:
        dns = subprocess.Popen(
            [*prefix, "pebble-challtestsrv", "-defaultIPv4", names_resolve_to, "-defaultIPv6", "",
             "-dns01", f"127.0.0.1:{dns_port}", "-http01", "", "-https01", "", "-tlsalpn01", "",
             "-management", f"127.0.0.1:{free_port()}"],
            stdout=fh, stderr=subprocess.STDOUT)
    penv = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", **(env or {})}
    with open(log, "wb") as fh:
        proc = subprocess.Popen([*prefix, "pebble", "-config", str(folder / "config.json"),
                                 "-dnsserver", dns_server or f"127.0.0.1:{dns_port}"],
                                stdout=fh, stderr=subprocess.STDOUT, env=penv, cwd=folder)
    pebble = Pebble(proc, dns, port, mgmt, folder / "ca.pem", log,
                    "localhost" if listen == "127.0.0.1" else listen)
    try:
        wait_for(lambda: tcp_open(port, listen) and tcp_open(mgmt, listen), 20, "pebble", proc, log)
    except BaseException:
        pebble.stop()
        raise
    return pebble
