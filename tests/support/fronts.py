"""Fronts for ``certproxy doctor`` to diagnose: Debian's nginx, deliberately misconfigured,
in front of the real registry on loopback, and a way to run the doctor as a user would.

Each nginx runs as a process of its own (``-p PREFIX -c CONF -e ERRORLOG -g 'daemon off;'``),
on a free port, with its pid file, temp folders and logs under the test's folder, and
is stopped by the fixture that started it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from support.procs import ROOT, free_port, stop_process, tcp_open, wait_for

NGINX = "/usr/sbin/nginx"

# What a front that does its job sets; each broken front leaves one of these out or adds a fault.
HEALTHY_SERVER = "client_max_body_size 0;"
HEALTHY_LOCATION = "proxy_request_buffering off;\n      proxy_set_header X-Forwarded-Proto $scheme;"

CONF = """\
{user}
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
  access_log {prefix}/access.log;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  server {{
    listen 127.0.0.1:{port} ssl;
    server_name localhost;
    ssl_certificate {chain};
    ssl_certificate_key {key};
    {server}
    location / {{
      proxy_pass http://127.0.0.1:{upstream};
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      {location}
    }}
  }}
}}
"""


@dataclass
class Nginx:
    proc: subprocess.Popen[bytes]
    port: int
    prefix: Path

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def stop(self) -> None:
        stop_process(self.proc)


def write_pair(folder: Path, leaf: trustme.LeafCert) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    chain, key = folder / "fullchain.pem", folder / "privkey.pem"
    chain.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    key.chmod(0o600)
    return chain, key


def start_nginx(prefix: Path, upstream: int, leaf: trustme.LeafCert, *, server: str = HEALTHY_SERVER,
                location: str = HEALTHY_LOCATION) -> Nginx:
    """nginx on a free loopback port with ``leaf``, proxying to ``127.0.0.1:upstream``;
    ``server`` and ``location`` are the directives that make it healthy or broken."""
    prefix.mkdir(parents=True, exist_ok=True)
    chain, key = write_pair(prefix / "tls", leaf)
    port = free_port()
    conf = prefix / "nginx.conf"
    # As root, nginx's workers would switch to "nobody", who may not enter the test's folders
    # to keep request bodies (a buffering front's temp files).
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(CONF.format(user=user, prefix=prefix, port=port, chain=chain, key=key, upstream=upstream,
                                server=server, location=location))
    log = prefix / "error.log"
    proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(log), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: tcp_open(port), 20, "nginx", proc, log)
    except BaseException:
        stop_process(proc)
        raise
    return Nginx(proc, port, prefix)


@dataclass
class DoctorRun:
    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def report(self) -> dict[str, Any]:
        return json.loads(self.stdout)  # type: ignore[no-any-return]

    def check(self, id: str) -> dict[str, Any]:
        found = [c for c in self.report["checks"] if c["id"] == id]
        assert found, f"no check {id} in {[c['id'] for c in self.report['checks']]}"
        return found[0]  # type: ignore[no-any-return]

    def failed(self) -> list[str]:
        return [c["id"] for c in self.report["checks"] if c["status"] == "fail"]


def run_doctor(url: str, *args: str, etc: Path, password: str | None = None, timeout: float = 300) -> DoctorRun:
    """``certproxy doctor URL ARGS`` as a subprocess; ``etc`` stands in for /etc (certs.d)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTPROXY_")}
    env["CERTPROXY_DOCTOR_CERTS_D"] = str(etc)
    env["PYTHONUNBUFFERED"] = "1"
    began = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "certproxy", "doctor", url, *args],
                            input=(password + "\n") if password is not None else "", capture_output=True,
                            text=True, env=env, cwd=ROOT, timeout=timeout)
    return DoctorRun(result.returncode, result.stdout, result.stderr, time.monotonic() - began)
