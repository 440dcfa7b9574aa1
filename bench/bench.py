#!/usr/bin/env python3
"""certproxy's benchmark: certproxy, nginx, HAProxy and Caddy as the TLS front
of the real docker-registry on loopback, one at a time, interleaved over rounds.

For every front and round it measures skopeo push and pull of an incompressible
layer, curl GET and monolithic PUT of that blob, wrk keep-alive `GET /v2/` and
a 4 KiB blob, wrk with `Connection: close` (a full TLS handshake per request),
and the same two wrk tests before a trivial upstream (the front's own ceiling);
the front's CPU seconds per test (its whole process tree) and peak RSS.
Figures are reported as ratios to nginx in the same round (these machines are
shared and noisy), the medians across rounds in a Markdown table.

Four parallel pulls: four `skopeo copy` pulls of the image at once, timed from
the start of the first to the end of the last, through the front and direct to
the registry just before and just after (their mean). "Direct" is a second
docker-registry process on the same storage (read-only) serving TLS itself with
the bench's certificate and HTTP/1.1 (its HTTP/2 off, as the fronts other than
Caddy serve HTTP/1.1), so both are a client pulling from a registry over TLS;
`4 pulls vs direct` is the front's seconds over direct's (the goal: at most
1.05x with default settings).

    python bench/bench.py            # 3 rounds, 1 GiB layer, 10 s wrk runs (about 35 minutes)
    python bench/bench.py --quick    # 1 round, 64 MiB layer, 3 s wrk runs (a few minutes)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import trustme

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from fronts import FRONTS, Front, Nginx  # noqa: E402
from support.oci import make_image  # noqa: E402
from support.procs import free_port, http_ok, stop_process, tcp_open, vmrss_kib, wait_for  # noqa: E402
from support.registry import REGISTRY_BIN, Registry, start_registry  # noqa: E402

BLOB_CACHE = Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb")
PARALLEL_PULLS = 4
DIRECT_REPO = "bench/direct"  # the image, pushed once to the registry, pulled from it directly
IDLE_CONNECTIONS = 3000
MB = 1e6


# -- process accounting ------------------------------------------------------
def tree(pid: int) -> list[int]:
    pids, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        for c in children:
            pids.append(int(c))
            frontier.append(int(c))
    return pids


def cpu_seconds(pid: int) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def rss_mib(pid: int) -> float:
    """The largest RSS of any one process of the tree."""
    best = 0
    for p in tree(pid):
        try:
            best = max(best, vmrss_kib(p) or 0)
        except OSError:
            continue
    return best / 1024


class Sampler(threading.Thread):
    """The peak RSS of the tree's largest process (``tree=False``: of ``pid`` alone)."""

    def __init__(self, pid: int, tree: bool = True) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop, self.tree = pid, 0.0, threading.Event(), tree

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_mib(self.pid) if self.tree else own_rss_mib(self.pid))
            time.sleep(0.05)


def own_rss_mib(pid: int) -> float:
    try:
        return (vmrss_kib(pid) or 0) / 1024
    except OSError:
        return 0.0


def measured(front: Front, fn, *args):  # type: ignore[no-untyped-def]
    """Run one test; returns (its result, front CPU seconds, front peak RSS MiB)."""
    assert front.proc is not None
    sampler = Sampler(front.proc.pid)
    sampler.start()
    before = cpu_seconds(front.proc.pid)
    try:
        result = fn(*args)
    finally:
        sampler.stop.set()
        sampler.join()
    return result, cpu_seconds(front.proc.pid) - before, sampler.peak


# -- the tests -----------------------------------------------------------------
def run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}...: {out.stderr.strip()[-500:]}")
    return out


def wrk(url: str, seconds: int, close: bool = False) -> tuple[float, int]:
    cmd = ["wrk", "-t2", "-c64", f"-d{seconds}s", "--timeout", "10s"]
    if close:
        cmd += ["-H", "Connection: close"]
    out = run(cmd + [url], timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors and int(errors.group(1)) > total * 0.01:
        raise RuntimeError(f"wrk {url}: {errors.group(1)} non-2xx responses")
    return rps, total


def start_trivial_upstream(work: Path, port: int, cert: Path, key: Path) -> Nginx:
    """The trivial upstream: an nginx answering 200 from memory (the fronts' own ceiling)."""
    trivial = Nginx("trivial", work, cert, key, {})
    conf = trivial.work / "nginx.conf"
    conf.write_text(f"""daemon off; worker_processes 1; pid {trivial.work}/n.pid;
error_log {trivial.work}/e.log warn;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok\\n"; }} }} }}
""")
    trivial.proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(trivial.work)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: tcp_open(port), 10, "trivial upstream")
    return trivial


def start_tls_registry(work: Path, plain: Registry, cert: Path, key: Path, cafile: str) -> Registry:
    """A second docker-registry on ``plain``'s storage, read-only, serving TLS itself with the
    bench's certificate: the registry pulled from directly. HTTP/2 is off: skopeo would
    otherwise negotiate it here but gets HTTP/1.1 through nginx, HAProxy and certproxy."""
    port = free_port()
    root = work / f"registry-tls-{port}"
    root.mkdir(parents=True)
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {plain.root / 'data'}\n"
        "  maintenance:\n    uploadpurging:\n      enabled: false\n    readonly:\n      enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: certproxy-test-secret\n"
        f"  tls:\n    certificate: {cert}\n    key: {key}\n  http2:\n    disabled: true\n"
    )
    log = root / "registry.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=fh, stderr=subprocess.STDOUT)
    ctx = ssl.create_default_context(cafile=cafile)
    try:
        wait_for(lambda: http_ok(f"https://localhost:{port}/v2/", ctx), 20, "docker-registry (TLS)",
                 proc, log)
    except BaseException:
        stop_process(proc)
        raise
    return Registry(proc, port, root, log)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="certproxy-bench-"))
        ca = self.ca = trustme.CA()
        leaf = ca.issue_cert("localhost", "127.0.0.1")  # ECDSA P-256 (trustme's default)
        self.cert, self.key = self.work / "cert.pem", self.work / "key.pem"
        self.cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
        self.key.write_bytes(leaf.private_key_pem.bytes())
        self.certs_dir = self.work / "certs.d"
        self.certs_dir.mkdir()
        ca.cert_pem.write_to_path(str(self.certs_dir / "ca.crt"))
        self.cafile = str(self.certs_dir / "ca.crt")
        self.layer_mib = 64 if args.quick else args.layer_mib
        self.seconds = 3 if args.quick else 10
        self.rounds = 1 if args.quick else args.rounds

    def setup(self) -> None:
        self.registry = start_registry(self.work)
        self.trivial_port = free_port()
        self.trivial = start_trivial_upstream(self.work / "trivial", self.trivial_port, self.cert, self.key)
        # The big layer, and a 4 KiB blob for wrk.
        self.image = self.work / "image"
        digests = make_image(self.image, self.layer_mib << 20)
        self.big_digest = digests[-1]
        self.big_file = self.image / "blobs" / "sha256" / self.big_digest.split(":")[1]
        self.big_size = self.big_file.stat().st_size
        small = os.urandom(4096)
        self.small_digest = "sha256:" + hashlib.sha256(small).hexdigest()
        self._put_direct("bench/small", small, self.small_digest)
        # The registry pulled from directly (TLS, read-only, same storage), and the image in it.
        self.direct = start_tls_registry(self.work, self.registry, self.cert, self.key, self.cafile)
        BLOB_CACHE.unlink(missing_ok=True)
        run(["skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false", f"oci:{self.image}:v1",
             f"docker://127.0.0.1:{self.registry.port}/{DIRECT_REPO}:v1"])

    def _put_direct(self, repo: str, data: bytes, digest: str) -> None:
        base = self.registry.url
        req = urllib.request.Request(f"{base}/v2/{repo}/blobs/uploads/", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=30) as r:
            loc = r.headers["Location"]
        loc = loc if loc.startswith("http") else base + loc
        sep = "&" if "?" in loc else "?"
        req = urllib.request.Request(f"{loc}{sep}digest={digest}", method="PUT", data=data,
                                     headers={"Content-Type": "application/octet-stream"})
        urllib.request.urlopen(req, timeout=30).close()

    # each returns the figure(s) of one test
    def push(self, port: int, repo: str) -> float:
        BLOB_CACHE.unlink(missing_ok=True)  # no cross-repository mount from skopeo's cache
        t0 = time.monotonic()
        run(["skopeo", "--insecure-policy", "copy", "--dest-cert-dir", str(self.certs_dir),
             f"oci:{self.image}:v1", f"docker://localhost:{port}/{repo}:v1"])
        elapsed = time.monotonic() - t0
        log = self.registry.log.read_text(errors="replace")
        if f"mount={self.big_digest}" in log and f"/v2/{repo}/blobs/uploads/?mount" in log:
            raise RuntimeError(f"push to {repo} was a cross-repository mount, not an upload")
        return self.big_size / elapsed / MB

    def pull(self, port: int, repo: str) -> float:
        dest = self.work / f"pull-{repo.replace('/', '_')}"
        BLOB_CACHE.unlink(missing_ok=True)
        t0 = time.monotonic()
        run(["skopeo", "--insecure-policy", "copy", "--src-cert-dir", str(self.certs_dir),
             f"docker://localhost:{port}/{repo}:v1", f"dir:{dest}"])
        elapsed = time.monotonic() - t0
        if not (dest / self.big_digest.split(":")[1]).exists():
            raise RuntimeError("pull did not bring the big layer")
        shutil.rmtree(dest, ignore_errors=True)
        return self.big_size / elapsed / MB

    def parallel_pulls(self, port: int, repo: str) -> float:
        """Seconds for PARALLEL_PULLS ``skopeo copy`` pulls of ``repo`` at once, from the start
        of the first to the end of the last."""
        BLOB_CACHE.unlink(missing_ok=True)
        dests = [self.work / f"pulls-{port}-{i}" for i in range(PARALLEL_PULLS)]
        errs = [dest.with_name(dest.name + ".err") for dest in dests]
        procs: list[subprocess.Popen[bytes]] = []
        try:
            t0 = time.monotonic()
            for dest, err in zip(dests, errs, strict=True):
                with err.open("wb") as fh:
                    procs.append(subprocess.Popen(
                        ["skopeo", "--insecure-policy", "copy", "--src-cert-dir", str(self.certs_dir),
                         f"docker://localhost:{port}/{repo}:v1", f"dir:{dest}"],
                        stdout=subprocess.DEVNULL, stderr=fh))
            deadline = t0 + 600
            for p in procs:
                p.wait(max(deadline - time.monotonic(), 0.1))
            elapsed: float = time.monotonic() - t0
            for p, err in zip(procs, errs, strict=True):
                if p.returncode != 0:
                    raise RuntimeError(f"parallel pull of {repo}: {err.read_text(errors='replace')[-500:]}")
            for dest in dests:
                if not (dest / self.big_digest.split(":")[1]).exists():
                    raise RuntimeError("a parallel pull did not bring the big layer")
            return elapsed
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for dest, err in zip(dests, errs, strict=True):
                shutil.rmtree(dest, ignore_errors=True)
                err.unlink(missing_ok=True)

    def get(self, port: int, repo: str) -> float:
        out = run(["curl", "-sS", "--fail", "--cacert", self.cafile, "-o", "/dev/null", "-w",
                   "%{size_download} %{time_total}",
                   f"https://localhost:{port}/v2/{repo}/blobs/{self.big_digest}"]).stdout.split()
        if int(out[0]) != self.big_size:
            raise RuntimeError("GET returned a short blob")
        return self.big_size / float(out[1]) / MB

    def put(self, port: int, repo: str) -> float:
        loc = run(["curl", "-sS", "--fail", "--cacert", self.cafile, "-X", "POST", "-D", "-",
                   "-o", "/dev/null", "-H", "Content-Length: 0",
                   f"https://localhost:{port}/v2/{repo}/blobs/uploads/"]).stdout
        location = re.search(r"(?im)^location:\s*(\S+)", loc).group(1)  # type: ignore[union-attr]
        sep = "&" if "?" in location else "?"
        out = run(["curl", "-sS", "--fail", "--cacert", self.cafile, "-X", "PUT", "-T", str(self.big_file),
                   "-H", "Content-Type: application/octet-stream", "-o", "/dev/null", "-w",
                   "%{size_upload} %{time_total}", f"{location}{sep}digest={self.big_digest}"]).stdout.split()
        return int(out[0]) / float(out[1]) / MB

    def one_front(self, name: str, rnd: int) -> dict[str, float]:
        reg_port, triv_port = free_port(), free_port()
        front = FRONTS[name](name, self.work / f"{name}-{rnd}", self.cert, self.key,
                             {reg_port: self.registry.port, triv_port: self.trivial_port})
        front.start()
        assert front.proc is not None
        wait_for(lambda: tcp_open(reg_port) and tcp_open(triv_port), 20, name, front.proc, front.log)
        time.sleep(0.5)
        fig: dict[str, float] = {}
        peaks: list[float] = []
        try:
            repo = f"bench/{name}-{rnd}"
            for test, fn, args in (("push MB/s", self.push, (reg_port, repo)),
                                   ("pull MB/s", self.pull, (reg_port, repo)),
                                   ("GET MB/s", self.get, (reg_port, repo)),
                                   ("PUT MB/s", self.put, (reg_port, repo + "-put"))):
                value, cpu, peak = measured(front, fn, *args)
                fig[test] = value
                fig[test.replace("MB/s", "CPU s/GB")] = cpu / (self.big_size / 1e9)
                peaks.append(peak)
                if test == "pull MB/s":
                    # Direct just before and just after the front (their mean): the machine's
                    # drift and the order cancel out as far as they can.
                    before = self.parallel_pulls(self.direct.port, DIRECT_REPO)
                    seconds, cpu, peak = measured(front, self.parallel_pulls, reg_port, repo)
                    after = self.parallel_pulls(self.direct.port, DIRECT_REPO)
                    fig["4 pulls direct s"] = (before + after) / 2
                    fig["4 pulls s"] = seconds
                    fig["4 pulls vs direct"] = seconds / fig["4 pulls direct s"]
                    fig["4 pulls CPU s/GB"] = cpu / (PARALLEL_PULLS * self.big_size / 1e9)
                    fig["4 pulls peak RSS MiB"] = peak
                    peaks.append(peak)
            for test, url, close in (
                ("GET /v2/ req/s", f"https://localhost:{reg_port}/v2/", False),
                ("4 KiB blob req/s", f"https://localhost:{reg_port}/v2/bench/small/blobs/{self.small_digest}", False),
                ("trivial keep-alive req/s", f"https://localhost:{triv_port}/", False),
                ("trivial new TLS conn/s", f"https://localhost:{triv_port}/", True),
            ):
                (rps, total), cpu, peak = measured(front, wrk, url, self.seconds, close)
                fig[test] = rps
                unit = "µs/handshake" if close else "µs/req"
                fig[test.replace(" req/s", "").replace(" conn/s", "") + f" CPU {unit}"] = cpu / total * 1e6
                peaks.append(peak)
            fig["peak RSS MiB"] = max(peaks)
        finally:
            front.stop()
        return fig

    def main(self) -> int:
        self.setup()
        names = [n for n in FRONTS if n in self.args.fronts]
        rounds: list[dict[str, dict[str, float]]] = []
        try:
            for rnd in range(self.rounds):
                results = {}
                order = names[rnd % len(names):] + names[:rnd % len(names)]  # interleave
                for name in order:
                    print(f"round {rnd + 1}/{self.rounds}: {name}", flush=True)
                    results[name] = self.one_front(name, rnd)
                rounds.append(results)
            report = self.report(rounds, names)
            out = ROOT / "bench" / "results"
            out.mkdir(exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            (out / f"bench-{stamp}.json").write_text(json.dumps(rounds, indent=2))
            (out / f"bench-{stamp}.md").write_text(report)
            print(report, flush=True)
            if not self.args.no_extras:
                extras = self.extras(names)
                (out / f"bench-{stamp}.md").write_text(report + "\n" + extras)
                print(extras)
        finally:
            self.registry.proc.terminate()
            self.direct.proc.terminate()
            if self.trivial.proc:
                self.trivial.proc.terminate()
        shutil.rmtree(self.work, ignore_errors=True)
        return 0

    def extras(self, names: list[str]) -> str:
        """Figures taken once per run: resident memory per idle TLS connection for each
        front (``idle.py``), and certproxy's peak RSS with ACME on."""
        from idle import measure as idle_kib  # idle.py imports this module

        lines = []
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        shutil.copy(self.cafile, self.work / "ca.pem")
        idle: dict[str, float] = {}
        for name in [n for n in names if n not in ("certproxy-2w", "certproxy-pure")]:
            print(f"idle connections: {name}", flush=True)
            idle[name] = idle_kib(name, self.work, self.cert, self.key, self.trivial_port, IDLE_CONNECTIONS)
        cells = [f"{idle[n]:.1f}" + (f" ({idle[n] / idle['nginx']:.2f}x)" if n != "nginx" else "")
                 for n in idle]
        lines += [f"{IDLE_CONNECTIONS:,} idle keep-alive TLS connections (one request each), "
                  "KiB resident per connection:", "",
                  "| front | " + " | ".join(idle) + " |", "|---|" + "---:|" * len(idle) + "",
                  "| KiB per idle connection | " + " | ".join(cells) + " |", ""]
        print("certproxy with ACME on", flush=True)
        peak, cpu_us = self.acme_on()
        lines += [f"certproxy with ACME on (empty store, a certificate from Pebble, then wrk keep-alive "
                  f"{self.seconds} s): peak RSS {peak:.1f} MiB, {cpu_us:.1f} µs CPU per request", ""]
        return "\n".join(lines)

    def acme_on(self) -> tuple[float, float]:
        """certproxy serving with ACME on: the serving process's peak RSS while it gets a
        certificate from Pebble and then serves a wrk run (the ACME client's child
        process is not the serving process and is not counted)."""
        from support.pebble import start_pebble

        http_port, tls_port = free_port(), free_port()
        pebble = start_pebble(self.work, self.ca, http_port)
        store = self.work / "acme-on" / "store"
        store.parent.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CERTPROXY_")}
        env.update({
            "CERTPROXY_STORE": str(store), "CERTPROXY_BIND": "127.0.0.1", "CERTPROXY_HTTP_PORT": str(http_port),
            "CERTPROXY_ROUTES": f"{tls_port}=http://127.0.0.1:{self.trivial_port}",
            "CERTPROXY_DOMAINS": "localhost", "CERTPROXY_EMAIL": "ops@certproxy.test",
            "CERTPROXY_ACME_DIRECTORY": pebble.directory, "CERTPROXY_ACME_CA_BUNDLE": str(pebble.ca_bundle),
        })
        log = (self.work / "acme-on.log").open("wb")
        # Not cwd=self.work: a front's folder there is named certproxy, and `-m` would import it.
        proc = subprocess.Popen([sys.executable, "-m", "certproxy", "serve"], env=env, cwd=store.parent,
                                stdout=log, stderr=subprocess.STDOUT)
        sampler = Sampler(proc.pid, tree=False)
        sampler.start()
        try:
            roots = self.work / "pebble-roots.pem"
            roots.write_bytes(pebble.roots_pem())

            def pebble_served() -> bool:
                ctx = ssl.create_default_context(cafile=str(roots))
                try:
                    with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw, \
                            ctx.wrap_socket(raw, server_hostname="localhost"):
                        return True
                except OSError:
                    return False

            wait_for(pebble_served, 60, "a Pebble certificate served with ACME on", proc,
                     self.work / "acme-on.log")
            before = cpu_seconds(proc.pid)
            _, total = wrk(f"https://localhost:{tls_port}/", self.seconds)
            cpu = cpu_seconds(proc.pid) - before
        finally:
            sampler.stop.set()
            sampler.join()
            proc.terminate()
            proc.wait(30)
            pebble.stop()
        return sampler.peak, cpu / total * 1e6

    def report(self, rounds: list[dict[str, dict[str, float]]], names: list[str]) -> str:
        metrics = list(rounds[0][names[0]])
        lines = [f"certproxy benchmark: {len(rounds)} round(s), {self.big_size / 2**20:.0f} MiB layer, "
                 f"wrk -t2 -c64 {self.seconds}s; {os.cpu_count()} cores; "
                 f"medians, (ratio to nginx in the same round); `4 pulls`: {PARALLEL_PULLS} skopeo pulls "
                 "at once, `direct` to a TLS docker-registry just before and after the "
                 "front (mean), `vs direct` the front's time over that", "",
                 "| figure | " + " | ".join(names) + " |",
                 "|---|" + "---:|" * len(names)]
        for m in metrics:
            cells = []
            for n in names:
                vals = [r[n][m] for r in rounds]
                if m.endswith(" vs direct"):  # itself a ratio
                    cells.append(f"{statistics.median(vals):.2f}x")
                    continue
                ratios = [r[n][m] / r["nginx"][m] for r in rounds if "nginx" in r and r["nginx"][m]]
                cell = f"{statistics.median(vals):,.{2 if m.endswith(' s') else 1}f}"
                if ratios and n != "nginx" and "direct" not in m:
                    cell += f" ({statistics.median(ratios):.2f}x)"
                cells.append(cell)
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round, 64 MiB layer, 3 s wrk runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layer-mib", type=int, default=1024)
    parser.add_argument("--fronts", default="nginx,haproxy,caddy,certproxy,certproxy-2w,certproxy-pure")
    parser.add_argument("--no-extras", action="store_true",
                        help="skip the once-per-run figures (idle connections, ACME on)")
    args = parser.parse_args()
    args.fronts = args.fronts.split(",")
    if "nginx" not in args.fronts:
        parser.error("nginx is the reference: keep it in --fronts")
    return Bench(args).main()


if __name__ == "__main__":
    sys.exit(main())
