"""A Docker engine for the container tests, in a network namespace of its own.

What runs here, and how it differs from a user's host:

- Debian's ``dockerd`` (docker.io 20.10) with ``--iptables=false
  --bridge=none``: the default bridge and NAT are off, yet compose's own bridge
  networks work, with service names resolved by Docker's embedded DNS, and
  published ports work through ``docker-proxy`` (the userland proxy). So the
  compose files run unchanged. One visible difference: behind docker-proxy,
  certproxy sees the bridge gateway (``172.x.0.1``) as the client address, where
  a host with iptables would show the real client. Nor are compose's networks
  isolated from one another (Docker does that with iptables rules): a container
  reaches another network's containers by address, though never by name.
- The engine lives in a network namespace the test creates (``nsenter --net``),
  joined to the test's own namespace by a veth pair: the stack's published
  ports 80, 443 and 5000 are ports of that namespace, never of this machine, and
  the registry's name, ``registry.certproxy.test``, resolves to the namespace's
  veth address. Docker treats a registry whose name resolves into 127.0.0.0/8 as
  insecure (no certificate checks, plain-HTTP fallback), so a loopback name
  could not show that TLS is checked; this address can.
- The swarm tests start it with iptables on (``start_engine(iptables=True)``),
  in the namespace only: a swarm's ``mode: host`` published ports need its NAT
  rules. The routing mesh stays out of reach (this kernel has no IPVS).
- ``/etc/hosts`` and ``/etc/docker`` (where ``certs.d`` is) are bind-mounted
  for the engine alone (``unshare --mount``): the machine's own files are never
  touched.
- No internet: the base images are made here (see ``standins.py``), and the
  image build reaches PyPI through a CONNECT proxy on the veth address.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REGISTRY_NAME = "registry.certproxy.test"
DOCKER = "/usr/bin/docker"  # Debian's client, matching the daemon; another docker may come first in PATH
REPO = Path(__file__).resolve().parents[2]
# The engine's data root, kept between runs and between clones on this machine: the stand-in
# images and the image's dependency layers are cached there (a fresh clone, as CI makes,
# would otherwise pay for debootstrap and every wheel again). One engine at a time uses it:
# engine.lock makes the next one (of this run or another checkout's) wait.
STATE = Path(os.environ.get("CPT_ENGINE_CACHE", "/var/cache/certproxy-tests/engine"))


# Repositories a run keeps: the stand-ins and the image under test (layer cache).
KEPT_IMAGES = {"python", "registry", "konradkleine/docker-registry-frontend", "localhost/certproxy"}


class EngineError(RuntimeError):
    pass


def run(argv: Sequence[str], *, timeout: float = 120, check: bool = True,
        env: Mapping[str, str] | None = None, input: bytes | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, timeout=timeout, env=dict(env) if env else None,
                          input=input.decode() if input is not None else None, text=True, cwd=cwd)
    if check and proc.returncode != 0:
        raise EngineError(f"{' '.join(argv[:6])}... exited {proc.returncode}:\n{proc.stdout[-2000:]}"
                          f"\n{proc.stderr[-3000:]}")
    return proc


@dataclass
class Netns:
    """A network namespace with a veth pair: ``host_addr`` here, ``addr`` inside."""

    name: str
    index: int
    etc: Path  # files bind-mounted over /etc for the engine

    @property
    def addr(self) -> str:
        return f"10.203.{self.index}.2"

    @property
    def host_addr(self) -> str:
        return f"10.203.{self.index}.1"

    @property
    def enter(self) -> tuple[str, ...]:
        return ("nsenter", f"--net=/run/netns/{self.name}")

    @classmethod
    def create(cls, etc: Path) -> Netns:
        index = os.getpid() % 200 + 20
        ns = cls(f"cpt-{os.getpid()}", index, etc)
        ns.delete()
        host_if, ns_if = f"cph{index}", f"cpn{index}"
        for argv in (["ip", "netns", "add", ns.name],
                     ["ip", "-n", ns.name, "link", "set", "lo", "up"],
                     ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
                     ["ip", "link", "set", ns_if, "netns", ns.name],
                     ["ip", "addr", "add", f"{ns.host_addr}/24", "dev", host_if],
                     ["ip", "link", "set", host_if, "up"],
                     ["ip", "-n", ns.name, "addr", "add", f"{ns.addr}/24", "dev", ns_if],
                     ["ip", "-n", ns.name, "link", "set", ns_if, "up"]):
            run(argv, timeout=20)
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n::1 localhost\n{ns.addr} {REGISTRY_NAME}\n")
        (etc / "docker" / "certs.d").mkdir(parents=True, exist_ok=True)
        return ns

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, timeout=20)
        subprocess.run(["ip", "link", "delete", f"cph{self.index}"], capture_output=True, timeout=20)

    def certs_d(self, registry: str) -> Path:
        """The engine's ``/etc/docker/certs.d/REGISTRY`` (this test's copy of it)."""
        return self.etc / "docker" / "certs.d" / registry


@dataclass
class Engine:
    netns: Netns
    run_dir: Path
    proc: subprocess.Popen[bytes]
    log: Path
    client_config: Path  # the docker client's --config (login credentials)
    env: dict[str, str] = field(default_factory=dict)
    state_lock: int | None = None  # the descriptor holding STATE's lock while this engine runs

    @property
    def sock(self) -> str:
        return f"unix://{self.run_dir}/docker.sock"

    def docker(self, *args: str, timeout: float = 300, check: bool = True,
               input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        return run([DOCKER, "--config", str(self.client_config), "-H", self.sock, *args],
                   timeout=timeout, check=check, input=input)

    def compose(self, project: str, files: Sequence[Path], *args: str, env: Mapping[str, str] | None = None,
                timeout: float = 300, check: bool = True,
                input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        argv = ["docker-compose", "-p", project]
        for f in files:
            argv += ["-f", str(f)]
        full_env = {**os.environ, "DOCKER_HOST": self.sock, **(env or {})}
        return run([*argv, *args], timeout=timeout, check=check, env=full_env, cwd=Path(files[0]).parent,
                   input=input)

    def inspect(self, name: str) -> dict[str, object]:
        data: list[dict[str, object]] = json.loads(self.docker("inspect", name).stdout)
        return data[0]

    def health(self, name: str) -> str:
        return self.docker("inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip()

    def wait_healthy(self, name: str, timeout: float = 90) -> float:
        """Seconds from now until ``name``'s HEALTHCHECK says healthy."""
        start = time.monotonic()
        status = ""
        while time.monotonic() - start < timeout:
            status = self.health(name)
            if status == "healthy":
                return time.monotonic() - start
            if status == "unhealthy":
                break
            time.sleep(0.25)
        probes = self.docker("inspect", "-f", "{{json .State.Health}}", name, check=False).stdout
        logs = self.docker("logs", "--tail", "30", name, check=False)
        raise EngineError(f"{name} is {status or 'not running'} after {time.monotonic() - start:.0f} s: "
                          f"{probes[-1500:]}\n{logs.stdout[-1500:]}{logs.stderr[-1500:]}")

    def clean(self) -> None:
        """Remove containers, volumes, networks and the images tests made (1 GiB and more
        a run); the stand-ins and the certproxy image stay, as the cache of the next run."""
        ids = self.docker("ps", "-aq").stdout.split()
        if ids:
            self.docker("rm", "-f", "-v", *ids)
        self.docker("volume", "prune", "-f")
        self.docker("network", "prune", "-f")
        listed = self.docker("images", "--format", "{{.Repository}} {{.ID}}").stdout.splitlines()
        made = {line.split()[1] for line in listed if line.split()[0] not in KEPT_IMAGES}
        if made:  # by ID: some have no tag left; a shared parent may refuse, the prune gets it
            self.docker("rmi", "-f", *sorted(made), check=False)
        self.docker("image", "prune", "-f")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.clean()
            except (EngineError, subprocess.TimeoutExpired):
                pass
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.netns.delete()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        if self.state_lock is not None:
            os.close(self.state_lock)  # the next engine (of this run or another) may start
            self.state_lock = None


def start_engine(*, iptables: bool = False) -> Engine:
    """Start dockerd in a new network namespace; raise EngineError with the reason if it cannot.

    ``iptables``: let dockerd manage the namespace's iptables (NAT for published
    ports, and what a swarm's service ports need); off, as the compose tests run.
    """
    for tool in ("dockerd", "nsenter", "unshare", "ip", "docker-compose", DOCKER):
        if shutil.which(tool) is None:
            raise EngineError(f"{tool} is not installed (scripts/install-system-deps.sh installs it)")
    STATE.mkdir(parents=True, exist_ok=True)
    lock = _lock_state()
    try:
        _stop_stale(STATE / "dockerd.pid")  # under the lock: a dockerd left by an interrupted run
        run_dir = Path(f"/run/cpt-{os.getpid()}")  # short: unix socket paths have a length limit
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        netns = Netns.create(run_dir / "etc")
    except BaseException:
        os.close(lock)
        raise
    script = run_dir / "dockerd.sh"
    script.write_text(
        "#!/bin/sh\nset -e\n"
        f"mount --bind {netns.etc / 'hosts'} /etc/hosts\n"
        f"mkdir -p /etc/docker && mount --bind {netns.etc / 'docker'} /etc/docker\n"
        f"exec dockerd --storage-driver=overlay2 {'--iptables=true' if iptables else '--iptables=false --bridge=none'}"
        f" --data-root {STATE / 'data'} --exec-root {run_dir / 'exec'} --host unix://{run_dir}/docker.sock"
        f" --pidfile {STATE / 'dockerd.pid'}\n")
    script.chmod(0o755)
    log = run_dir / "dockerd.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([*netns.enter, "unshare", "--mount", "--propagation", "slave", str(script)],
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    config = run_dir / "client"
    config.mkdir()
    engine = Engine(netns, run_dir, proc, log, config, state_lock=lock)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]  # stop() removes the run folder, log and all
            engine.stop()
            raise EngineError(f"dockerd exited with {proc.returncode}:\n{tail}")
        if engine.docker("version", check=False, timeout=10).returncode == 0:
            try:
                engine.clean()
            except BaseException:
                engine.stop()  # never leave a daemon or a namespace behind
                raise
            return engine
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-3000:]
    engine.stop()
    raise EngineError(f"dockerd did not answer within 60 s:\n{tail}")


def _lock_state(timeout: float = 1800) -> int:
    """STATE is one per machine: an engine of another test run (another checkout's
    `make test`) holds it until it stops; this one waits for it instead of stopping it."""
    fd = os.open(STATE / "engine.lock", os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise EngineError(f"another test run's Docker engine has held {STATE} for {timeout:.0f} s") from None
            time.sleep(1)


def _stop_stale(pidfile: Path) -> None:
    """A dockerd left by an interrupted run holds the data root: stop it first."""
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.2)
