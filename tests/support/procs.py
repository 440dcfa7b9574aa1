"""Starting real servers for tests: free ports, readiness waits, clean stops.

Every wait here is bounded in time; every process started is stopped by the
fixture that started it, even when the test fails.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None,
             log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what}: process exited with {proc.returncode}\n{tail}")
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, ssl.SSLError):
            pass
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{what} not ready within {timeout} s\n{tail}")


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:
            return resp.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500


def tcp_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


@dataclass
class CertproxyProcess:
    proc: subprocess.Popen
    http_port: int
    routes: dict[int, str]
    store: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def https(self, port: int | None = None) -> str:
        return f"https://localhost:{port or next(iter(self.routes))}"

    @property
    def healthz(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/healthz"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_output(self, text: str, timeout: float = 5) -> bool:
        """True once ``text`` appears in the log (lines are written after the response)."""
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def rss_kib(self) -> int:
        kib = vmrss_kib(self.pid)
        if kib is None:
            raise RuntimeError("no VmRSS")
        return kib


def vmrss_kib(pid: int) -> int | None:
    """A process's resident KiB (None for one without memory, a zombie); OSError once it is gone."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def start_certproxy(tmp: Path, routes: Mapping[int, str], store: Path, *,
                    extra_env: Mapping[str, str] | None = None,
                    args: tuple[str, ...] = (), wait: bool = True,
                    http_port: int | None = None) -> CertproxyProcess:
    http_port = http_port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTPROXY_")}
    env.update({
        "CERTPROXY_STORE": str(store),
        "CERTPROXY_BIND": "127.0.0.1",
        "CERTPROXY_HTTP_PORT": str(http_port),
        "CERTPROXY_ROUTES": ",".join(f"{p}={u}" for p, u in routes.items()),
        "CERTPROXY_SHUTDOWN_GRACE": "10",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra_env or {})
    log = tmp / f"certproxy-{http_port}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "certproxy", "serve", *args],
                                stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    cp = CertproxyProcess(proc, http_port, dict(routes), store, log, env)
    if wait:
        try:
            wait_for(lambda: http_ok(cp.healthz) and all(tcp_open(p) for p in routes), 20,
                     "certproxy", proc, log)
            workers = env.get("CERTPROXY_WORKERS", "1")
            if workers != "1":  # every worker listening, not only the first
                wait_for(lambda: f"{workers} workers serving" in cp.output(), 20, "certproxy workers", proc, log)
        except BaseException:
            stop_process(proc)
            raise
    return cp
