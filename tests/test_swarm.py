"""certproxy as replicas on Docker Swarm: ``compose/docker-stack.yml`` deployed with
``docker stack deploy`` on a single-node swarm of the test's own engine, with Pebble
as the CA and every replica on one store volume.

What this engine cannot run, and what stands in for it (each a property of this
machine, not of the stack file):

- **The routing mesh.** Swarm's ingress and service addresses (VIPs) need IPVS,
  which this kernel lacks (``CONFIG_IP_VS`` is not set; ``/proc/net/ip_vs`` does
  not exist), so a published port of the mesh accepts nothing. The replicas run
  on the host network instead (the namespace's), sharing ports 80, 443 and 5000
  with ``SO_REUSEPORT`` (``CERTPROXY_SHARE_PORTS=1``): the kernel spreads new
  connections over them as the mesh would. The registry and the UI, reached by
  name over the overlay network in the stack file, are published on the node
  (``mode: host``) and resolved by DNS round robin (``endpoint_mode: dnsrr``).
- **NFS.** This kernel has no NFS client (``CONFIG_NFS_FS`` is not set): the store
  volume is the same ``local`` driver with a bind of one folder instead of an NFS
  mount, which every replica on this one node shares as replicas on many nodes
  share the export.
- **S3.** No S3 service runs here: the registry keeps its blobs on a volume (one
  replica; the shared ``REGISTRY_HTTP_SECRET`` is kept as the file sets it).
- **Docker Hub.** Images are the local stand-ins and the image built from this
  repository (``--resolve-image never``).

Everything else is the shipped file: three replicas, start-first rolling updates,
the HEALTHCHECK through each replica's own admin socket, the limits.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from cryptography import x509

from certproxy.certs.pair import serial_hex
from support.engine import REGISTRY_NAME, REPO, Engine, EngineError, start_engine
from support.pebble import Pebble, start_pebble
from support.standins import build_image, ensure_standins
from support.tlsprobe import peer_certificate, verifies

pytestmark = [pytest.mark.integration, pytest.mark.container]

IMAGE = "localhost/certproxy:latest"
NEXT_IMAGE = "localhost/certproxy:next"  # the rolling update's "new version"
STACK = "cps"
SERVICE = f"{STACK}_certproxy"
REGISTRY_PORT, UI_PORT = 5001, 8080  # the registry and the UI, published on the node
STORE_VOLUME = f"{STACK}-store-{os.getpid()}-{int(time.time())}"  # a new volume every run
VALIDITY = 20  # seconds: Pebble's certificates, renewed in their last half


def stack_for_this_engine(shipped: dict[str, Any], store: Path, pebble_ca: Path) -> dict[str, Any]:
    """The shipped stack with the substitutions the module docstring lists, and the test's
    CA trust and shorter intervals; nothing else changes."""
    stack = copy.deepcopy(shipped)
    cp = stack["services"]["certproxy"]
    del cp["ports"], cp["sysctls"]  # the host network: the namespace's own sysctl instead
    cp["networks"] = ["hostnet"]
    cp["environment"].update({
        "CERTPROXY_SHARE_PORTS": "1",
        "CERTPROXY_ROUTES": f"443=http://127.0.0.1:{UI_PORT},5000=http://127.0.0.1:{REGISTRY_PORT}",
        "CERTPROXY_ACME_CA_BUNDLE": "/pebble/ca.pem",  # Pebble's API certificate is the test's
        "CERTPROXY_ACME_RETRY_MIN": "2",
    })
    cp["volumes"].append(f"{pebble_ca}:/pebble:ro")
    cp["healthcheck"].update({"interval": "1s", "start_period": "5s"})
    cp["deploy"]["update_config"].update({"delay": "0s", "monitor": "2s"})
    reg = stack["services"]["registry"]
    for key in [k for k in reg["environment"] if k.startswith("REGISTRY_STORAGE")]:
        del reg["environment"][key]
    reg["environment"]["REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY"] = "/var/lib/registry"
    reg["volumes"] = ["registry-data:/var/lib/registry"]
    reg["deploy"].update({"replicas": 1, "endpoint_mode": "dnsrr"})
    reg["ports"] = [{"target": 5000, "published": REGISTRY_PORT, "protocol": "tcp", "mode": "host"}]
    ui = stack["services"]["registry-ui"]
    ui["deploy"]["endpoint_mode"] = "dnsrr"
    ui["ports"] = [{"target": 80, "published": UI_PORT, "protocol": "tcp", "mode": "host"}]
    stack["volumes"]["certproxy-store"] = {  # named after the run: never a volume an earlier run left
        "name": STORE_VOLUME, "driver": "local",
        "driver_opts": {"type": "none", "o": "bind", "device": str(store)}}
    stack["volumes"]["registry-data"] = {}
    stack["networks"] = {"hostnet": {"external": True, "name": "host"}}
    return stack


@dataclass
class Sample:
    t: float
    instance: str
    serial: str


@dataclass
class Observer:
    """What the replicas serve, as the kernel's spreading of new connections shows it
    (``support/healthz_sampler.py`` in the namespace), and what the store holds."""

    engine: Engine
    store_cert: Path
    samples: list[Sample] = field(default_factory=list)
    store_history: list[tuple[float, str]] = field(default_factory=list)  # (first seen, serial)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*self.engine.netns.enter, sys.executable, str(REPO / "tests/support/healthz_sampler.py"),
             "80", "0.01", "600"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._threads = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=self._watch_store, daemon=True)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for t in self._threads:
            t.join(10)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            data = json.loads(line)
            if "error" in data:
                self.errors.append(data["error"])
            elif data["instance"] and data["serial"]:
                self.samples.append(Sample(data["t"], data["instance"], data["serial"]))

    def _watch_store(self) -> None:
        while not self._stop.wait(0.02):
            try:
                cert = x509.load_pem_x509_certificate(self.store_cert.read_bytes())
            except (OSError, ValueError):
                continue
            serial = serial_hex(cert.serial_number)
            if not self.store_history or self.store_history[-1][1] != serial:
                self.store_history.append((time.time(), serial))

    def instances_since(self, t: float) -> set[str]:
        return {s.instance for s in self.samples if s.t >= t}

    def first_served(self, serial: str) -> dict[str, float]:
        """Each instance's first answer with ``serial``."""
        first: dict[str, float] = {}
        for s in self.samples:
            if s.serial == serial and s.instance not in first:
                first[s.instance] = s.t
        return first

    def live_at(self, t: float) -> set[str]:
        """Serials a replica may serve at ``t``: the store's (its watcher polls every 20 ms,
        so a change counts from 0.2 s before it was seen), and the one before it for a
        second after a change (the reload's allowance)."""
        changes = [(seen, serial) for seen, serial in self.store_history if seen - 0.2 <= t]
        allowed = {serial for _, serial in changes[-1:]}
        if len(changes) >= 2 and t - changes[-1][0] < 1.0:
            allowed.add(changes[-2][1])
        return allowed


def wait_until(check, timeout: float, what: str, poll: float = 0.25,  # type: ignore[no-untyped-def]
               explain=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(poll)
    raise AssertionError(f"{what}: not within {timeout} s\n{explain()}")


def explain(swarm: Swarm) -> str:
    """What the tasks and Pebble said last, for a failure message."""
    lines = []
    for name, text in task_logs(swarm.engine).items():
        interesting = [ln for ln in text.splitlines() if "certproxy.access" not in ln]
        lines += [f"--- {name}", *interesting[-15:]]
    lines += ["--- pebble", *swarm.pebble.log.read_text(errors="replace").splitlines()[-15:]]
    return "\n".join(lines)


def certproxy_tasks(engine: Engine) -> list[dict[str, Any]]:
    """The running certproxy containers of the service, as ``docker inspect`` shows them."""
    ids = engine.docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={SERVICE}").stdout.split()
    return [engine.inspect(i) for i in ids]


def healthy_tasks(engine: Engine, image: str | None = None) -> int:
    """Running certproxy tasks whose HEALTHCHECK says healthy (of ``image``, when given)."""
    return sum(1 for c in certproxy_tasks(engine)
               if c["State"].get("Health", {}).get("Status") == "healthy"
               and image in (None, c["Config"]["Image"]))


def task_logs(engine: Engine) -> dict[str, str]:
    """Each certproxy task's log, running or stopped, by container name (``docker logs``
    reads the local files; ``docker service logs`` is too slow for thousands of lines)."""
    ids = engine.docker("ps", "-aq", "--filter", f"label=com.docker.swarm.service.name={SERVICE}").stdout.split()
    logs = {}
    for cid in ids:
        out = engine.docker("logs", cid, check=False, timeout=60)
        logs[engine.inspect(cid)["Name"]] = out.stdout + out.stderr
    return logs


@dataclass
class Swarm:
    engine: Engine
    pebble: Pebble
    store: Path
    observer: Observer
    roots: bytes
    stack_file: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory, measure) -> Iterator[Swarm]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("swarm")
    try:
        engine = start_engine(iptables=True)
    except EngineError as e:
        pytest.fail(f"the Docker engine could not start: {e}")
    pebble = None
    observer = None
    try:
        ensure_standins(engine)
        build_image(engine, IMAGE)
        # Sysctls of the namespace (the "host" of the host network): what the README asks of
        # a host whose replicas share ports as a non-root user.
        for sysctl in ("net.ipv4.ip_unprivileged_port_start=0", "net.ipv4.tcp_migrate_req=1"):
            subprocess.run([*engine.netns.enter, "sysctl", "-qw", sysctl], check=True, timeout=20)
        engine.docker("swarm", "init", "--advertise-addr", "127.0.0.1")
        pebble = start_pebble(tmp, trustme.CA(), 80, validity=VALIDITY, listen=engine.netns.addr,
                              names_resolve_to=engine.netns.addr, prefix=engine.netns.enter)
        trust = tmp / "pebble-ca"
        trust.mkdir(mode=0o755)
        (trust / "ca.pem").write_bytes(pebble.ca_bundle.read_bytes())
        (trust / "ca.pem").chmod(0o644)
        store = tmp / "store"
        store.mkdir(mode=0o700)
        os.chown(store, 10001, 10001)  # the image's user owns the export
        shipped = yaml.safe_load((REPO / "compose" / "docker-stack.yml").read_text())
        stack_file = tmp / "docker-stack.yml"
        stack_file.write_text(yaml.safe_dump(stack_for_this_engine(shipped, store, trust)))
        env = {**os.environ, "DOCKER_HOST": engine.sock, "CERTPROXY_IMAGE": IMAGE,
               "CERTPROXY_DOMAINS": REGISTRY_NAME, "CERTPROXY_EMAIL": "ops@certproxy.test",
               "CERTPROXY_STAGING": "0", "CERTPROXY_ACME_DIRECTORY": pebble.directory,
               "REGISTRY_HTTP_SECRET": "9f1c2e4b6a8d0f1e3c5a7b9d2f4e6a8c", "S3_ACCESS_KEY": "-",
               "S3_SECRET_KEY": "-", "NFS_SERVER": "-"}
        observer = Observer(engine, store / "live" / REGISTRY_NAME / "fullchain.pem")
        observer.start()
        started = time.monotonic()
        deploy = subprocess.run(["/usr/bin/docker", "-H", engine.sock, "stack", "deploy", "--resolve-image",
                                 "never", "-c", str(stack_file), STACK], env=env, capture_output=True,
                                text=True, timeout=120)
        assert deploy.returncode == 0, deploy.stderr
        try:
            wait_until(lambda: healthy_tasks(engine) == 3, 120, "3 healthy certproxy tasks")
        except AssertionError:
            ps = engine.docker("service", "ps", "--no-trunc", SERVICE, check=False).stdout
            logs = "".join(text[-1500:] for text in task_logs(engine).values())
            raise AssertionError(f"3 healthy tasks: not within 120 s\n{ps}\n{logs}") from None
        measure("swarm: `docker stack deploy` to 3 healthy certproxy tasks", f"{time.monotonic() - started:.1f} s")
        yield Swarm(engine, pebble, store, observer, pebble.roots_pem(), stack_file, env)
    finally:
        if observer is not None:
            observer.stop()
        subprocess.run(["/usr/bin/docker", "-H", engine.sock, "stack", "rm", STACK], capture_output=True,
                       timeout=60)
        deadline = time.monotonic() + 60  # stack rm returns before the tasks are gone
        while time.monotonic() < deadline:
            left = engine.docker("ps", "-aq", "--filter", f"label=com.docker.stack.namespace={STACK}",
                                 check=False).stdout.split()
            if not left:
                break
            engine.docker("rm", "-f", *left, check=False)  # no need to wait for their drain here
            time.sleep(0.5)
        engine.docker("volume", "rm", "-f", STORE_VOLUME, check=False)  # it names this run's folder
        engine.docker("swarm", "leave", "--force", check=False, timeout=60)
        if pebble is not None:
            pebble.stop()
        engine.stop()


def pebble_served(swarm: Swarm) -> bool:
    """Whether a new connection to the registry port finds a certificate from Pebble."""
    return verifies(5000, REGISTRY_NAME, roots=swarm.roots, address=swarm.engine.netns.addr)


def tls_serial(engine: Engine, roots: bytes) -> str:
    """The serial a new connection to the registry port finds, verified against ``roots``."""
    cert = peer_certificate(5000, REGISTRY_NAME, roots=roots, address=engine.netns.addr)
    return serial_hex(cert.serial_number)


def test_three_replicas_one_order_each_time_and_all_serve_the_renewal_within_a_second(
        swarm: Swarm, measure) -> None:  # type: ignore[no-untyped-def]
    obs, engine = swarm.observer, swarm.engine
    # Issuance: the first certificate, ordered by one replica, served by every one.
    wait_until(lambda: obs.store_history, 60, "a certificate in the store", explain=lambda: explain(swarm))
    first = obs.store_history[0][1]
    replicas = wait_until(lambda: len(set(obs.first_served(first))) == 3 and set(obs.first_served(first)),
                          30, "all 3 replicas serving the first certificate")
    assert len(replicas) == 3
    # Renewal (certificates of 40 s, renewed in their last half): the next one.
    wait_until(lambda: len(obs.store_history) >= 2, VALIDITY * 1.5, "a renewed certificate in the store")
    renewed_at, renewed = obs.store_history[1]
    wait_until(lambda: set(obs.first_served(renewed)) >= replicas, 10, "every replica serving the renewal")
    lags = {i: t - renewed_at for i, t in obs.first_served(renewed).items() if i in replicas}
    assert max(lags.values()) < 1.0, lags
    # Exactly one order per certificate, whichever replica ordered it.
    issued = swarm.pebble.log.read_text().count("Issued certificate serial")
    logs = task_logs(engine)
    orders = sum(text.count("ordering a certificate") for text in logs.values())
    assert orders == issued and issued >= 2, (orders, issued)
    # Pebble's HTTP-01 requests landed on whichever replica the kernel chose, and each was
    # answered from the shared store: every validation succeeded (issued == orders), and
    # the logs say which task answered each and which ordered.
    assert pebble_served(swarm)
    by_task = challenge_answers(logs)
    assert sum(n for _, n in by_task.values()) >= issued, by_task
    elsewhere = sum(answered for ordered, answered in by_task.values() if not ordered)
    # And deterministically: a challenge answer put into the shared store is served by every
    # replica, not only by the one that wrote it (30 new connections reach all three).
    token = "swarm-check-" + os.urandom(6).hex()
    answer = swarm.store / "challenges" / token
    answer.write_bytes(b"answer-from-the-store")
    os.chown(answer, 10001, 10001)
    for _ in range(30):
        with urllib.request.urlopen(f"http://{engine.netns.addr}/.well-known/acme-challenge/{token}",
                                    timeout=10) as r:
            assert r.read() == b"answer-from-the-store"

    def answered() -> set[str]:  # access lines reach the log within a quarter of a second
        return {name for name, text in task_logs(engine).items() if f"/.well-known/acme-challenge/{token}" in text}

    wait_until(lambda: len(answered()) == 3, 10, "every replica answering the challenge from the store",
               explain=lambda: str(answered()))
    answer.unlink()
    measure("swarm: 3 replicas, certificates issued / ACME orders (all replicas together)", f"{issued} / {orders}")
    measure("swarm: HTTP-01 requests of Pebble answered by a replica that had not ordered / in all",
            f"{elsewhere} / {sum(n for _, n in by_task.values())}")
    measure("swarm: renewal written to the store -> served by each of 3 replicas, s",
            " / ".join(f"{lags[i]:.2f}" for i in sorted(lags)))


def challenge_answers(logs: dict[str, str]) -> dict[str, tuple[bool, int]]:
    """Per task: (whether it ordered a certificate, how many challenge requests it answered)."""
    return {name: ("ordering a certificate" in text,
                   sum(1 for line in text.splitlines() if "/.well-known/acme-challenge/" in line and '" 200 ' in line))
            for name, text in logs.items()}


def test_rolling_update_under_load_fails_no_request_and_every_task_is_healthy(
        swarm: Swarm, measure) -> None:  # type: ignore[no-untyped-def]
    engine = swarm.engine
    wait_until(lambda: pebble_served(swarm), 60, "a Pebble certificate served",
               explain=lambda: explain(swarm))
    replicas = len(certproxy_tasks(engine))
    engine.docker("build", "-t", NEXT_IMAGE, "-", input=f"FROM {IMAGE}\nLABEL org.certproxy.test=next\n".encode())
    ctx = ssl.create_default_context(cadata=swarm.roots.decode())
    done = threading.Event()
    results: dict[str, int] = {"ok": 0}
    failures: list[str] = []

    def loop() -> None:
        request = f"GET /v2/ HTTP/1.1\r\nHost: {REGISTRY_NAME}:5000\r\nConnection: close\r\n\r\n".encode()
        while not done.is_set():
            try:
                with socket.create_connection((engine.netns.addr, 5000), timeout=10) as raw, \
                        ctx.wrap_socket(raw, server_hostname=REGISTRY_NAME) as conn:
                    conn.sendall(request)
                    data = b""
                    while chunk := conn.recv(65536):
                        data += chunk
                status = data.split(b" ", 2)[1] if data.startswith(b"HTTP/1.1 ") else b"?"
                if status == b"200":
                    results["ok"] += 1
                else:
                    failures.append(f"status {status!r}: {data[:200]!r}")
            except (OSError, ssl.SSLError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=loop) for _ in range(2)]
    for t in threads:
        t.start()
    started = time.monotonic()
    try:
        update = engine.docker("service", "update", "--image", NEXT_IMAGE, SERVICE, timeout=300, check=False)
    finally:
        time.sleep(2)  # the last old task's drain ends under load too
        done.set()
        for t in threads:
            t.join(30)
    took = time.monotonic() - started
    assert update.returncode == 0, update.stderr
    assert not failures, f"{len(failures)} of {results['ok'] + len(failures)} requests failed: {failures[:5]}"
    assert results["ok"] >= 50, results
    assert healthy_tasks(engine, NEXT_IMAGE) == replicas
    assert healthy_tasks(engine, IMAGE) == 0
    ps = engine.docker("service", "ps", "--filter", "desired-state=running", "--format",
                       "{{.Image}} {{.CurrentState}}", SERVICE).stdout.splitlines()
    assert len(ps) == replicas and all(line.startswith(NEXT_IMAGE) and "Running" in line for line in ps), ps
    measure(f"swarm: start-first rolling update of {replicas} replicas under 2 request loops",
            f"{took:.1f} s, {results['ok']} requests, {len(failures)} failed")


def test_scaled_to_five_new_replicas_serve_the_live_certificate_at_once(
        swarm: Swarm, measure) -> None:  # type: ignore[no-untyped-def]
    obs, engine = swarm.observer, swarm.engine
    wait_until(lambda: pebble_served(swarm), 60, "a Pebble certificate served",
               explain=lambda: explain(swarm))
    # The three replicas in service now (a rolling update may have just replaced them).
    def current() -> set[str] | None:
        seen = obs.instances_since(time.time() - 2)
        return seen if len(seen) == 3 else None

    before = wait_until(current, 30, "three replicas answering")
    started = time.time()
    engine.docker("service", "scale", f"{SERVICE}=5", timeout=180)
    wait_until(lambda: healthy_tasks(engine, NEXT_IMAGE) == 5, 60, "5 healthy certproxy tasks")
    took = time.time() - started
    new = wait_until(lambda: len(obs.instances_since(started) - before) == 2 and
                     obs.instances_since(started) - before, 30, "both new replicas answering")
    for instance in new:
        firsts = [s for s in obs.samples if s.instance == instance]
        assert firsts[0].serial in obs.live_at(firsts[0].t), (instance, firsts[0], obs.store_history)
        assert not any(s.serial not in obs.live_at(s.t) for s in firsts), instance
    # New TLS connections land on all five; every one presents a live certificate that verifies.
    for _ in range(40):
        now = time.time()
        assert tls_serial(engine, swarm.roots) in obs.live_at(now) | obs.live_at(time.time())
    ps = engine.docker("service", "ps", "--filter", "desired-state=running", "--format",
                       "{{.Image}} {{.CurrentState}}", SERVICE).stdout.splitlines()
    assert len(ps) == 5 and all("Running" in line for line in ps), ps
    measure("swarm: `docker service scale` 3 -> 5, healthy after", f"{took:.1f} s; new replicas served the live "
            "certificate from their first answer")
