"""certproxy in front of the real Docker registry (Debian's docker-registry 2.8),
exercised with the real skopeo client over TLS signed by a trustme CA."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import aiohttp
import pytest

from support.oci import layer_digests, make_image
from support.procs import CertproxyProcess, free_port
from support.registry import Registry

pytestmark = pytest.mark.integration

MiB = 1 << 20


def skopeo(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True,
                          text=True, timeout=timeout)


def front(factory: Callable[..., CertproxyProcess], registry: Registry, store: Path) -> tuple[CertproxyProcess, int]:
    port = free_port()
    return factory({port: registry.url}, store), port


def test_skopeo_push_and_pull_through_certproxy(
        certproxy_factory: Callable[..., CertproxyProcess], registry: Registry, store: Path,
        ca_dir: Path, tmp_path: Path, measure: Callable[[str, str], None]) -> None:
    cp, port = front(certproxy_factory, registry, store)
    image = tmp_path / "image"
    pushed = make_image(image, 64 * MiB)
    assert len(pushed) == 2
    big = max((image / "blobs" / "sha256" / d.split(":")[1]).stat().st_size for d in pushed)
    ref = f"docker://localhost:{port}/certproxy/test:v1"

    t0 = time.monotonic()
    push = skopeo("copy", "--dest-cert-dir", str(ca_dir), "--digestfile", str(tmp_path / "digest"),
                  f"oci:{image}:v1", ref)
    push_s = time.monotonic() - t0
    assert push.returncode == 0, push.stderr

    t0 = time.monotonic()
    pulled = tmp_path / "pulled"
    pull = skopeo("copy", "--src-cert-dir", str(ca_dir), ref, f"oci:{pulled}:v1")
    pull_s = time.monotonic() - t0
    assert pull.returncode == 0, pull.stderr

    assert layer_digests(pulled) == pushed  # every byte verified against its digest
    inspect = skopeo("inspect", "--cert-dir", str(ca_dir), ref)
    assert inspect.returncode == 0 and "sha256:" in inspect.stdout
    # The big blob sits in the registry's own storage, written through the proxy.
    stored = list((registry.root / "data").rglob(pushed[1].split(":")[1]))
    assert stored
    measure("skopeo push, 2 layers incl. 64 MiB random, MB/s", f"{big / push_s / 1e6:.1f} ({push_s:.2f} s)")
    measure("skopeo pull, same image, MB/s", f"{big / pull_s / 1e6:.1f} ({pull_s:.2f} s)")
    assert "Traceback" not in cp.output()


async def test_upload_location_is_https_on_the_proxy(
        certproxy_factory: Callable[..., CertproxyProcess], registry: Registry, store: Path,
        client_ssl: ssl.SSLContext) -> None:
    cp, port = await asyncio.to_thread(front, certproxy_factory, registry, store)
    async with aiohttp.ClientSession() as s:
        async with s.post(f"https://localhost:{port}/v2/certproxy/loc/blobs/uploads/",
                          ssl=client_ssl, data=b"") as r:
            assert r.status == 202
            location = r.headers["Location"]
            assert r.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
            assert r.headers["Docker-Upload-UUID"]
    assert location.startswith(f"https://localhost:{port}/v2/certproxy/loc/blobs/uploads/")


def _htpasswd(path: Path, user: str, password: str) -> None:
    out = subprocess.run(["htpasswd", "-Bbn", user, password], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    path.write_text(out)


def test_registry_htpasswd_auth_passes_through(
        certproxy_factory: Callable[..., CertproxyProcess],
        registry_factory: Callable[..., Registry], store: Path, ca_dir: Path, tmp_path: Path,
        ca: object) -> None:
    _htpasswd(tmp_path / "htpasswd", "alice", "s3cret-pass")
    registry = registry_factory(htpasswd=tmp_path / "htpasswd", realm="certproxy-test")
    cp, port = front(certproxy_factory, registry, store)
    image = tmp_path / "image"
    make_image(image, MiB)
    ref = f"docker://localhost:{port}/certproxy/private:v1"

    denied = skopeo("copy", "--dest-cert-dir", str(ca_dir), f"oci:{image}:v1", ref)
    assert denied.returncode != 0
    assert "authentication required" in denied.stderr or "unauthorized" in denied.stderr.lower()

    ok = skopeo("copy", "--dest-cert-dir", str(ca_dir), "--dest-creds", "alice:s3cret-pass",
                f"oci:{image}:v1", ref)
    assert ok.returncode == 0, ok.stderr

    import urllib.error
    import urllib.request
    ctx = ssl.create_default_context(cafile=str(ca_dir / "ca.crt"))
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"https://localhost:{port}/v2/", context=ctx, timeout=10)
    assert err.value.code == 401
    assert err.value.headers["WWW-Authenticate"] == 'Basic realm="certproxy-test"'
    assert err.value.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert "s3cret-pass" not in cp.output()


class RssSampler(threading.Thread):
    def __init__(self, cp: CertproxyProcess) -> None:
        super().__init__(daemon=True)
        self.cp = cp
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.cp.rss_kib())
            time.sleep(0.02)


async def test_256_mib_upload_and_download_keep_memory_flat(
        certproxy_factory: Callable[..., CertproxyProcess], registry: Registry, store: Path,
        client_ssl: ssl.SSLContext, measure: Callable[[str, str], None]) -> None:
    cp, port = await asyncio.to_thread(front, certproxy_factory, registry, store)
    base = f"https://localhost:{port}/v2/certproxy/rss"
    chunk = os.urandom(MiB)

    async def push(size_mib: int) -> tuple[str, float]:
        digest = hashlib.sha256()
        for _ in range(size_mib):
            digest.update(chunk)
        ref = "sha256:" + digest.hexdigest()

        async def body():  # type: ignore[no-untyped-def]
            for _ in range(size_mib):
                yield chunk

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as s:
            async with s.post(f"{base}/blobs/uploads/", ssl=client_ssl, data=b"") as r:
                assert r.status == 202
                location = r.headers["Location"]
            sep = "&" if "?" in location else "?"
            t0 = time.monotonic()
            async with s.put(f"{location}{sep}digest={ref}", ssl=client_ssl, data=body(),
                             headers={"Content-Length": str(size_mib * MiB),
                                      "Content-Type": "application/octet-stream"}) as r:
                assert r.status == 201, await r.text()
            return ref, time.monotonic() - t0

    async def pull(ref: str, size_mib: int) -> float:
        got = hashlib.sha256()
        n = 0
        t0 = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as s:
            async with s.get(f"{base}/blobs/{ref}", ssl=client_ssl) as r:
                assert r.status == 200
                async for data in r.content.iter_chunked(1 << 18):
                    got.update(data)
                    n += len(data)
        assert n == size_mib * MiB and "sha256:" + got.hexdigest() == ref
        return time.monotonic() - t0

    warm, _ = await push(8)
    await pull(warm, 8)
    await asyncio.sleep(0.3)
    baseline = cp.rss_kib()
    sampler = RssSampler(cp)
    sampler.start()
    try:
        ref, up_s = await push(256)
        down_s = await pull(ref, 256)
    finally:
        sampler.stop.set()
        sampler.join(5)
    growth_mib = (sampler.peak - baseline) / 1024
    measure("256 MiB through the proxy: RSS baseline / peak MiB",
            f"{baseline / 1024:.1f} / {sampler.peak / 1024:.1f} (growth {growth_mib:.1f} MiB)")
    measure("256 MiB monolithic PUT / GET through the proxy, MB/s",
            f"{256 * MiB / up_s / 1e6:.0f} / {256 * MiB / down_s / 1e6:.0f}")
    assert growth_mib < 20
