"""The real Docker distribution registry (Debian's ``docker-registry``) on loopback."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .procs import free_port, http_ok, stop_process, wait_for

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"


@dataclass
class Registry:
    proc: subprocess.Popen
    port: int
    root: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_registry(tmp: Path, *, htpasswd: Path | None = None, realm: str = "certproxy-test",
                   log_level: str = "warn") -> Registry:
    """``log_level`` debug makes the registry log each storage operation (a cross-repository
    mount writes the target's ``_layers/<digest>/link`` while the upload starts)."""
    port = free_port()
    root = tmp / f"registry-{port}"
    (root / "data").mkdir(parents=True)
    auth = ""
    if htpasswd is not None:
        auth = f"auth:\n  htpasswd:\n    realm: {realm}\n    path: {htpasswd}\n"
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        f"log:\n  level: {log_level}\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: certproxy-test-secret\n"
        + auth
    )
    log = root / "registry.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=fh,
                                stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/v2/"), 20, "docker-registry", proc, log)
    except BaseException:
        stop_process(proc)
        raise
    return Registry(proc, port, root, log)
