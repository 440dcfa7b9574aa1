"""Asks ``/healthz`` again and again on new connections, and prints who answered.

Run inside the engine's network namespace (``nsenter --net=...``), where
127.0.0.1:PORT is the port every certproxy replica on the host network shares:
the kernel hands each new connection to one of them, and a loopback client
gets the full report, with the replica's instance and the serial it serves.
One JSON line per answer: ``{"t": wall clock, "instance": ..., "serial": ...}``;
a failed attempt prints ``{"t": ..., "error": ...}``. Stops after ``seconds``,
or when its standard input closes.

    python healthz_sampler.py PORT INTERVAL SECONDS
"""

from __future__ import annotations

import json
import select
import sys
import time
import urllib.request


def main() -> None:
    port, interval, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if select.select([sys.stdin], [], [], 0)[0] and not sys.stdin.read(1):
            return  # the test closed our input: it is done
        t = time.time()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                body = json.loads(r.read())
            worker = body.get("worker") or {}
            serials = [c["serial"] for c in body.get("certificates", []) if c.get("kind") == "live"]
            line = {"t": t, "instance": worker.get("instance"), "serial": serials[0] if serials else None}
        except OSError as exc:
            line = {"t": t, "error": str(exc)}
        print(json.dumps(line), flush=True)
        time.sleep(interval)


if __name__ == "__main__":
    main()
