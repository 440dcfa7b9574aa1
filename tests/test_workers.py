"""CERTPROXY_WORKERS: several processes on the same ports (SO_REUSEPORT), one of
them maintaining certificates, every one of them reloading, all drained by one
SIGTERM to the parent."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from conftest import write_live
from support.pebble import start_pebble
from support.procs import CertproxyProcess, free_port, start_certproxy, stop_process, tcp_open, wait_for
from support.registry import Registry

pytestmark = pytest.mark.integration


def start_workers(tmp: Path, routes: dict[int, str], store: Path, count: int = 2,
                  extra_env: dict[str, str] | None = None) -> CertproxyProcess:
    """certproxy with ``count`` workers, every one listening (start_certproxy waits for them)."""
    return start_certproxy(tmp, routes, store, extra_env={"CERTPROXY_WORKERS": str(count), **(extra_env or {})})


def worker_of_new_connection(port: int, ctx: ssl.SSLContext) -> tuple[int, int, str]:
    """(worker index, pid, serial served) as one new TLS connection finds them: its own
    certificate, and /healthz asked on that connection (full report: loopback client)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as conn:
        der = conn.getpeercert(binary_form=True)
        assert der is not None
        serial = format(x509.load_der_x509_certificate(der).serial_number, "x")
        conn.sendall(f"GET /healthz HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    return body["worker"]["index"], body["worker"]["pid"], serial


def workers_serving(port: int, ctx: ssl.SSLContext, serial: str, timeout: float = 10) -> set[int]:
    """The workers (of two) seen serving ``serial`` on new connections within ``timeout``."""
    serving: set[int] = set()
    deadline = time.monotonic() + timeout
    while serving != {0, 1} and time.monotonic() < deadline:
        index, _, served = worker_of_new_connection(port, ctx)
        if served == serial:
            serving.add(index)
    return serving


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_two_workers_share_the_ports_and_each_says_which_it_is(
        registry: Registry, store: Path, client_ssl: ssl.SSLContext, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    while admin + 1 == port:
        admin = free_port()
    cp = start_workers(tmp_path, {port: registry.url}, store, extra_env={"CERTPROXY_ADMIN_PORT": str(admin)})
    try:
        pids = children(cp.pid)
        assert len(pids) == 2
        seen = {}
        deadline = time.monotonic() + 20
        while len(seen) < 2 and time.monotonic() < deadline:
            index, pid, _ = worker_of_new_connection(port, client_ssl)
            seen[index] = pid
        assert seen.keys() == {0, 1} and sorted(seen.values()) == sorted(pids)
        instances = set()
        for index in (0, 1):  # one admin port per worker, ADMIN_PORT + index
            with urllib.request.urlopen(f"http://127.0.0.1:{admin + index}/metrics", timeout=10) as r:
                text = r.read().decode()
            line = re.search(r'^certproxy_worker\{count="2",index="(\d)",instance="([0-9a-f]{8})",pid="(\d+)"\} 1.0$',
                             text, re.M)
            assert line is not None, text
            assert (int(line[1]), int(line[3])) == (index, seen[index])
            instances.add(line[2])
        assert len(instances) == 2  # each process names itself
    finally:
        assert stop_process(cp.proc) == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)


def test_every_worker_reloads_a_new_certificate(registry: Registry, store: Path, ca: trustme.CA,
                                                client_ssl: ssl.SSLContext, tmp_path: Path) -> None:
    port = free_port()
    cp = start_workers(tmp_path, {port: registry.url}, store)
    try:
        before = {worker_of_new_connection(port, client_ssl)[2] for _ in range(6)}
        assert len(before) == 1
        leaf = write_live(store, "localhost", ca, "localhost", "127.0.0.1")
        new = format(x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number, "x")
        fresh = workers_serving(port, client_ssl, new)
        assert fresh == {0, 1}, f"serving the new certificate: workers {sorted(fresh)}"
    finally:
        stop_process(cp.proc)


async def test_sigterm_drains_every_worker(registry: Registry, store: Path, client_ssl: ssl.SSLContext,
                                           tmp_path: Path) -> None:
    """A slow upload in flight on each worker finishes after SIGTERM to the parent; then all exit 0."""
    from test_shutdown import in_registry, slow_push, under_way

    port = free_port()
    cp = await asyncio.to_thread(start_workers, tmp_path, {port: registry.url}, store)
    pids = children(cp.pid)
    sending = [asyncio.Event() for _ in range(4)]
    pushes = [asyncio.create_task(slow_push(port, client_ssl, f"workers/p{i}", 24, 0.05, sending[i]))
              for i in range(4)]
    # SIGTERM once every upload is under way (a busy machine may take a while to connect them).
    await under_way(pushes, sending)
    cp.proc.send_signal(signal.SIGTERM)
    results = await asyncio.gather(*pushes)
    assert await asyncio.to_thread(cp.proc.wait, 30) == 0
    assert [status for _, status in results] == [201] * 4
    for i, (digest, _) in enumerate(results):
        assert await asyncio.to_thread(in_registry, registry, f"workers/p{i}", digest)
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)


def test_a_start_up_mistake_is_reported_once_and_nothing_stays(store: Path, tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    taken = busy.getsockname()[1]
    try:
        cp = start_certproxy(tmp_path, {free_port(): "http://127.0.0.1:9"}, store, wait=False,
                             extra_env={"CERTPROXY_WORKERS": "3", "CERTPROXY_ADMIN_PORT": str(taken)})
        assert cp.proc.wait(30) == 2
    finally:
        busy.close()
    lines = [line for line in cp.output().splitlines() if line.startswith("certproxy: ")]
    assert len(lines) == 1 and "CERTPROXY_ADMIN_PORT" in lines[0], cp.output()[-2000:]


def test_a_worker_that_dies_stops_the_set(registry: Registry, store: Path, tmp_path: Path) -> None:
    """The parent does not run on with fewer workers: it stops the rest and exits non-zero,
    so the container's restart policy starts the whole set again."""
    cp = start_workers(tmp_path, {free_port(): registry.url}, store)
    pids = children(cp.pid)
    os.kill(pids[1], signal.SIGKILL)
    assert cp.proc.wait(30) != 0
    assert "exited with -9: stopping the other workers" in cp.output()
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)


def test_workers_get_one_acme_certificate_and_all_serve_it(store: Path, client_ssl: ssl.SSLContext,
                                                          tmp_path: Path, registry: Registry) -> None:
    """Only worker 0 orders (one order at Pebble); every worker serves the result."""
    ca = trustme.CA()
    http_port = free_port()
    pebble = start_pebble(tmp_path, ca, http_port)
    empty = tmp_path / "acme-store"
    port = free_port()
    try:
        cp = start_certproxy(tmp_path, {port: registry.url}, empty, http_port=http_port, wait=False, extra_env={
            "CERTPROXY_WORKERS": "2", "CERTPROXY_DOMAINS": "localhost",
            "CERTPROXY_ACME_DIRECTORY": pebble.directory, "CERTPROXY_ACME_CA_BUNDLE": str(pebble.ca_bundle),
            "CERTPROXY_ACME_RETRY_MIN": "1"})
        try:
            wait_for(lambda: "2 workers serving" in cp.output(), 20, "workers", cp.proc, cp.log)
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            live = empty / "live" / "localhost" / "fullchain.pem"
            wait_for(live.exists, 60, "the Pebble certificate", cp.proc, cp.log)
            issued = format(x509.load_pem_x509_certificate(live.read_bytes()).serial_number, "x")
            assert workers_serving(port, ctx, issued) == {0, 1}
            assert pebble.log.read_text().count("Issued certificate serial") == 1
        finally:
            stop_process(cp.proc)
    finally:
        pebble.stop()


def test_workers_setting_is_checked() -> None:
    out = subprocess.run([sys.executable, "-m", "certproxy", "serve"], capture_output=True, text=True, timeout=30,
                         env={**{k: v for k, v in os.environ.items() if not k.startswith("CERTPROXY_")},
                              "CERTPROXY_WORKERS": "many"}, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 2
    assert out.stderr.strip() == ("certproxy: CERTPROXY_WORKERS: 'many' is not a number of workers "
                                  "from 1 to 64 (or auto)")



def test_serve_raises_the_open_file_limit_a_host_gave_it(store: Path, tmp_path: Path) -> None:
    """A soft limit of 1024 (common for services) is below the 4096-connection cap: it is
    raised to the hard limit at start, so the cap's 503 comes before EMFILE."""
    import resource

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 20000))

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTPROXY_")}
    env.update({"CERTPROXY_STORE": str(store), "CERTPROXY_BIND": "127.0.0.1", "CERTPROXY_HTTP_PORT": "off",
                "CERTPROXY_ROUTES": f"{port}=http://127.0.0.1:9"})
    proc = subprocess.Popen([sys.executable, "-m", "certproxy", "serve"], env=env, preexec_fn=low_soft_limit,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])
    try:
        wait_for(lambda: tcp_open(port), 20, "certproxy", proc)
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        assert line.split()[3:5] == ["20000", "20000"], line
    finally:
        stop_process(proc)


def healthcheck(env: dict[str, str], socket_path: Path) -> tuple[int, str]:
    """``certproxy healthcheck`` as a container's HEALTHCHECK runs it, with the admin socket."""
    out = subprocess.run([sys.executable, "-m", "certproxy", "healthcheck"], capture_output=True, text=True,
                         timeout=20, env={**env, "CERTPROXY_ADMIN_SOCKET": str(socket_path)})
    return out.returncode, out.stdout + out.stderr


def test_replicas_on_one_host_share_the_ports_and_each_health_check_asks_its_own(
        registry: Registry, store: Path, client_ssl: ssl.SSLContext, tmp_path: Path) -> None:
    """Replicas on one host network (swarm or compose with network_mode: host):
    CERTPROXY_SHARE_PORTS lets separate certproxy processes, not forked from one
    parent, open the same ports; each one's admin socket answers for it alone, which
    a health check through the shared port could not promise."""
    port, http_port = free_port(), free_port()
    sockets = [tmp_path / "a.sock", tmp_path / "b.sock"]
    replicas: list[CertproxyProcess] = []
    try:
        for i, sock in enumerate(sockets):
            (tmp_path / str(i)).mkdir()
            replicas.append(start_certproxy(
                tmp_path / str(i), {port: registry.url}, store, http_port=http_port,
                extra_env={"CERTPROXY_SHARE_PORTS": "1", "CERTPROXY_ADMIN_SOCKET": str(sock)}))
        assert all(cp.wait_output("sharing its ports with other replicas") for cp in replicas)
        instances = []
        for cp, sock in zip(replicas, sockets, strict=True):
            code, out = healthcheck(cp.env, sock)
            assert code == 0, out
            status = subprocess.run([sys.executable, "-m", "certproxy", "status", "--json"], capture_output=True,
                                    text=True, timeout=20, env={**cp.env, "CERTPROXY_ADMIN_SOCKET": str(sock)})
            assert status.returncode == 0, status.stderr
            instances.append(json.loads(status.stdout)["worker"]["instance"])
        assert len(set(instances)) == 2  # each socket reached its own process

        # New connections on the shared ports reach both, TLS and plain alike.
        seen: set[str] = set()
        deadline = time.monotonic() + 20
        while seen != set(instances) and time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5) as r:
                seen.add(json.loads(r.read())["worker"]["instance"])
        assert seen == set(instances)

        # A process without the setting cannot join: the port is taken, in one line.
        intruder = start_certproxy(tmp_path, {port: registry.url}, store, http_port=http_port, wait=False)
        assert intruder.proc.wait(20) == 2
        assert f"port {http_port} is already in use" in intruder.output()

        # One replica stops: its socket is gone and its check fails; the other serves on.
        stop_process(replicas[0].proc)
        assert not sockets[0].exists()
        code, out = healthcheck(replicas[0].env, sockets[0])
        assert code != 0 and "No such file" in out, out
        assert healthcheck(replicas[1].env, sockets[1])[0] == 0
        for _ in range(10):  # every new connection now lands on the survivor
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5) as r:
                assert json.loads(r.read())["worker"]["instance"] == instances[1]
    finally:
        for cp in replicas:
            stop_process(cp.proc)


def test_admin_socket_that_cannot_be_made_is_refused_in_one_line(
        registry: Registry, store: Path, tmp_path: Path) -> None:
    taken = tmp_path / "not-a-socket"
    taken.write_text("an operator's file\n")
    cp = start_certproxy(tmp_path, {free_port(): registry.url}, store, wait=False,
                         extra_env={"CERTPROXY_ADMIN_SOCKET": str(taken)})
    assert cp.proc.wait(20) == 2
    assert f"CERTPROXY_ADMIN_SOCKET: cannot listen on {taken}: {taken} exists and is not a socket" \
        in cp.output(), cp.output()
    assert taken.read_text() == "an operator's file\n"  # never replaced
