"""Run what the compose files describe, natively, on loopback.

There is no Docker engine on these machines, so the compose files are merged
by Debian's ``docker-compose config`` and the result is started as local
processes: certproxy with exactly the environment its service gets, the
Debian ``docker-registry`` with the registry service's environment (applied
over the registry:2 image's own default configuration), and a placeholder
for the web UI image (which cannot run here). Only what has to change off a
container is changed: published ports become free loopback ports, service
host names become 127.0.0.1:<port>, and volume paths become folders under a
temporary directory. A wrong variable in a compose file therefore breaks the
native run the same way it would break the stack.
"""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .procs import ROOT, CertproxyProcess, free_port, http_ok, start_certproxy, stop_process, wait_for
from .registry import REGISTRY_BIN, Registry

COMPOSE_DIR = ROOT / "compose"

# The registry:2 image's /etc/docker/registry/config.yml.
REGISTRY_IMAGE_CONFIG = """\
version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
"""


def compose_config(folder: Path, files: list[str], env_file: Path | None = None) -> dict[str, Any]:
    cmd = ["docker-compose"] + [a for f in files for a in ("-f", f)]
    if env_file is not None:
        cmd += ["--env-file", str(env_file)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CERTPROXY_", "S3_", "REGISTRY_"))}
    out = subprocess.run(cmd + ["config"], cwd=folder, capture_output=True, text=True, timeout=60,
                         env=env)
    if out.returncode != 0:
        raise RuntimeError(f"docker-compose config failed: {out.stderr.strip()}")
    return yaml.safe_load(out.stdout)


class Placeholder(http.server.BaseHTTPRequestHandler):
    """Stands in for the web UI image, which cannot run without a Docker engine."""

    def do_GET(self) -> None:  # noqa: N802
        body = b"<!doctype html><title>registry UI</title><h1>Registry web UI placeholder</h1>\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class NativeStack:
    config: dict[str, Any]
    work: Path
    ports: dict[int, int] = field(default_factory=dict)  # published container port -> loopback port
    hosts: dict[str, str] = field(default_factory=dict)  # service name -> 127.0.0.1:port
    registry: Registry | None = None
    certproxy: CertproxyProcess | None = None
    ui: http.server.ThreadingHTTPServer | None = None

    def service(self, name: str) -> dict[str, Any]:
        return self.config["services"][name]

    def env(self, name: str) -> dict[str, str]:
        raw = self.service(name).get("environment") or {}
        return {k: "" if v is None else str(v) for k, v in raw.items()}

    def mounts(self, name: str) -> list[tuple[str, Path]]:
        """(container path, host path) of a service's volumes, longest first."""
        out = []
        for vol in self.service(name).get("volumes") or []:
            if isinstance(vol, str):  # docker-compose v1: "source:target[:mode]"
                source, target = vol.split(":")[:2]
            else:
                source, target = vol["source"], vol["target"]
            host = Path(source) if source.startswith("/") else self.work / "volumes" / source
            host.mkdir(parents=True, exist_ok=True)
            out.append((target, host))
        return sorted(out, key=lambda m: -len(m[0]))

    def host_path(self, name: str, container_path: str) -> str:
        for target, host in self.mounts(name):
            if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
                return str(host / os.path.relpath(container_path, target))
        raise KeyError(f"{name}: {container_path} is on no volume of the service")

    def map_url(self, url: str) -> str:
        scheme, _, rest = url.partition("://")
        hostport = rest.split("/", 1)[0]
        host = hostport.rsplit(":", 1)[0]
        if host not in self.hosts:
            raise KeyError(f"{url}: no service named {host!r} in the compose file")
        return f"{scheme}://{self.hosts[host]}"

    # -- starting ------------------------------------------------------------
    def start_registry(self) -> Registry:
        env = self.env("registry")
        port = free_port()
        root = self.work / "registry"
        root.mkdir(parents=True, exist_ok=True)
        config = root / "config.yml"
        config.write_text(REGISTRY_IMAGE_CONFIG.replace(
            "/var/lib/registry", self.host_path("registry", "/var/lib/registry")))
        for key, val in list(env.items()):
            if val.startswith("/"):  # a path inside the container
                env[key] = self.host_path("registry", val)
        env["REGISTRY_HTTP_ADDR"] = f"127.0.0.1:{port}"
        log = root / "registry.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=fh,
                                    stderr=subprocess.STDOUT, env={"PATH": os.environ["PATH"], **env})
        self.registry = Registry(proc, port, root, log)
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/v2/"), 20, "docker-registry", proc, log)
        self.hosts["registry"] = f"127.0.0.1:{port}"
        return self.registry

    def start_ui(self) -> None:
        self.ui = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Placeholder)
        threading.Thread(target=self.ui.serve_forever, daemon=True).start()
        self.hosts["registry-ui"] = f"127.0.0.1:{self.ui.server_address[1]}"

    def start_certproxy(self, extra_env: dict[str, str] | None = None,
                        http_port: int | None = None) -> CertproxyProcess:
        env = self.env("certproxy")
        for published in self.service("certproxy").get("ports") or []:
            self.ports[int(published["target"])] = free_port()
        if http_port is not None:
            self.ports[int(env.get("CERTPROXY_HTTP_PORT", "80"))] = http_port
        routes = {}
        for item in env.pop("CERTPROXY_ROUTES").split(","):
            port, _, url = item.strip().partition("=")
            routes[self.ports[int(port)]] = self.map_url(url)
        env["CERTPROXY_STORE"] = self.host_path("certproxy", env.get("CERTPROXY_STORE", "/var/lib/certproxy"))
        if env.get("CERTPROXY_AUTH_HTPASSWD"):
            env["CERTPROXY_AUTH_HTPASSWD"] = self.host_path("certproxy", env["CERTPROXY_AUTH_HTPASSWD"])
        # Port settings name the container's ports: mapped to the ports used here; where
        # one is unset, its default (5000, the registry's port, when routed) is mapped too.
        routed = {int(item.strip().partition("=")[0]) for item in self.env("certproxy")["CERTPROXY_ROUTES"].split(",")}
        if 5000 in routed:
            env.setdefault("CERTPROXY_REGISTRY_PORTS", "5000")
            if env.get("CERTPROXY_ACCESS"):
                env.setdefault("CERTPROXY_ACCESS_PORTS", "5000")
        for setting in ("CERTPROXY_AUTH_PORTS", "CERTPROXY_ACCESS_PORTS", "CERTPROXY_REGISTRY_PORTS"):
            if env.get(setting):
                env[setting] = ",".join(str(self.ports[int(p)]) for p in env[setting].split(","))
        http = self.ports[int(env.pop("CERTPROXY_HTTP_PORT", "80"))]
        env.update(extra_env or {})
        self.certproxy = start_certproxy(self.work, routes, Path(env.pop("CERTPROXY_STORE")),
                                         extra_env=env, http_port=http)
        return self.certproxy

    def stop(self) -> None:
        if self.certproxy is not None:
            stop_process(self.certproxy.proc)
        if self.registry is not None:
            stop_process(self.registry.proc)
        if self.ui is not None:
            self.ui.shutdown()


def prepare(work: Path, files: list[str], env_file_text: str | None = None) -> NativeStack:
    """Copy compose/ into ``work`` (bind mounts land there) and merge ``files``."""
    folder = work / "compose"
    shutil.copytree(COMPOSE_DIR, folder)
    env_file = None
    if env_file_text is not None:
        env_file = folder / ".env"
        env_file.write_text(env_file_text)
    return NativeStack(compose_config(folder, files, env_file), work)
