"""The fronts the benchmark compares: certproxy and its peers, each configured
as the registry documentation recommends for a front (no body limit, request
bodies streamed, X-Forwarded-Proto, long timeouts, upstream keep-alive with a
pool larger than the client count), all with the same ECDSA P-256 certificate."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POOL = 128  # upstream keep-alive connections, > wrk's 64 clients


@dataclass
class Front:
    name: str
    work: Path
    cert: Path
    key: Path
    routes: dict[int, int]  # TLS port -> upstream port on 127.0.0.1
    proc: subprocess.Popen | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = self.work / f"{self.name}.log"

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def start(self) -> None:
        cmd, env = self.command()
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                         env={**os.environ, **env}, cwd=self.work)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Nginx(Front):
    def command(self) -> tuple[list[str], dict[str, str]]:
        servers = []
        for port, up in self.routes.items():
            servers.append(f"""
  upstream up{port} {{ server 127.0.0.1:{up}; keepalive {POOL}; }}
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {self.cert};
    ssl_certificate_key {self.key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL{port}:10m;
    client_max_body_size 0;
    chunked_transfer_encoding on;
    location / {{
      proxy_pass http://up{port};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Real-IP $remote_addr;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_request_buffering off;
      proxy_buffering off;
      proxy_read_timeout 900;
      proxy_send_timeout 900;
    }}
  }}""")
        conf = self.work / "nginx.conf"
        conf.write_text(f"""daemon off;
worker_processes auto;
pid {self.work}/nginx.pid;
error_log {self.work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log {self.work}/nginx-access.log;
  client_body_temp_path {self.work}/body;
  proxy_temp_path {self.work}/proxy;
{''.join(servers)}
}}
""")
        return ["nginx", "-c", str(conf), "-p", str(self.work)], {}


class HAProxy(Front):
    def command(self) -> tuple[list[str], dict[str, str]]:
        bundle = self.work / "bundle.pem"
        bundle.write_bytes(self.cert.read_bytes() + self.key.read_bytes())
        parts = ["""global
  maxconn 8192
  nbthread 2
defaults
  mode http
  option forwardfor
  timeout connect 10s
  timeout client 900s
  timeout server 900s
  http-reuse always
"""]
        for port, up in self.routes.items():
            parts.append(f"""frontend f{port}
  bind 127.0.0.1:{port} ssl crt {bundle} alpn http/1.1
  http-request set-header X-Forwarded-Proto https
  default_backend b{port}
backend b{port}
  server s 127.0.0.1:{up} pool-max-conn {POOL}
""")
        conf = self.work / "haproxy.cfg"
        conf.write_text("\n".join(parts))
        return ["haproxy", "-db", "-f", str(conf)], {}


class Caddy(Front):
    def command(self) -> tuple[list[str], dict[str, str]]:
        blocks = ["{\n  admin off\n  auto_https off\n}\n"]
        for port, up in self.routes.items():
            blocks.append(f"""https://localhost:{port} {{
  bind 127.0.0.1
  tls {self.cert} {self.key}
  reverse_proxy 127.0.0.1:{up} {{
    flush_interval -1
    header_up X-Forwarded-Proto https
    transport http {{
      keepalive 300s
      keepalive_idle_conns {POOL}
      keepalive_idle_conns_per_host {POOL}
    }}
  }}
}}
""")
        conf = self.work / "Caddyfile"
        conf.write_text("\n".join(blocks))
        return ["caddy", "run", "--config", str(conf), "--adapter", "caddyfile"], {
            "HOME": str(self.work), "XDG_DATA_HOME": str(self.work), "XDG_CONFIG_HOME": str(self.work)}


class Certproxy(Front):
    def command(self) -> tuple[list[str], dict[str, str]]:
        store = self.work / "store"
        live = store / "live" / "localhost"
        live.mkdir(parents=True, exist_ok=True)
        (live / "fullchain.pem").write_bytes(self.cert.read_bytes())
        (live / "privkey.pem").write_bytes(self.key.read_bytes())
        os.chmod(live / "privkey.pem", 0o600)
        env = {
            "CERTPROXY_STORE": str(store),
            "CERTPROXY_BIND": "127.0.0.1",
            "CERTPROXY_HTTP_PORT": "off",
            "CERTPROXY_ACME": "off",
            "CERTPROXY_ROUTES": ",".join(f"{p}=http://127.0.0.1:{u}" for p, u in self.routes.items()),
        }
        return [sys.executable, "-m", "certproxy", "serve"], env


class CertproxyTwoWorkers(Certproxy):
    """certproxy with CERTPROXY_WORKERS=2: two processes on the same ports (SO_REUSEPORT)."""

    def command(self) -> tuple[list[str], dict[str, str]]:
        cmd, env = super().command()
        return cmd, {**env, "CERTPROXY_WORKERS": "2"}


class CertproxyPure(Certproxy):
    """certproxy on its pure-Python modules (CERTPROXY_PURE=1) where the compiled ones are
    installed: the build before and after compiling, in the same run."""

    def command(self) -> tuple[list[str], dict[str, str]]:
        cmd, env = super().command()
        return cmd, {**env, "CERTPROXY_PURE": "1"}


FRONTS = {"nginx": Nginx, "haproxy": HAProxy, "caddy": Caddy, "certproxy": Certproxy,
          "certproxy-2w": CertproxyTwoWorkers, "certproxy-pure": CertproxyPure}
