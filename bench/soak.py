#!/usr/bin/env python3
"""A bounded soak of certproxy in front of the real registry, on loopback.

Mixed traffic for a fixed time: keep-alive and new-connection requests, blob
pushes and pulls verified by digest, and a certificate swap every
``--swap-every`` seconds. It reports requests, unexpected errors, and
certproxy's RSS and open file descriptors at the start and the end, and exits
non-zero on any error or growth.

    python bench/soak.py                  # 10 minutes, a swap every 30 s
    python bench/soak.py --seconds 60     # the CI version (tests/test_soak.py)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import trustme

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.pairs import issue, replace_atomic  # noqa: E402
from support.procs import free_port, start_certproxy, stop_process, vmrss_kib  # noqa: E402
from support.registry import start_registry  # noqa: E402

RSS_GROWTH_LIMIT_MIB = 15
FD_GROWTH_LIMIT = 16


@dataclass
class Tally:
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    pushes: int = 0
    swaps: int = 0

    def fail(self, what: str) -> None:
        if len(self.errors) < 50:
            self.errors.append(what)


def rss_kib(pid: int) -> int:
    return vmrss_kib(pid) or 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def soak(seconds: float, swap_every: float, work: Path) -> dict[str, object]:
    ca = trustme.CA()
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    store = work / "store"
    replace_atomic(store / "live" / "localhost", issue(ca, "localhost"))
    registry = start_registry(work)
    port = free_port()
    cp = await asyncio.to_thread(start_certproxy, work, {port: registry.url}, store,
                                 extra_env={"CERTPROXY_LOG_LEVEL": "warning"})
    base = f"https://localhost:{port}"
    tally = Tally()
    deadline = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=60)

    async def small(keepalive: bool) -> None:
        conn = aiohttp.TCPConnector(ssl=ctx, force_close=not keepalive)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
            while time.monotonic() < deadline:
                try:
                    async with s.get(f"{base}/v2/") as r:
                        await r.read()
                        if r.status == 200:
                            tally.ok += 1
                        else:
                            tally.fail(f"GET /v2/ -> {r.status}")
                except (aiohttp.ClientError, asyncio.TimeoutError, ssl.SSLError) as exc:
                    tally.fail(f"GET /v2/: {exc!r}")

    async def push_pull(worker: int) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), timeout=timeout) as s:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                data = os.urandom(2 << 20)
                digest = "sha256:" + hashlib.sha256(data).hexdigest()
                repo = f"soak/w{worker}"
                try:
                    async with s.post(f"{base}/v2/{repo}/blobs/uploads/", data=b"") as r:
                        location = r.headers["Location"]
                    sep = "&" if "?" in location else "?"
                    async with s.put(f"{location}{sep}digest={digest}", data=data,
                                     headers={"Content-Type": "application/octet-stream"}) as r:
                        if r.status != 201:
                            tally.fail(f"PUT blob -> {r.status}")
                            continue
                    async with s.get(f"{base}/v2/{repo}/blobs/{digest}") as r:
                        got = await r.read()
                    if hashlib.sha256(got).hexdigest() != digest.split(":")[1]:
                        tally.fail("pulled blob does not match its digest")
                        continue
                    tally.ok += 3
                    tally.pushes += 1
                except (aiohttp.ClientError, asyncio.TimeoutError, ssl.SSLError, KeyError) as exc:
                    tally.fail(f"push/pull: {exc!r}")

    async def swapper() -> None:
        while time.monotonic() + swap_every < deadline:
            await asyncio.sleep(swap_every)
            await asyncio.to_thread(replace_atomic, store / "live" / "localhost", issue(ca, "localhost"))
            tally.swaps += 1

    # Warm up, then take the starting figures.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
        for _ in range(20):
            async with s.get(f"{base}/v2/") as r:
                await r.read()
    await asyncio.sleep(0.5)
    start = {"rss_mib": rss_kib(cp.pid) / 1024, "fds": fds(cp.pid)}
    t0 = time.monotonic()
    await asyncio.gather(small(True), small(True), small(False), push_pull(1), push_pull(2), swapper())
    elapsed = time.monotonic() - t0
    await asyncio.sleep(2)  # idle pooled connections settle
    end = {"rss_mib": rss_kib(cp.pid) / 1024, "fds": fds(cp.pid)}
    traceback_seen = "Traceback" in cp.output()
    stop_process(cp.proc)
    stop_process(registry.proc)
    return {
        "seconds": round(elapsed, 1), "requests_ok": tally.ok, "errors": len(tally.errors),
        "error_samples": tally.errors[:5], "pushes_verified": tally.pushes, "swaps": tally.swaps,
        "rss_mib_start": round(start["rss_mib"], 1), "rss_mib_end": round(end["rss_mib"], 1),
        "fds_start": start["fds"], "fds_end": end["fds"], "traceback_in_log": traceback_seen,
    }


def verdict(result: dict[str, object]) -> list[str]:
    problems = []
    if result["errors"]:
        problems.append(f"{result['errors']} unexpected errors: {result['error_samples']}")
    if float(result["rss_mib_end"]) - float(result["rss_mib_start"]) > RSS_GROWTH_LIMIT_MIB:  # type: ignore[arg-type]
        problems.append("RSS grew")
    if int(result["fds_end"]) - int(result["fds_start"]) > FD_GROWTH_LIMIT:  # type: ignore[arg-type]
        problems.append("open file descriptors grew")
    if result["traceback_in_log"]:
        problems.append("a traceback in certproxy's log")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--swap-every", type=float, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="certproxy-soak-") as tmp:
        result = asyncio.run(soak(args.seconds, args.swap_every, Path(tmp)))
    print(json.dumps(result, indent=2))
    problems = verdict(result)
    for p in problems:
        print(f"FAIL: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
