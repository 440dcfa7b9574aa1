"""certproxy's own CPU per keep-alive request, in-process.

The data plane driven through fake transports (``tests/support/inproc.py``):
no TLS, no sockets, no other process, so what is measured is certproxy's
Python alone (parsing both ways, routing, header rewriting, metrics, the access
line) with the production metrics and access log. A wrk run through TLS and
the kernel is what users see (``bench.py``); this figure is the part of it
that certproxy's code decides, and it is repeatable within a few per cent on a
busy machine, so it is the one to compare code changes with.

``python bench/dataplane.py [--requests N] [--rounds R]``: prints µs of CPU per
request (the median of the rounds) for a GET with a small answer and a 4 KiB
upload on a route that is not read as the registry API, the same on a registry
route (``CERTPROXY_REGISTRY_PORTS``, by default port 5000: each request read as a
call of the API for its access line and the registry metrics), and for the GET
through a 100-rule access policy with a token; and
CPU seconds per GB of a long upload's body handed over as
certproxy's TLS transport does (reads of 256 KiB in 16 KiB records), with the
heap tuned as ``serve`` tunes it.

It runs the build that is installed (``make deps`` compiles the hot modules); with
``CERTPROXY_PURE=1`` the pure-Python modules, for the figure of each build.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from certproxy import build  # noqa: E402
from certproxy.certs import FileStore  # noqa: E402
from certproxy.service import logs  # noqa: E402
from certproxy.service.access.gate import AccessGate, Upstream  # noqa: E402
from certproxy.service.auth import make_entry  # noqa: E402
from certproxy.service.checks import tune_malloc  # noqa: E402
from certproxy.service.metrics import Metrics  # noqa: E402
from certproxy.service.registry import RegistryObserver  # noqa: E402
from support.inproc import make_plane, settle  # noqa: E402

GET = (b"GET /v2/library/app/manifests/1 HTTP/1.1\r\nHost: registry.example.com:5000\r\n"
       b"User-Agent: docker/28.2.2 go/go1.24\r\nAccept: application/vnd.oci.image.index.v1+json\r\n"
       b"Authorization: Bearer abcdefghijklmnopqrstuvwxyz0123456789\r\nAccept-Encoding: gzip\r\n\r\n")
OK = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json; charset=utf-8\r\n"
      b"Docker-Distribution-Api-Version: registry/2.0\r\nX-Content-Type-Options: nosniff\r\n"
      b"Date: Sun, 29 Nov 2026 04:00:00 GMT\r\n\r\n{}")
BODY = b"x" * 4096
PUT = (b"PUT /v2/library/app/blobs/uploads/abc?_state=xyz&digest=sha256:00 HTTP/1.1\r\n"
       b"Host: registry.example.com:5000\r\nUser-Agent: docker/28.2.2\r\n"
       b"Content-Type: application/octet-stream\r\nContent-Length: 4096\r\n\r\n" + BODY)
CREATED = (b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nLocation: /v2/library/app/blobs/sha256:00\r\n"
           b"Docker-Content-Digest: sha256:00\r\nDate: Sun, 29 Nov 2026 04:00:00 GMT\r\n\r\n")


def policy_gate(folder: Path, rules: int = 100) -> tuple[AccessGate, bytes]:
    """An access gate with a ``rules``-rule policy (the last one grants the request), and
    the ``Authorization`` a logged-in client sends it: a token from its endpoint."""
    (folder / "htpasswd").write_text(make_entry("bob", "bobpw", cost=4) + "\n")
    lines = ['users = "htpasswd"']
    for i in range(rules - 1):
        lines += ["[[rule]]", f'repositories = ["team{i}/*", "other{i}/app"]', f'who = ["user{i}"]',
                  'actions = ["pull", "push"]']
    lines += ["[[rule]]", 'repositories = ["library/*"]', 'who = ["bob"]', 'actions = ["pull"]']
    (folder / "access.toml").write_text("\n".join(lines) + "\n")
    store = FileStore(folder / "store")
    store.ensure_layout()
    gate = AccessGate(folder / "access.toml", store, Upstream("registry", 5000, None))
    gate.load()
    token = gate.tokens.issue("bob", "registry.example.com:5000", {"library/app": frozenset({"pull"})}, False)
    return gate, b"Bearer " + token.encode()


async def per_request(request: bytes, answer: bytes, n: int, gate: AccessGate | None = None,
                      observed: bool = False) -> float:
    observer = RegistryObserver(50, 3600) if observed else None
    plane = make_plane(stats=Metrics().route("5000"), access_log=logs.access, gate=gate, observer=observer)
    conn, client = plane.connect_client()
    conn.data_received(request)  # the first request opens the pooled upstream connection
    await settle()
    plane.upstream_protocol().data_received(answer)
    await settle()
    assert client.take().startswith(b"HTTP/1.1 "), "no answer"
    up = plane.upstream_protocol()
    start = time.process_time()
    for _ in range(n):
        conn.data_received(request)
        up.data_received(answer)
    spent = time.process_time() - start
    out = client.take()
    if out.count(b"HTTP/1.1 ") != n:
        raise RuntimeError(f"{out.count(b'HTTP/1.1 ')} answers for {n} requests (not answered in step)")
    return spent / n * 1e6


async def upload_per_gb(total: int = 256 << 20, record: int = 16384, per_read: int = 16) -> float:
    """CPU seconds per GB of request body through the client protocol, in reads of
    ``per_read`` records, to an upstream that takes everything at once."""
    plane = make_plane(stats=Metrics().route("5000"), access_log=logs.access)
    conn, _client = plane.connect_client()
    conn.data_received(b"PUT /v2/r/blobs/uploads/u HTTP/1.1\r\nHost: registry.example.com:5000\r\n"
                       b"Content-Length: %d\r\n\r\n" % total)
    await settle()
    up = plane.upstreams[0]
    taken = 0

    def take(data: object) -> None:
        nonlocal taken
        taken += 1

    up.write = up.writelines = take  # type: ignore[method-assign]
    records = [bytes([i]) * record for i in range(per_read)]
    start = time.process_time()
    for _ in range(total // (record * per_read)):
        conn.parts_received(records)
    spent = time.process_time() - start
    if taken != total // (record * per_read):
        raise RuntimeError(f"{taken} upstream writes for {total // (record * per_read)} reads")
    return spent / (total / 1e9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    logs.setup_logging("text", "info")
    print(f"data plane: {build.describe()} (CERTPROXY_PURE=1 runs the pure-Python modules)")
    sink = io.StringIO()
    logs._fast.handler.setStream(sink)  # access lines are formatted and written, to memory
    folder = Path(tempfile.mkdtemp(prefix="certproxy-bench-"))
    gate, bearer = policy_gate(folder)
    gated = GET.replace(b"Bearer abcdefghijklmnopqrstuvwxyz0123456789", bearer)
    for name, request, answer, with_gate, observed in (
        ("GET, small answer", GET, OK, None, False),
        ("PUT, 4 KiB body", PUT, CREATED, None, False),
        ("GET, small answer, registry route", GET, OK, None, True),
        ("PUT, 4 KiB body, registry route", PUT, CREATED, None, True),
        ("GET through a 100-rule access policy, with a token", gated, OK, gate, True),
    ):
        figures = []
        for _ in range(args.rounds):
            figures.append(asyncio.run(per_request(request, answer, args.requests, with_gate, observed)))
            sink.seek(0)
            sink.truncate()
        print(f"{name}: {statistics.median(figures):.1f} µs CPU per request "
              f"(median of {args.rounds} rounds of {args.requests}; min {min(figures):.1f}, max {max(figures):.1f})")
    tune_malloc()
    figures = [asyncio.run(upload_per_gb()) for _ in range(args.rounds)]
    print(f"PUT, 256 MiB body in 256 KiB reads of 16 KiB records: {statistics.median(figures):.3f} CPU s/GB "
          f"(median of {args.rounds} rounds; min {min(figures):.3f}, max {max(figures):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
