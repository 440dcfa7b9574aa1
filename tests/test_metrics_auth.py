"""/metrics on the admin listener, and basic auth in front of chosen routes."""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

import bcrypt
import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from support.procs import CertproxyProcess, free_port
from support.rawhttp import exchange, open_conn
from support.upstreams import RawUpstream, Recorded

from certproxy.certs.pair import serial_hex
from certproxy.service.auth import HtpasswdError, basic_credentials, make_entry, parse_htpasswd

Factory = Callable[..., CertproxyProcess]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict, metric: str, **labels: str) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.integration
async def test_metrics_count_what_happened(certproxy_factory: Factory, store: Path,
                                           client_ssl: ssl.SSLContext) -> None:
    async def respond(rec: Recorded, w: asyncio.StreamWriter) -> None:
        path = rec.request_line.split()[1]
        status, body = (b"404 Not Found", b"nope") if path == "/missing" else (b"200 OK", b"hello!")
        w.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    up = await RawUpstream(respond).start()
    port, admin = free_port(), free_port()
    await asyncio.to_thread(certproxy_factory, {port: up.url}, store,
                                 extra_env={"CERTPROXY_ADMIN_PORT": str(admin)})
    host = f"Host: localhost:{port}\r\n"
    for _ in range(7):
        assert (await exchange(port, f"GET /ok HTTP/1.1\r\n{host}\r\n".encode(), client_ssl)).status == 200
    for _ in range(2):
        assert (await exchange(port, f"GET /missing HTTP/1.1\r\n{host}\r\n".encode(), client_ssl)).status == 404
    resp = await exchange(port, f"POST /ok HTTP/1.1\r\n{host}Content-Length: 10\r\n\r\n0123456789".encode(),
                          client_ssl)
    assert resp.status == 200
    # Two handshakes that fail: a client that does not trust the certificate, and garbage.
    with pytest.raises(ssl.SSLError):
        await open_conn(port, ssl.create_default_context())
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    held_reader, held = await open_conn(port, client_ssl)  # an open connection

    samples = await asyncio.to_thread(scrape, admin)
    route = str(port)
    assert value(samples, "certproxy_requests_total", route=route, code="2xx") == 8
    assert value(samples, "certproxy_requests_total", route=route, code="4xx") == 2
    assert value(samples, "certproxy_request_body_bytes_total", route=route) == 10
    assert value(samples, "certproxy_response_body_bytes_total", route=route) == 8 * 6 + 2 * 4
    assert value(samples, "certproxy_upstream_response_seconds_count", route=route) == 10
    assert value(samples, "certproxy_active_connections", listener=route) >= 1
    leaf = x509.load_pem_x509_certificate((store / "live" / "localhost" / "fullchain.pem").read_bytes())
    serial = serial_hex(leaf.serial_number)
    assert value(samples, "certproxy_certificate_expiry_timestamp_seconds",
                 name="localhost", kind="live", serial=serial) == leaf.not_valid_after_utc.timestamp()
    assert value(samples, "certproxy_last_reload_timestamp_seconds") > time.time() - 60
    deadline = time.monotonic() + 10
    while value(samples, "certproxy_tls_handshake_failures_total", listener=route) < 2:
        assert time.monotonic() < deadline, "handshake failures not counted"
        await exchange(port, f"GET /ok HTTP/1.1\r\n{host}\r\n".encode(), client_ssl)  # lets GC run
        samples = await asyncio.to_thread(scrape, admin)
    held.close()
    # The admin listener is not on the public ports: /metrics there goes upstream.
    public = await exchange(port, f"GET /metrics HTTP/1.1\r\n{host}\r\n".encode(), client_ssl)
    assert public.body == b"hello!"
    await up.close()


def _auth_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.integration
async def test_basic_auth_guards_only_its_routes(certproxy_factory: Factory, store: Path,
                                                 client_ssl: ssl.SSLContext, tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(make_entry("alice", "s3cret", cost=5) + "\n")
    up = await RawUpstream().start()
    ui, reg = free_port(), free_port()
    cp = await asyncio.to_thread(certproxy_factory, {ui: up.url, reg: up.url}, store, extra_env={
        "CERTPROXY_AUTH_HTPASSWD": str(htpasswd), "CERTPROXY_AUTH_PORTS": str(ui)})

    async def get(port: int, auth: str | None) -> tuple[int, list[str]]:
        line = f"Authorization: {auth}\r\n" if auth else ""
        r = await exchange(port, f"GET /x HTTP/1.1\r\nHost: localhost:{port}\r\n{line}\r\n".encode(),
                           client_ssl)
        return r.status, r.header("WWW-Authenticate")

    assert await get(ui, None) == (401, ['Basic realm="certproxy", charset="UTF-8"'])
    assert (await get(ui, _auth_header("alice", "wrong")))[0] == 401
    assert (await get(ui, _auth_header("mallory", "s3cret")))[0] == 401
    assert (await get(ui, "Basic !!notbase64"))[0] == 401
    forwarded_before = len(up.forwarded)
    assert (await get(ui, _auth_header("alice", "s3cret")))[0] == 200
    assert len(up.forwarded) == forwarded_before + 1
    # Forwarded once checked (nginx's auth_basic does the same): the UI hands it on to
    # the registry, which checks the same htpasswd file, so one login covers both.
    assert up.forwarded[-1].header("Authorization") == [_auth_header("alice", "s3cret")]
    # The registry's route has its own auth: Authorization passes untouched.
    assert (await get(reg, "Bearer registry-token"))[0] == 200
    assert up.forwarded[-1].header("Authorization") == ["Bearer registry-token"]
    # A changed file is picked up without a restart.
    htpasswd.write_text(make_entry("alice", "s3cret", cost=5) + "\n" + make_entry("bob", "pw2", cost=5) + "\n")
    deadline = time.monotonic() + 5
    while (await get(ui, _auth_header("bob", "pw2")))[0] != 200:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.3)
    assert "s3cret" not in cp.output()
    await up.close()


def test_htpasswd_entries_must_be_bcrypt(tmp_path: Path) -> None:
    line = subprocess.run(["htpasswd", "-Bbn", "carol", "pw"], capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()
    users = parse_htpasswd(line, "f")
    assert bcrypt.checkpw(b"pw", users["carol"])  # htpasswd -B writes $2y$
    for weak in ("dave:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "erin:$apr1$abc$defghijklmnopqrstuv",
                 "frank:plaintext", "nocolon"):
        with pytest.raises(HtpasswdError):
            parse_htpasswd(weak, "f")
    assert basic_credentials(_auth_header("a", "b:c")) == ("a", "b:c")
    assert basic_credentials("Bearer x") is None and basic_credentials(None) is None
    weak_file = tmp_path / "weak"
    weak_file.write_text("dave:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
    env = {"PATH": os.environ["PATH"], "CERTPROXY_STORE": str(tmp_path / "s"),
           "CERTPROXY_HTTP_PORT": "off", "CERTPROXY_ROUTES": f"{free_port()}=http://127.0.0.1:9",
           "CERTPROXY_BIND": "127.0.0.1", "CERTPROXY_AUTH_HTPASSWD": str(weak_file)}
    env["CERTPROXY_AUTH_PORTS"] = env["CERTPROXY_ROUTES"].split("=")[0]
    proc = subprocess.run([sys.executable, "-m", "certproxy", "serve"], env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and "CERTPROXY_AUTH_HTPASSWD" in proc.stderr and "bcrypt" in proc.stderr
    made = subprocess.run([sys.executable, "-m", "certproxy", "htpasswd", "gina", "--password-stdin",
                           "--cost", "5"], input="pw3\n", capture_output=True, text=True, timeout=30)
    user, digest = made.stdout.strip().split(":", 1)
    assert made.returncode == 0 and user == "gina" and bcrypt.checkpw(b"pw3", digest.encode())


def test_route_figures_become_prometheus_families_at_scrape_time() -> None:
    """Plain numbers on the request path; counters and a cumulative histogram when scraped."""
    from certproxy.service.metrics import Metrics

    m = Metrics()
    r = m.route("5000")
    for status in (200, 204, 404, 502, 99):
        r.request(status, 10, 20)
    for seconds in (0.001, 0.003, 0.003, 100.0):
        r.upstream_response(seconds)
    text = m.render().decode()
    assert 'certproxy_requests_total{code="2xx",route="5000"} 2.0' in text
    assert 'certproxy_requests_total{code="1xx",route="5000"} 1.0' in text
    assert 'certproxy_requests_total{code="5xx",route="5000"} 1.0' in text
    assert 'certproxy_request_body_bytes_total{route="5000"} 50.0' in text
    assert 'certproxy_upstream_response_seconds_bucket{le="0.001",route="5000"} 1.0' in text  # le: <=
    assert 'certproxy_upstream_response_seconds_bucket{le="0.005",route="5000"} 3.0' in text
    assert 'certproxy_upstream_response_seconds_bucket{le="60.0",route="5000"} 3.0' in text
    assert 'certproxy_upstream_response_seconds_bucket{le="+Inf",route="5000"} 4.0' in text
    assert 'certproxy_upstream_response_seconds_count{route="5000"} 4.0' in text
