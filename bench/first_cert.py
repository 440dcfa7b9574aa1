"""Empty store to a certificate on disk: `certproxy renew` beside certbot and lego,
all against the same Pebble (Let's Encrypt's test CA, no validation sleep), the
runs interleaved, medians reported with the ratio to certbot.

    python bench/first_cert.py [--runs N]

Needs Debian's pebble, certbot and lego (scripts/install-bench-deps.sh installs
them). Each client gets a fresh folder (so a new account and a new order every
run) and answers HTTP-01 on the port Pebble validates. Everything is on
loopback; nothing is asserted: the figures are printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import trustme  # noqa: E402

from support.pebble import start_pebble  # noqa: E402
from support.procs import free_port  # noqa: E402


def certproxy(pebble, folder: Path, port: int) -> list[str]:  # type: ignore[no-untyped-def]
    return [sys.executable, "-m", "certproxy", "renew", "--directory", pebble.directory, "--ca-bundle",
            str(pebble.ca_bundle), "--store", str(folder), "--http-port", str(port), "--domain", "localhost",
            "--email", "ops@certproxy.test"]


def certbot(pebble, folder: Path, port: int) -> list[str]:  # type: ignore[no-untyped-def]
    return ["certbot", "certonly", "--standalone", "--non-interactive", "--agree-tos", "-m", "ops@certproxy.test",
            "--server", pebble.directory, "--http-01-port", str(port), "--http-01-address", "127.0.0.1",
            "-d", "localhost", "--config-dir", str(folder / "etc"), "--work-dir", str(folder / "work"),
            "--logs-dir", str(folder / "logs"), "--no-random-sleep-on-renew", "--key-type", "ecdsa"]


def lego(pebble, folder: Path, port: int) -> list[str]:  # type: ignore[no-untyped-def]
    return ["lego", "--server", pebble.directory, "--email", "ops@certproxy.test", "--accept-tos",
            "--domains", "localhost", "--http", "--http.port", f"127.0.0.1:{port}", "--path", str(folder),
            "--key-type", "ec256", "run"]


CLIENTS = {"certproxy renew": certproxy, "certbot": certbot, "lego": lego}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    missing = [c for c in ("pebble", "certbot", "lego") if shutil.which(c) is None]
    if missing:
        print(f"first_cert: missing {', '.join(missing)} (scripts/install-bench-deps.sh)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="certproxy-first-cert-"))
    ca = trustme.CA()
    port = free_port()
    pebble = start_pebble(work, ca, port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTPROXY_")}
    env.update({"CERTPROXY_BIND": "127.0.0.1", "REQUESTS_CA_BUNDLE": str(pebble.ca_bundle),
                "LEGO_CA_CERTIFICATES": str(pebble.ca_bundle)})
    times: dict[str, list[float]] = {name: [] for name in CLIENTS}
    try:
        for run in range(args.runs):
            for name, command in CLIENTS.items():
                folder = work / f"{name.split()[0]}-{run}"
                folder.mkdir()
                t0 = time.monotonic()
                done = subprocess.run(command(pebble, folder, port), env=env, capture_output=True, text=True,
                                      timeout=180, cwd=folder)
                elapsed = time.monotonic() - t0
                if done.returncode != 0:
                    print(f"{name} failed:\n{done.stdout}\n{done.stderr}", file=sys.stderr)
                    return 1
                times[name].append(elapsed)
    finally:
        pebble.stop()
        shutil.rmtree(work, ignore_errors=True)
    reference = statistics.median(times["certbot"])
    print(f"empty store to a certificate on disk, same Pebble, {args.runs} interleaved runs each")
    print("| client | median s | min s | max s | ratio to certbot |")
    print("|---|---:|---:|---:|---:|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.2f} | {min(values):.2f} | {max(values):.2f} | {med / reference:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
