"""Memory per idle keep-alive TLS connection: certproxy beside nginx, HAProxy and Caddy.

Each front is started in front of a trivial upstream; N TLS connections are
opened to it, each makes one request and then stays open, idle. The figure is
the growth of the front's resident memory (the sum over its processes) divided
by N, in KiB, and its ratio to nginx in the same run.

``python bench/idle.py [--connections N] [--fronts nginx,certproxy,...]``
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import ssl
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import trustme  # noqa: E402

from bench import start_trivial_upstream, tree  # noqa: E402
from fronts import FRONTS  # noqa: E402
from support.procs import free_port, tcp_open, vmrss_kib, wait_for  # noqa: E402


def tree_rss_kib(pid: int) -> int:
    """Resident KiB of the front's processes together."""
    total = 0
    for p in tree(pid):
        try:
            total += vmrss_kib(p) or 0
        except OSError:
            continue
    return total


async def hold(port: int, ctx: ssl.SSLContext, n: int) -> list[asyncio.StreamWriter]:
    writers: list[asyncio.StreamWriter] = []
    sem = asyncio.Semaphore(64)

    async def one() -> None:
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                          server_hostname="localhost")
            writer.write(f"GET / HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"answer: {head[:60]!r}")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            await reader.readexactly(length)
            writers.append(writer)

    await asyncio.gather(*(one() for _ in range(n)))
    return writers


def measure(name: str, work: Path, cert: Path, key: Path, upstream: int, n: int) -> float:
    port = free_port()
    front = FRONTS[name](name, work / name, cert, key, {port: upstream})
    front.start()
    assert front.proc is not None
    try:
        wait_for(lambda: tcp_open(port), 20, name, front.proc, front.log)
        time.sleep(1.0)
        ctx = ssl.create_default_context(cafile=str(work / "ca.pem"))

        async def run() -> float:
            # Warm-up: the first connections make one-off allocations (contexts, pools).
            for w in await hold(port, ctx, 50):
                w.close()
            await asyncio.sleep(1.0)
            before = tree_rss_kib(front.proc.pid)  # type: ignore[union-attr]
            writers = await hold(port, ctx, n)
            await asyncio.sleep(2.0)
            after = tree_rss_kib(front.proc.pid)  # type: ignore[union-attr]
            for w in writers:
                w.close()
            return (after - before) / n

        return asyncio.run(run())
    finally:
        front.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--fronts", default="nginx,haproxy,caddy,certproxy")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.connections + 100:
        raise SystemExit(f"the file descriptor limit ({hard}) is below {args.connections} connections")
    work = Path(tempfile.mkdtemp(prefix="certproxy-idle-"))
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = work / "cert.pem", work / "key.pem"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(work / "ca.pem"))
    upstream = free_port()
    trivial = start_trivial_upstream(work / "trivial", upstream, cert, key)
    try:
        figures = {}
        for name in args.fronts.split(","):
            figures[name] = measure(name, work, cert, key, upstream, args.connections)
            print(f"{name}: {figures[name]:.1f} KiB per idle TLS connection", flush=True)
    finally:
        trivial.stop()
    print(f"\n{args.connections} idle keep-alive TLS connections, KiB resident per connection (ratio to nginx):")
    for name, kib in figures.items():
        ratio = f" ({kib / figures['nginx']:.2f}x)" if "nginx" in figures and name != "nginx" else ""
        print(f"| {name} | {kib:.1f}{ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
