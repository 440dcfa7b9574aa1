"""A registry behind certproxy with an access policy, for the access tests
(``test_access.py``, ``test_access_live.py``): the servers (``site``, one per module),
raw HTTPS requests, the registry reached directly, and skopeo and podman as clients.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import gzip
import hashlib
import json
import os
import re
import shutil
import ssl
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

from certproxy.service.auth import make_entry
from conftest import write_live
from support.oci import layer_digests, make_image
from support.procs import CertproxyProcess, free_port, start_certproxy, stop_process, wait_for
from support.rawhttp import RawResponse, read_response
from support.registry import Registry, start_registry

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "dave": "dave-pw",
             "ci-bot": "ci-bot-pw"}

# The example, adapted: anonymous pull of team/* and public/* (private/* is for
# its readers), an auditor who may list the catalog, and lan/* only from 127.0.0.2.
POLICY = """\
users = "htpasswd"

[groups]
ci = ["ci-bot"]
admins = ["alice"]
readers = ["carol"]

[[rule]]
repositories = ["team/*", "public/*"]
who = ["anonymous"]
actions = ["pull"]

[[rule]]
repositories = ["team/*"]
who = ["@ci", "bob"]
actions = ["pull", "push"]
from = ["10.0.0.0/8", "127.0.0.0/8"]

[[rule]]
repositories = ["*"]
who = ["@admins"]
actions = ["pull", "push", "delete", "catalog"]

[[rule]]
repositories = ["private/*"]
who = ["@readers"]
actions = ["pull"]

[[rule]]
repositories = ["public/*"]
who = ["dave"]
actions = ["catalog"]

[[rule]]
repositories = ["lan/*"]
who = ["anonymous"]
actions = ["pull"]
from = ["127.0.0.2/32"]

[[rule]]
repositories = ["lan/*"]
who = ["bob"]
actions = ["push"]
from = ["127.0.0.2"]
"""

MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json,"
                  "application/vnd.docker.distribution.manifest.v2+json")
DENIED = "denied: requested access to the resource is denied"


# --- the servers ---------------------------------------------------------------------


def write_users(path: Path) -> None:
    path.write_text("".join(make_entry(u, p, cost=8) + "\n" for u, p in PASSWORDS.items()))


@dataclass
class Site:
    """certproxy (access policy on ``port``) in front of a registry, and the test CA."""

    registry: Registry
    cp: CertproxyProcess
    port: int
    root: Path
    ca_dir: Path
    tls: ssl.SSLContext = field(repr=False)

    @property
    def host(self) -> str:
        return f"localhost:{self.port}"

    @property
    def policy(self) -> Path:
        return self.root / "access.toml"


def make_tls(ca_dir: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_dir / "ca.crt"))


def start_site(root: Path, ca: trustme.CA, ca_dir: Path, policy: str, registry: Registry | None = None,
               store: Path | None = None) -> Site:
    """certproxy with ``policy`` in front of ``registry`` (a new one with a debug log when None)."""
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "htpasswd").exists():
        write_users(root / "htpasswd")
    (root / "access.toml").write_text(policy)
    if store is None:
        store = root / "store"
        write_live(store, "localhost", ca, "localhost", "127.0.0.1")
    registry = registry or start_registry(root, log_level="debug")
    port = free_port()
    cp = start_certproxy(root, {port: registry.url}, store, extra_env={
        "CERTPROXY_ACCESS": str(root / "access.toml"), "CERTPROXY_ACCESS_PORTS": str(port)})
    return Site(registry, cp, port, root, ca_dir, make_tls(ca_dir))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA, ca_dir: Path) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("access")
    registry = start_registry(root, log_level="debug")
    try:
        s = start_site(root, ca, ca_dir, POLICY, registry)
    except BaseException:
        stop_process(registry.proc)
        raise
    yield s
    stop_process(s.cp.proc)
    stop_process(registry.proc)
    assert "Traceback" not in s.cp.output()


# --- raw HTTPS -----------------------------------------------------------------------


def basic(user: str, password: str | None = None) -> str:
    password = PASSWORDS[user] if password is None else password
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Conn:
    """One keep-alive TLS connection to certproxy from a chosen source address."""

    def __init__(self, site: Site, source: str = "127.0.0.1") -> None:
        self.site, self.source = site, source
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Conn:
        self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", self.site.port, ssl=self.site.tls, server_hostname="localhost",
            local_addr=(self.source, 0)), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()

    async def send(self, method: str, target: str, headers: dict[str, str] | None = None,
                   body: bytes = b"", host: str | None = None, timeout: float = 15) -> RawResponse:
        assert self.reader is not None and self.writer is not None
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host or self.site.host}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await self.writer.drain()
        resp = await asyncio.wait_for(read_response(self.reader, method), timeout)
        if not resp.complete:
            raise ConnectionError(f"{method} {target}: the answer was cut off")
        return resp


async def call(site: Site, method: str, target: str, headers: dict[str, str] | None = None,
               body: bytes = b"", source: str = "127.0.0.1", host: str | None = None) -> RawResponse:
    async with Conn(site, source) as conn:
        return await conn.send(method, target, headers, body, host)


async def get_token(site: Site, scopes: list[str], user: str | None = None,
                    source: str = "127.0.0.1") -> str:
    """A token from ``site``'s token endpoint, as a client asks for one (``user``: with
    that user's Basic credentials)."""
    query = "&".join([f"service={site.host}"] + [f"scope={s}" for s in scopes])
    headers = {"Authorization": basic(user)} if user else {}
    resp = await call(site, "GET", f"/token?{query}", headers, source=source)
    assert resp.status == 200, resp.body
    body = json.loads(resp.body)
    assert body["token"] == body["access_token"] and body["expires_in"] > 0
    return str(body["token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_code(resp: RawResponse) -> str:
    return str(json.loads(resp.body)["errors"][0]["code"])


def manifest(repository: str, tag: str = "v1") -> str:
    return f"/v2/{repository}/manifests/{tag}"


ACCEPT = {"Accept": MANIFEST_TYPES}


def logged(cp: CertproxyProcess, pattern: str, timeout: float = 5) -> str:
    """certproxy's log once ``pattern`` (a regular expression) is in it (access lines are
    written a few times a second)."""
    wait_for(lambda: re.search(pattern, cp.output()) is not None, timeout, f"{pattern!r} in the log")
    return cp.output()


# --- the registry, directly ----------------------------------------------------------


def registry_call(registry: Registry, method: str, path: str, body: bytes = b"",
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(registry.url + path, data=body if method != "GET" else None,
                                 method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def put_blob(registry: Registry, repository: str, data: bytes) -> str:
    """A blob uploaded straight into the registry (monolithic), its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    status, headers, body = registry_call(registry, "POST", f"/v2/{repository}/blobs/uploads/")
    assert status == 202, body
    location = headers["Location"].replace(registry.url, "")
    status, _, body = registry_call(registry, "PUT", f"{location}&digest={digest}", data,
                                {"Content-Type": "application/octet-stream"})
    assert status == 201, body
    return digest


def seed(registry: Registry, repository: str, tag: str = "v1") -> str:
    """A small OCI image pushed straight into the registry; its manifest's digest."""
    layer = put_blob(registry, repository, gzip.compress(os.urandom(64), mtime=0))
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    config_digest = put_blob(registry, repository, config)
    body = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer,
                    "size": 84}],
    }).encode()
    status, headers, answer = registry_call(registry, "PUT", manifest(repository, tag), body,
                                        {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert status == 201, answer
    return headers["Docker-Content-Digest"]


def catalog_of(registry: Registry) -> list[str]:
    status, _, body = registry_call(registry, "GET", "/v2/_catalog?n=1000")
    assert status == 200
    return list(json.loads(body)["repositories"])


_LOGFMT = re.compile(r'([\w.]+)=("(?:[^"\\]|\\.)*"|\S*)')


def registry_events(registry: Registry) -> list[dict[str, str]]:
    """The registry's log (logrus text lines) as dictionaries."""
    events = []
    for line in registry.log.read_text(errors="replace").splitlines():
        fields = {}
        for key, value in _LOGFMT.findall(line):
            fields[key] = json.loads(value) if value.startswith('"') else value
        events.append(fields)
    return events


def registry_saw(registry: Registry, uri_prefix: str, timeout: float = 5) -> list[dict[str, str]]:
    """The registry's "response completed" events for requests whose URI starts so, once
    there is one (the registry logs after answering)."""
    found: list[dict[str, str]] = []

    def seen() -> bool:
        found[:] = [e for e in registry_events(registry) if e.get("msg") == "response completed"
                    and e.get("http.request.uri", "").startswith(uri_prefix)]
        return bool(found)

    wait_for(seen, timeout, f"the registry's log of {uri_prefix}")
    return found


# --- the clients ---------------------------------------------------------------------


@dataclass
class Client:
    """skopeo or podman, with their files under ``root``: storage (vfs), containers.conf,
    registries.conf, signature policy, auth file and podman's network folder are the
    test's, none of the host's is read or written. (As root, both keep their blob-info
    cache in /var/lib/containers/cache, for which c/image has no setting.)"""

    name: str
    root: Path
    ca_dir: Path
    image_id: str = ""
    runroot: Path = Path()  # podman wants it short (at most 50 characters)

    def env(self) -> dict[str, str]:
        r = self.root
        return {**{k: v for k, v in os.environ.items() if not k.startswith(("CONTAINERS_", "REGISTRY_"))},
                "CONTAINERS_CONF": str(r / "containers.conf"),
                "CONTAINERS_STORAGE_CONF": str(r / "storage.conf"),
                "CONTAINERS_REGISTRIES_CONF": str(r / "registries.conf"),
                "REGISTRIES_CONFIG_PATH": str(r / "registries.conf"),
                "REGISTRY_AUTH_FILE": str(r / "auth.json"),
                "XDG_RUNTIME_DIR": str(r / "run"), "XDG_CONFIG_HOME": str(r / "config"),
                "XDG_DATA_HOME": str(r / "data"), "TMPDIR": str(r / "tmp")}

    def setup(self) -> Client:
        r = self.root
        for sub in ("run", "config", "data", "tmp", "storage", "networks"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        self.runroot = Path(tempfile.mkdtemp(prefix="certproxy-podman-"))
        (r / "containers.conf").write_text(
            '[engine]\nevents_logger = "none"\ncgroup_manager = "cgroupfs"\n'
            f'tmp_dir = "{self.runroot / "libpod"}"\n'
            f'[network]\nnetwork_config_dir = "{r / "networks"}"\n')
        (r / "storage.conf").write_text(f'[storage]\ndriver = "vfs"\nrunroot = "{self.runroot}"\n'
                                        f'graphroot = "{r / "storage"}"\n')
        (r / "registries.conf").write_text("unqualified-search-registries = []\n")
        (r / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
        (r / "auth.json").write_text('{"auths": {}}\n')
        return self

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        if self.name == "skopeo":
            argv = ["skopeo", "--insecure-policy", *args]
        else:
            r = self.root
            argv = ["podman", "--root", str(r / "storage"), "--runroot", str(self.runroot),
                    "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none",
                    "--tmpdir", str(self.runroot / "libpod"), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self.env(),
                              stdin=subprocess.DEVNULL)

    def load(self, layout: Path) -> None:
        """podman: the OCI layout into its storage, the image to push."""
        out = self.run("pull", "--signature-policy", str(self.root / "policy.json"), f"oci:{layout}:v1")
        assert out.returncode == 0, out.stderr
        self.image_id = out.stdout.split()[-1]

    def push(self, layout: Path, ref: str, creds: str | None = None) -> subprocess.CompletedProcess[str]:
        if self.name == "skopeo":
            extra = ["--dest-creds", creds] if creds else []
            return self.run("copy", "--dest-cert-dir", str(self.ca_dir), *extra, f"oci:{layout}:v1",
                            f"docker://{ref}")
        extra = ["--creds", creds] if creds else []
        return self.run("push", "--signature-policy", str(self.root / "policy.json"), "--cert-dir",
                        str(self.ca_dir), *extra, self.image_id, f"docker://{ref}")

    def pull(self, ref: str, creds: str | None = None) -> subprocess.CompletedProcess[str]:
        if self.name == "skopeo":
            extra = ["--src-creds", creds] if creds else []
            out = self.root / f"pulled-{time.monotonic_ns()}"
            return self.run("copy", "--src-cert-dir", str(self.ca_dir), *extra, f"docker://{ref}",
                            f"oci:{out}:v1")
        extra = ["--creds", creds] if creds else []
        return self.run("pull", "--signature-policy", str(self.root / "policy.json"), "--cert-dir",
                        str(self.ca_dir), *extra, ref)


def creds(user: str, password: str | None = None) -> str:
    return f"{user}:{PASSWORDS[user] if password is None else password}"


def failed(out: subprocess.CompletedProcess[str], *wanted: str) -> str:
    """The client's stderr, once it is clear the client failed and printed ``wanted``."""
    assert out.returncode != 0, out.stdout + out.stderr
    for text in wanted:
        assert text in out.stderr, out.stderr
    return out.stderr


def ok(out: subprocess.CompletedProcess[str]) -> None:
    assert out.returncode == 0, out.stderr


@pytest.fixture
def make_client(tmp_path: Path, ca_dir: Path) -> Iterator[Callable[[str], Client]]:
    made: list[Client] = []

    def make(name: str) -> Client:
        if shutil.which(name) is None:
            pytest.fail(f"{name} is not installed (scripts/install-system-deps.sh installs it)")
        made.append(Client(name, tmp_path / name, ca_dir).setup())
        return made[-1]

    yield make
    for c in made:
        shutil.rmtree(c.runroot, ignore_errors=True)


@pytest.fixture(params=["skopeo", "podman"])
def client(request: pytest.FixtureRequest, make_client: Callable[[str], Client]) -> Client:
    return make_client(request.param)
