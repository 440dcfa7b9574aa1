"""CERTPROXY_LOCAL_CA: certificates from a CA of certproxy's own, for registries no
public CA can reach. A client that trusts only ``ca.crt``, fetched from the plain
listener's ``/ca.crt``, pushes and pulls through certproxy with the real skopeo;
the CA and the leaf survive a restart; ``certproxy renew`` issues a new leaf from
the same CA; mistakes are refused in one line. (The real docker client trusting
it is in ``test_container.py``.)"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certproxy.certs import utcnow
from certproxy.certs.local_ca import ensure_ca, load_ca
from certproxy.certs.pair import serial_hex
from support.oci import layer_digests, make_image
from support.procs import CertproxyProcess, free_port, start_certproxy, stop_process, wait_for
from support.registry import Registry
from support.tlsprobe import peer_certificate, verifies

pytestmark = pytest.mark.integration

DOMAINS = "localhost,127.0.0.1"


def local_ca(tmp: Path, store: Path, registry: Registry, port: int, http_port: int,
             **env: str) -> CertproxyProcess:
    return start_certproxy(tmp, {port: registry.url}, store, http_port=http_port,
                           extra_env={"CERTPROXY_LOCAL_CA": "1", "CERTPROXY_DOMAINS": DOMAINS, **env})


def fetch_ca(http_port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/ca.crt", timeout=10) as r:
        assert r.headers["Content-Type"] == "application/x-x509-ca-cert"
        return r.read()


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=120)


def test_a_client_trusting_only_the_fetched_ca_pushes_and_pulls_and_it_all_survives_restarts(
        registry: Registry, tmp_path: Path) -> None:
    store, port, http_port = tmp_path / "store", free_port(), free_port()
    cp = local_ca(tmp_path, store, registry, port, http_port)
    try:
        certs = tmp_path / "certs.d"  # what /etc/containers/certs.d/HOST:PORT/ holds
        certs.mkdir()
        (certs / "ca.crt").write_bytes(fetch_ca(http_port))
        wait_for(lambda: verifies(port, cafile=certs / "ca.crt"), 20, "a leaf of the local CA", cp.proc, cp.log)
        ca_cert = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
        leaf = peer_certificate(port, cafile=certs / "ca.crt")
        assert verifies(port, "127.0.0.1", cafile=certs / "ca.crt")  # the IP is in the leaf too
        # The CA vouches only for the configured names; its key is the owner's alone.
        nc = ca_cert.extensions.get_extension_for_class(x509.NameConstraints)
        assert nc.critical and {str(n.value) for n in nc.value.permitted_subtrees} == {"localhost", "127.0.0.1/32"}
        assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert (store / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600
        assert (store / "live" / "localhost" / "privkey.pem").stat().st_mode & 0o777 == 0o600
        # The log says how to trust it, with the fingerprint to compare.
        fingerprint = ":".join(f"{b:02X}" for b in ca_cert.fingerprint(hashes.SHA256()))
        assert cp.wait_output(f"SHA-256 fingerprint {fingerprint}")
        assert cp.wait_output(f"/etc/docker/certs.d/localhost:{port}/ca.crt")
        status = subprocess.run([sys.executable, "-m", "certproxy", "status"], capture_output=True, text=True,
                                timeout=30, env=cp.env)
        assert status.returncode == 0 and fingerprint in status.stdout, status.stdout + status.stderr

        image = tmp_path / "image"
        pushed = make_image(image, 1 << 20)
        ref = f"docker://localhost:{port}/lan/app:v1"
        push = skopeo("copy", "--dest-cert-dir", str(certs), f"oci:{image}:v1", ref)
        assert push.returncode == 0, push.stderr
        pull = skopeo("copy", "--src-cert-dir", str(certs), ref, f"oci:{tmp_path / 'pulled'}:v1")
        assert pull.returncode == 0, pull.stderr
        assert layer_digests(tmp_path / "pulled") == pushed
        # Without the CA, the same client refuses.
        empty = tmp_path / "empty"
        empty.mkdir()
        refused = skopeo("inspect", "--cert-dir", str(empty), ref)
        assert refused.returncode != 0 and "certificate" in refused.stderr, refused.stderr
    finally:
        assert stop_process(cp.proc) == 0

    # A restart keeps the CA and the leaf: same CA, same serial, nothing issued.
    cp = local_ca(tmp_path, store, registry, port, http_port)
    try:
        wait_for(lambda: verifies(port, cafile=certs / "ca.crt"), 20, "the kept leaf", cp.proc, cp.log)
        assert fetch_ca(http_port) == (certs / "ca.crt").read_bytes()
        assert peer_certificate(port, cafile=certs / "ca.crt").serial_number == leaf.serial_number
        assert "ordering a certificate" not in cp.output()
        # certproxy renew issues a new leaf from the same CA; the running proxy serves it.
        renew = subprocess.run([sys.executable, "-m", "certproxy", "renew", "--force"], capture_output=True,
                               text=True, timeout=60, env=cp.env)
        assert renew.returncode == 0, renew.stdout + renew.stderr
        wait_for(lambda: peer_certificate(port, cafile=certs / "ca.crt").serial_number != leaf.serial_number, 10,
                 "the renewed leaf served", cp.proc, cp.log)
        renewed = peer_certificate(port, cafile=certs / "ca.crt")
        assert serial_hex(renewed.serial_number) in renew.stdout
        assert renewed.issuer == leaf.issuer and fetch_ca(http_port) == (certs / "ca.crt").read_bytes()
    finally:
        assert stop_process(cp.proc) == 0


def test_local_ca_mistakes_are_refused_in_one_line(registry: Registry, tmp_path: Path) -> None:
    store = tmp_path / "store"
    cp = local_ca(tmp_path, store, registry, free_port(), free_port())
    stop_process(cp.proc)
    made = (store / "ca" / "ca.crt").read_bytes()
    # A name the CA was not made for: refused at start, naming the way out; the CA stays.
    other = start_certproxy(tmp_path, {free_port(): registry.url}, store, wait=False, extra_env={
        "CERTPROXY_LOCAL_CA": "1", "CERTPROXY_DOMAINS": "localhost,registry.lan"})
    assert other.proc.wait(20) == 2
    line = [ln for ln in other.output().splitlines() if ln.startswith("certproxy: ")]
    assert len(line) == 1 and "CERTPROXY_DOMAINS: registry.lan is outside what the local CA" in line[0], line
    assert "move " in line[0] and (store / "ca" / "ca.crt").read_bytes() == made
    # The local CA and ACME at once.
    both = start_certproxy(tmp_path, {free_port(): registry.url}, store, wait=False, extra_env={
        "CERTPROXY_LOCAL_CA": "1", "CERTPROXY_ACME": "on", "CERTPROXY_DOMAINS": "localhost"})
    assert both.proc.wait(20) == 2
    assert "CERTPROXY_LOCAL_CA: certificates come from the local CA or from ACME, not both" in both.output()
    # /ca.crt is not served without the local CA: it redirects like any other path.
    plain = start_certproxy(tmp_path, {free_port(): registry.url}, tmp_path / "other-store")
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.build_opener(NoRedirect).open(f"http://127.0.0.1:{plain.http_port}/ca.crt", timeout=10)
        assert err.value.code == 301
    finally:
        stop_process(plain.proc)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


def test_replicas_making_the_ca_at_once_make_exactly_one(tmp_path: Path) -> None:
    folder = tmp_path / "ca"
    results: list[tuple[str, bool]] = []
    barrier = threading.Barrier(8)

    def make() -> None:
        barrier.wait()
        ca, made = ensure_ca(folder, ("localhost",), utcnow())
        results.append((ca.fingerprint, made))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 8 and len({f for f, _ in results}) == 1
    assert sum(made for _, made in results) == 1
    loaded = load_ca(folder)
    assert loaded is not None and loaded.fingerprint == results[0][0]
    assert sorted(os.listdir(tmp_path)) == ["ca"]  # no half-made folder left behind
