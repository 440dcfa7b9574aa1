"""certproxy's demo: the stack the compose files describe, run natively on loopback.

It merges compose/docker-compose.yml + docker-compose.acme.yml with Debian's
docker-compose, then starts what they describe as local processes (there is
no Docker engine here): the real docker-registry, a placeholder for the web
UI image, and certproxy with ACME on, with Pebble (Let's Encrypt's test CA)
standing in for Let's Encrypt. It shows the bootstrap certificate being
replaced by the ACME one, pushes a small image through certproxy's registry
port with skopeo, pulls it back, compares digests, prints /healthz and
`certproxy status`, and keeps serving until Ctrl-C (DEMO_ONESHOT=1: exits
with the check's result).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import trustme
from cryptography import x509

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.native_compose import prepare  # noqa: E402
from support.oci import layer_digests, make_image  # noqa: E402
from support.pebble import start_pebble  # noqa: E402
from support.procs import free_port, wait_for  # noqa: E402


def show_upload(log: str) -> None:
    """The push's biggest layer in certproxy's access log: one grep for its upload id."""
    lines = [line for line in log.splitlines() if "certproxy.access" in line]
    opened = [line.rsplit("upload=", 1)[1] for line in lines if '"POST ' in line and " 202 " in line
              and "upload=" in line]
    if not opened:
        return
    sizes = {u: sum(int(line.split(" in=")[1].split()[0]) for line in lines if f"upload={u}" in line)
             for u in opened}
    upload = max(sizes, key=lambda u: sizes[u])
    say(f"its biggest layer in certproxy's access log (grep {upload[:8]}):")
    for line in lines:
        if f"upload={upload}" in line:
            print("   ", line.split("certproxy.access: ", 1)[1], flush=True)


def say(text: str) -> None:
    print(f"==> {text}", flush=True)


def served(port: int) -> x509.Certificate:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def describe(cert: x509.Certificate) -> str:
    issuer = cert.issuer.rfc4514_string()
    return f"serial {cert.serial_number:x}, issuer {issuer}, expires {cert.not_valid_after_utc:%Y-%m-%d %H:%M}"


def main() -> int:
    oneshot = os.environ.get("DEMO_ONESHOT") == "1"
    work = Path(tempfile.mkdtemp(prefix="certproxy-demo-"))
    pebble = stack = None
    try:
        say(f"work folder {work}")
        http_port = free_port()
        pebble = start_pebble(work, trustme.CA(organization_name="certproxy demo CA"), http_port)
        say(f"Pebble (stand-in for Let's Encrypt): {pebble.directory}")
        env_text = (f"CERTPROXY_DOMAINS=localhost\nCERTPROXY_EMAIL=ops@certproxy.test\n"
                    f"CERTPROXY_STAGING=0\nCERTPROXY_ACME_DIRECTORY={pebble.directory}\n")
        stack = prepare(work, ["docker-compose.yml", "docker-compose.acme.yml"], env_text)
        say("docker-compose -f docker-compose.yml -f docker-compose.acme.yml config: merged")
        registry = stack.start_registry()
        say(f"registry (registry:2 service, natively): {registry.url}")
        stack.start_ui()
        say(f"web UI placeholder (registry-ui service): http://{stack.hosts['registry-ui']}")
        cp = stack.start_certproxy(extra_env={"CERTPROXY_ACME_CA_BUNDLE": str(pebble.ca_bundle),
                                              "CERTPROXY_ACME_RETRY_MIN": "1"}, http_port=http_port)
        ui, reg = stack.ports[443], stack.ports[5000]
        say(f"certproxy: http://127.0.0.1:{http_port} (:80), https://localhost:{ui} (:443 -> UI), "
            f"https://localhost:{reg} (:5000 -> registry)")
        first = served(reg)
        say(f"first certificate: {describe(first)}")
        roots = pebble.roots_pem()
        ctx = ssl.create_default_context(cadata=roots.decode())

        def acme_served() -> bool:
            with socket.create_connection(("127.0.0.1", reg), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost"):
                    return True

        t0 = time.monotonic()
        wait_for(acme_served, 60, "the ACME certificate", cp.proc, cp.log)
        say(f"ACME certificate served after {time.monotonic() - t0:.1f} s, no restart: "
            f"{describe(served(reg))}")

        certs = work / "certs.d"
        certs.mkdir()
        (certs / "ca.crt").write_bytes(roots)
        image = work / "image"
        pushed = make_image(image, 4 << 20)
        ref = f"docker://localhost:{reg}/demo/hello:v1"
        say(f"skopeo push {ref}")
        subprocess.run(["skopeo", "--insecure-policy", "copy", "--dest-cert-dir", str(certs),
                        f"oci:{image}:v1", ref], check=True, timeout=300)
        say(f"skopeo pull {ref}")
        subprocess.run(["skopeo", "--insecure-policy", "copy", "--src-cert-dir", str(certs),
                        ref, f"oci:{work / 'pulled'}:v1"], check=True, timeout=300)
        ok = layer_digests(work / "pulled") == pushed
        say(f"digests {'match' if ok else 'DIFFER'}: {', '.join(d[:19] for d in pushed)}")
        show_upload(cp.output())

        with urllib.request.urlopen(cp.healthz, timeout=10) as r:
            health = json.load(r)
        say(f"/healthz: status {health['status']}")
        print(json.dumps(health, indent=2))
        say("certproxy status")
        subprocess.run([sys.executable, "-m", "certproxy", "status", "--store", str(cp.store),
                        "--url", cp.healthz], check=False, timeout=60)
        if oneshot:
            return 0 if ok else 1
        say(f"check the path as a client would: certproxy doctor https://localhost:{reg} --ca {certs / 'ca.crt'}")
        say("serving; Ctrl-C to stop")
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1):
            pass
        return 0 if ok else 1
    except (subprocess.CalledProcessError, TimeoutError, RuntimeError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if stack is not None:
            stack.stop()
        if pebble is not None:
            pebble.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
