"""certproxy's demo: the registry stack on loopback, with certproxy as its front.

Starts the real docker-registry, a placeholder web UI and certproxy (with a
fresh store, so it serves its self-signed bootstrap certificate), pushes a
small image through certproxy's registry port with skopeo, pulls it back,
compares the digests, prints /healthz and `certproxy status`, and keeps
serving until Ctrl-C. With DEMO_ONESHOT=1 it stops after the check and exits
with its result.

Ports (loopback): DEMO_HTTP_PORT (8080), DEMO_UI_PORT (8443), DEMO_REGISTRY_PORT (5000).
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.oci import layer_digests, make_image  # noqa: E402
from support.procs import start_certproxy, stop_process  # noqa: E402
from support.registry import start_registry  # noqa: E402


def say(text: str) -> None:
    print(f"==> {text}", flush=True)


class Placeholder(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = (b"<!doctype html><title>registry UI</title>"
                b"<h1>Registry web UI placeholder</h1><p>served through certproxy</p>\n")
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def main() -> int:
    oneshot = os.environ.get("DEMO_ONESHOT") == "1"
    http_port = int(os.environ.get("DEMO_HTTP_PORT", "8080"))
    ui_port = int(os.environ.get("DEMO_UI_PORT", "8443"))
    reg_port = int(os.environ.get("DEMO_REGISTRY_PORT", "5000"))
    work = Path(tempfile.mkdtemp(prefix="certproxy-demo-"))
    procs = []
    try:
        say(f"work folder {work}")
        registry = start_registry(work)
        procs.append(registry.proc)
        say(f"docker-registry {registry.url} (storage {registry.root / 'data'})")

        ui = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Placeholder)
        threading.Thread(target=ui.serve_forever, daemon=True).start()
        ui_url = f"http://127.0.0.1:{ui.server_address[1]}"
        say(f"placeholder UI {ui_url}")

        store = work / "store"
        cp = start_certproxy(work, {ui_port: ui_url, reg_port: registry.url}, store,
                             http_port=http_port)
        procs.append(cp.proc)
        say(f"certproxy: http://127.0.0.1:{http_port} (redirects, /healthz), "
            f"https://localhost:{ui_port} -> UI, https://localhost:{reg_port} -> registry")

        # The store is new, so certproxy serves its bootstrap certificate: trust it for skopeo.
        certs = work / "certs.d"
        certs.mkdir()
        shutil.copy(store / "bootstrap" / "localhost" / "fullchain.pem", certs / "ca.crt")

        image = work / "image"
        pushed = make_image(image, 4 << 20)
        ref = f"docker://localhost:{reg_port}/demo/hello:v1"
        say(f"skopeo push {ref}")
        subprocess.run(["skopeo", "--insecure-policy", "copy", "--dest-cert-dir", str(certs),
                        f"oci:{image}:v1", ref], check=True, timeout=300)
        say(f"skopeo pull {ref}")
        pulled = work / "pulled"
        subprocess.run(["skopeo", "--insecure-policy", "copy", "--src-cert-dir", str(certs),
                        ref, f"oci:{pulled}:v1"], check=True, timeout=300)
        ok = layer_digests(pulled) == pushed
        say(f"digests {'match' if ok else 'DIFFER'}: {', '.join(d[:19] for d in pushed)}")

        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=10) as r:
            health = json.load(r)
        say(f"/healthz: status {health['status']}")
        print(json.dumps(health, indent=2))
        say("certproxy status")
        subprocess.run([sys.executable, "-m", "certproxy", "status", "--store", str(store)],
                       check=False, timeout=60)
        if oneshot:
            return 0 if ok else 1
        say("serving; Ctrl-C to stop")
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1):
            pass
        return 0 if ok else 1
    except subprocess.CalledProcessError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
