"""ACME against the real Pebble (Let's Encrypt's test CA) and pebble-challtestsrv:
issuance inside `certproxy serve`, `certproxy renew`, a CA that is down at
start, short-lived certificates renewed by themselves, EAB, CA problems."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import trustme
from cryptography import x509

from support.oci import layer_digests, make_image
from support.pebble import Pebble, start_pebble
from support.procs import CertproxyProcess, free_port, wait_for
from support.registry import Registry

pytestmark = pytest.mark.integration


@pytest.fixture
def pebble_factory(tmp_path: Path, ca: trustme.CA) -> Iterator[Callable[..., Pebble]]:
    started: list[Pebble] = []

    def factory(http_port: int, **kw: object) -> Pebble:
        p = start_pebble(tmp_path, ca, http_port, **kw)  # type: ignore[arg-type]
        started.append(p)
        return p

    yield factory
    for p in started:
        p.stop()


def peer_cert(port: int, sni: str = "localhost") -> x509.Certificate:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def verifies_with(port: int, roots_pem: bytes) -> bool:
    ctx = ssl.create_default_context(cadata=roots_pem.decode())
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost"):
                return True
    except ssl.SSLError:
        return False


def acme_env(pebble: Pebble, **extra: str) -> dict[str, str]:
    return {"CERTPROXY_DOMAINS": "localhost", "CERTPROXY_EMAIL": "ops@certproxy.test",
            "CERTPROXY_ACME_DIRECTORY": pebble.directory,
            "CERTPROXY_ACME_CA_BUNDLE": str(pebble.ca_bundle),
            "CERTPROXY_ACME_RETRY_MIN": "1", **extra}


def skopeo_roundtrip(port: int, certs: Path, tmp: Path, tag: str) -> None:
    image = tmp / f"image-{tag}"
    pushed = make_image(image, 1 << 20)
    ref = f"docker://localhost:{port}/certproxy/acme:{tag}"
    for args in (["--dest-cert-dir", str(certs), f"oci:{image}:v1", ref],
                 ["--src-cert-dir", str(certs), ref, f"oci:{tmp / ('pulled-' + tag)}:v1"]):
        run = subprocess.run(["skopeo", "--insecure-policy", "copy", *args],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
    assert layer_digests(tmp / f"pulled-{tag}") == pushed


def test_serve_moves_from_bootstrap_to_a_pebble_certificate_without_restart(
        certproxy_factory: Callable[..., CertproxyProcess], pebble_factory: Callable[..., Pebble],
        registry: Registry, tmp_path: Path, measure: Callable[[str, str], None]) -> None:
    http_port, reg_port, ui_port = free_port(), free_port(), free_port()
    pebble = pebble_factory(http_port)
    store = tmp_path / "store"
    t0 = time.monotonic()
    admin = free_port()
    cp = certproxy_factory({reg_port: registry.url, ui_port: registry.url}, store,
                           http_port=http_port,
                           extra_env=acme_env(pebble, CERTPROXY_ADMIN_PORT=str(admin)))
    # Serving at once, with the bootstrap certificate; a push works with it.
    first = peer_cert(reg_port)
    if first.issuer == first.subject:
        certs = tmp_path / "bootstrap-ca"
        certs.mkdir()
        shutil.copy(store / "bootstrap" / "localhost" / "fullchain.pem", certs / "ca.crt")
        skopeo_roundtrip(reg_port, certs, tmp_path, "before")
    roots = pebble.roots_pem()
    wait_for(lambda: all(verifies_with(p, roots) for p in (reg_port, ui_port)), 60,
             "a Pebble certificate on every TLS listener", cp.proc, cp.log)
    elapsed = time.monotonic() - t0
    measure("ACME: empty store to a Pebble certificate served, s", f"{elapsed:.2f}")
    pebble_certs = tmp_path / "pebble-ca"
    pebble_certs.mkdir()
    (pebble_certs / "ca.crt").write_bytes(roots)
    skopeo_roundtrip(reg_port, pebble_certs, tmp_path, "after")

    live = store / "live" / "localhost"
    assert (live / "privkey.pem").stat().st_mode & 0o777 == 0o600
    meta = json.loads((live / "certproxy.json").read_text())
    assert meta["directory"] == pebble.directory and meta["account"]
    keys = list((store / "accounts").rglob("private_key.pem"))
    assert len(keys) == 1 and keys[0].stat().st_mode & 0o777 == 0o600
    assert list((store / "challenges").iterdir()) == []

    def healthz() -> dict:
        with __import__("urllib.request").request.urlopen(cp.healthz, timeout=10) as r:
            return json.load(r)

    # The order's result is recorded when the child process that wrote the pair has answered;
    # the watcher may have loaded the pair before that: on a busy machine /healthz follows
    # the handshake by a moment.
    wait_for(lambda: healthz()["renewals"][0]["last_success"] is not None, 30,
             "the order's success in /healthz", cp.proc, cp.log)
    health = healthz()
    assert health["status"] == "ok"
    renewal = health["renewals"][0]
    assert renewal["last_success"] and renewal["last_error"] is None and renewal["next_renewal"]
    assert renewal["directory"] == pebble.directory
    from test_metrics_auth import scrape, value
    samples = scrape(admin)
    assert value(samples, "certproxy_renewal_attempts_total", name="localhost") == 1
    assert value(samples, "certproxy_renewal_failures_total", name="localhost") == 0
    assert value(samples, "certproxy_renewal_next_timestamp_seconds", name="localhost") > time.time()
    assert "Traceback" not in cp.output()


def renew(store: Path, http_port: int, pebble: Pebble, *args: str,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CERTPROXY_")}
    return subprocess.run(
        [sys.executable, "-m", "certproxy", "renew", "--directory", pebble.directory,
         "--ca-bundle", str(pebble.ca_bundle), "--store", str(store),
         "--http-port", str(http_port), "--email", "ops@certproxy.test", *args],
        env={**base, "CERTPROXY_BIND": "127.0.0.1", **(env or {})},
        capture_output=True, text=True, timeout=120)


def test_renew_command_issues_reuses_its_account_and_respects_due_time(
        pebble_factory: Callable[..., Pebble], tmp_path: Path) -> None:
    http_port = free_port()
    pebble = pebble_factory(http_port)
    store = tmp_path / "store"
    t0 = time.monotonic()
    first = renew(store, http_port, pebble, "--domain", "localhost", "--domain", "reg.certproxy.test")
    issue_s = time.monotonic() - t0
    assert first.returncode == 0, first.stdout + first.stderr
    out = first.stdout
    for step in ("listening on 127.0.0.1", "account: registered", "order: ", "challenge localhost",
                 "challenge reg.certproxy.test", "finalize", f"written to {store / 'live' / 'localhost'}"):
        assert step in out, (step, out)
    account = out.split("account: registered ")[1].split()[0]
    serial1 = peer_serial_from_store(store)

    again = renew(store, http_port, pebble, "--domain", "localhost", "--domain", "reg.certproxy.test")
    assert again.returncode == 0 and "nothing to do" in again.stdout and "order:" not in again.stdout
    assert peer_serial_from_store(store) == serial1

    forced = renew(store, http_port, pebble, "--domain", "localhost", "--domain",
                   "reg.certproxy.test", "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"account: reusing {account}" in forced.stdout, forced.stdout
    assert peer_serial_from_store(store) != serial1
    assert len(list((store / "accounts").rglob("private_key.pem"))) == 1
    print(f"renew command: first issuance {issue_s:.2f} s")


def peer_serial_from_store(store: Path) -> int:
    return x509.load_pem_x509_certificate(
        (store / "live" / "localhost" / "fullchain.pem").read_bytes()).serial_number


def test_renew_relies_on_a_running_certproxy_for_challenges(
        certproxy_factory: Callable[..., CertproxyProcess], pebble_factory: Callable[..., Pebble],
        tmp_path: Path, ca: trustme.CA) -> None:
    http_port = free_port()
    pebble = pebble_factory(http_port)
    store = tmp_path / "store"
    tls_port = free_port()
    cp = certproxy_factory({tls_port: "http://127.0.0.1:9"}, store, http_port=http_port,
                           extra_env={"CERTPROXY_ACME": "off"})
    result = renew(store, http_port, pebble, "--domain", "localhost")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"a certproxy answers on :{http_port}" in result.stdout
    roots = pebble.roots_pem()
    wait_for(lambda: verifies_with(tls_port, roots), 5, "hot reload of the renewed pair",
             cp.proc, cp.log)


def test_ca_down_at_start_serves_at_once_and_issues_when_it_appears(
        certproxy_factory: Callable[..., CertproxyProcess], pebble_factory: Callable[..., Pebble],
        tmp_path: Path) -> None:
    http_port, tls_port, pebble_port = free_port(), free_port(), free_port()
    store = tmp_path / "store"
    env = {"CERTPROXY_DOMAINS": "localhost",
           "CERTPROXY_ACME_DIRECTORY": f"https://localhost:{pebble_port}/dir",
           "CERTPROXY_ACME_RETRY_MIN": "1"}
    t0 = time.monotonic()
    cp = certproxy_factory({tls_port: "http://127.0.0.1:9"}, store, http_port=http_port,
                           extra_env=env)
    assert time.monotonic() - t0 < 15
    assert peer_cert(tls_port).issuer == peer_cert(tls_port).subject  # bootstrap, at once

    def renewal() -> dict:
        with __import__("urllib.request").request.urlopen(cp.healthz, timeout=10) as r:
            return json.load(r)["renewals"][0]

    wait_for(lambda: "cannot reach the ACME server" in (renewal()["last_error"] or ""), 15,
             "the failure reported in /healthz", cp.proc, cp.log)
    status = renewal()
    assert status["next_attempt"] and status["failures"] >= 1
    pebble = pebble_factory(http_port, port=pebble_port)
    # The CA bundle was not configured: the certificate trust error must be reported.
    wait_for(lambda: "TLS error" in (renewal()["last_error"] or ""), 20,
             "a TLS trust error reported", cp.proc, cp.log)
    cp2_store = store
    from support.procs import stop_process
    assert stop_process(cp.proc) == 0
    cp2 = certproxy_factory({tls_port: "http://127.0.0.1:9"}, cp2_store, http_port=http_port,
                            extra_env={**env, "CERTPROXY_ACME_CA_BUNDLE": str(pebble.ca_bundle)})
    roots = pebble.roots_pem()
    wait_for(lambda: verifies_with(tls_port, roots), 30, "issuance once the CA answers",
             cp2.proc, cp2.log)


def test_short_lived_certificates_are_renewed_by_the_running_proxy(
        certproxy_factory: Callable[..., CertproxyProcess], pebble_factory: Callable[..., Pebble],
        tmp_path: Path) -> None:
    # 24-second certificates: renewal is due when the last half begins (lifetime < 10 days).
    http_port, tls_port = free_port(), free_port()
    pebble = pebble_factory(http_port, validity=24)
    cp = certproxy_factory({tls_port: "http://127.0.0.1:9"}, tmp_path / "store", http_port=http_port,
                           extra_env=acme_env(pebble))
    roots = pebble.roots_pem()
    wait_for(lambda: verifies_with(tls_port, roots), 30, "the first Pebble certificate", cp.proc, cp.log)
    first = peer_cert(tls_port)
    lifetime = (first.not_valid_after_utc - first.not_valid_before_utc).total_seconds()
    assert lifetime <= 25
    wait_for(lambda: peer_cert(tls_port).serial_number != first.serial_number, 30,
             "a renewed certificate", cp.proc, cp.log)
    second = peer_cert(tls_port)
    renewed_after = (second.not_valid_before_utc - first.not_valid_before_utc).total_seconds()
    assert lifetime / 2 - 3 <= renewed_after < lifetime  # renewed in the last half, before expiry
    assert verifies_with(tls_port, roots)


def test_external_account_binding(pebble_factory: Callable[..., Pebble], tmp_path: Path) -> None:
    hmac_key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
    http_port = free_port()
    pebble = pebble_factory(http_port, eab_keys={"kid-1": hmac_key})
    refused = renew(tmp_path / "s1", http_port, pebble, "--domain", "localhost")
    assert refused.returncode == 1
    assert "urn:ietf:params:acme:error:externalAccountRequired" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    ok = renew(tmp_path / "s2", http_port, pebble, "--domain", "localhost",
               env={"CERTPROXY_ACME_EAB_KID": "kid-1", "CERTPROXY_ACME_EAB_HMAC_KEY": hmac_key})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert hmac_key not in ok.stdout + ok.stderr


def test_ca_problems_reach_the_operator_as_the_ca_said_them(
        pebble_factory: Callable[..., Pebble], tmp_path: Path) -> None:
    http_port = free_port()
    pebble = pebble_factory(http_port, extra_config={"domainBlocklist": ["blocked.certproxy.test"]})
    result = renew(tmp_path / "s", http_port, pebble, "--domain", "blocked.certproxy.test")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "urn:ietf:params:acme:error:rejectedIdentifier" in lines[0]
    assert not (tmp_path / "s" / "live" / "blocked.certproxy.test").exists()


def test_rejected_nonces_are_retried(pebble_factory: Callable[..., Pebble], tmp_path: Path) -> None:
    # Pebble rejects 5 % of nonces by default; here a fifth of them, so most
    # orders meet several rejections (and two in a row, which acme alone fails on).
    http_port = free_port()
    pebble = pebble_factory(http_port, env={"PEBBLE_WFE_NONCEREJECT": "20"})
    result = renew(tmp_path / "s", http_port, pebble, "--domain", "localhost")
    assert result.returncode == 0, result.stdout + result.stderr
