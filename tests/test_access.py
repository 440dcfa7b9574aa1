"""The access policy (CERTPROXY_ACCESS) with the real clients: Debian's docker-registry
behind certproxy, skopeo and podman pushing, pulling and deleting as anonymous callers
and as users of the policy, and raw HTTPS requests where a client cannot go (a
cross-repository mount, the catalog, a client's source address, a flood of wrong
passwords, a policy edited while pulls run). What the clients print, what the registry
logs and what certproxy logs are the evidence.

One registry and one certproxy (``site``) serve the tests that do not change the
policy; the failed logins of the tests that run on 127.0.0.1 stay well below the
throttle's limit, the throttling tests use addresses of their own (127.0.0.3-5).
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

pytestmark = pytest.mark.integration

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


def _registry(registry: Registry, method: str, path: str, body: bytes = b"",
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
    status, headers, body = _registry(registry, "POST", f"/v2/{repository}/blobs/uploads/")
    assert status == 202, body
    location = headers["Location"].replace(registry.url, "")
    status, _, body = _registry(registry, "PUT", f"{location}&digest={digest}", data,
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
    status, headers, answer = _registry(registry, "PUT", manifest(repository, tag), body,
                                        {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert status == 201, answer
    return headers["Docker-Content-Digest"]


def catalog_of(registry: Registry) -> list[str]:
    status, _, body = _registry(registry, "GET", "/v2/_catalog?n=1000")
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


# --- 1. who may pull, push and delete, as the clients see it --------------------------


def test_anonymous_pull_writer_push_reader_denied_wrong_password(site: Site, client: Client,
                                                                  tmp_path: Path) -> None:
    layout = tmp_path / "image"
    make_image(layout)
    if client.name == "podman":
        client.load(layout)
    repo = f"{site.host}/team/{client.name}-matrix"

    # anonymous push: the client's own "unauthorized"
    err = failed(client.push(layout, f"{repo}:v1"), "unauthorized")
    assert "denied" not in err
    # a writer (bob, team/*) after giving credentials
    ok(client.push(layout, f"{repo}:v1", creds("bob")))
    # anyone pulls it
    ok(client.pull(f"{repo}:v1"))
    # a read-only user (carol: pull through "anonymous" and private/*) is denied
    failed(client.push(layout, f"{repo}:v2", creds("carol")), DENIED)
    # a wrong password: the token endpoint's answer, as the client words it
    failed(client.push(layout, f"{repo}:v3", creds("bob", "not-bobs")), "incorrect username or password")
    # private/*: admins push, readers pull, anonymous callers are challenged
    private = f"{site.host}/private/{client.name}"
    # bob may not even read private/*: the clients' blob check (HEAD, no body to show) is
    # refused before any upload, and they print the bare status
    failed(client.push(layout, f"{private}:v1", creds("bob")),
           f"failed to read from destination repository private/{client.name}: 403 (Forbidden)")
    ok(client.push(layout, f"{private}:v1", creds("alice")))
    failed(client.pull(f"{private}:v1"), "unauthorized")
    ok(client.pull(f"{private}:v1", creds("carol")))
    # what reached the registry: bob's and alice's tags only
    assert json.loads(_registry(site.registry, "GET", f"/v2/team/{client.name}-matrix/tags/list")[2])[
        "tags"] == ["v1"]
    log = logged(site.cp, f"user=bob action=push repository=team/{client.name}-matrix")
    assert f"refused push of team/{client.name}-matrix for carol from 127.0.0.1" in log


def test_skopeo_pulls_what_it_pushed_byte_for_byte(site: Site, make_client: Callable[[str], Client],
                                                   tmp_path: Path, ca_dir: Path) -> None:
    skopeo = make_client("skopeo")
    layout = tmp_path / "image"
    pushed = make_image(layout, 1 << 20)
    ok(skopeo.push(layout, f"{site.host}/team/bytes:v1", creds("ci-bot")))
    out = tmp_path / "pulled"
    ok(skopeo.run("copy", "--src-cert-dir", str(ca_dir), f"docker://{site.host}/team/bytes:v1",
                  f"oci:{out}:v1"))
    assert layer_digests(out) == pushed


def test_podman_login_then_push_with_the_stored_credentials(
        site: Site, make_client: Callable[[str], Client], tmp_path: Path, ca_dir: Path) -> None:
    podman = make_client("podman")
    layout = tmp_path / "image"
    make_image(layout)
    podman.load(layout)
    failed(podman.run("login", "--cert-dir", str(ca_dir), "-u", "bob", "-p", "wrong", site.host),
           "invalid username/password")
    assert site.host not in (podman.root / "auth.json").read_text()
    out = podman.run("login", "--cert-dir", str(ca_dir), "-u", "bob", "-p", PASSWORDS["bob"], site.host)
    ok(out)
    assert "Login Succeeded" in out.stdout
    ok(podman.push(layout, f"{site.host}/team/logged-in:v1"))  # no --creds: the auth file's
    failed(podman.push(layout, f"{site.host}/public/logged-in:v1"), DENIED)
    ok(podman.run("logout", site.host))
    failed(podman.push(layout, f"{site.host}/team/logged-in:v2"), "unauthorized")


def test_only_an_admin_deletes(site: Site, make_client: Callable[[str], Client], tmp_path: Path,
                               ca_dir: Path) -> None:
    """skopeo delete (podman has no command that deletes from a registry)."""
    skopeo = make_client("skopeo")
    layout = tmp_path / "image"
    make_image(layout)
    ref = f"docker://{site.host}/team/deleted:v1"
    ok(skopeo.push(layout, ref[len("docker://"):], creds("bob")))

    def delete(*args: str) -> subprocess.CompletedProcess[str]:
        return skopeo.run("delete", "--cert-dir", str(ca_dir), *args, ref)

    for user in ("bob", "carol"):  # a writer of team/*, a reader: 403 DENIED
        failed(delete("--creds", creds(user)), 'code\\":\\"DENIED', DENIED[len("denied: "):],
               "(403 Forbidden)")
    failed(delete(), 'code\\":\\"UNAUTHORIZED', "(401 Unauthorized)")  # anonymous: challenged
    assert _registry(site.registry, "GET", manifest("team/deleted"), headers=ACCEPT)[0] == 200
    ok(delete("--creds", creds("alice")))
    assert _registry(site.registry, "GET", manifest("team/deleted"), headers=ACCEPT)[0] == 404
    log = logged(site.cp, r'"DELETE /v2/team/deleted/manifests/sha256:\w+" 202 .* user=alice action=delete')
    assert "refused delete of team/deleted for bob from 127.0.0.1: not granted by the policy" in log
    assert "refused delete of team/deleted for anonymous from 127.0.0.1" in log


# --- 2. cross-repository mounts --------------------------------------------------------


def mount_target(repository: str, digest: str, source: str) -> str:
    return f"/v2/{repository}/blobs/uploads/?mount={digest}&from={source}"


def linked(registry: Registry, repository: str, digest: str) -> bool:
    """Whether the registry's debug log shows the blob linked into ``repository``."""
    link = f"/docker/registry/v2/repositories/{repository}/_layers/sha256/{digest.split(':')[1]}/link"
    return any(e.get("msg") == f'filesystem.PutContent("{link}")' for e in registry_events(registry))


async def test_a_mount_needs_pull_on_its_source(site: Site) -> None:
    public = put_blob(site.registry, "public/mount-src", os.urandom(4096))
    private = put_blob(site.registry, "private/mount-src", os.urandom(4096))

    async def mount(target: str, digest: str, source: str, headers: dict[str, str], mounted: bool,
                    query: str = "") -> None:
        start = f"/v2/{target}/blobs/uploads/?{query}" if query else mount_target(target, digest, source)
        resp = await call(site, "POST", start, headers)
        # what the registry was asked and did, in its own log
        uri = registry_saw(site.registry, f"/v2/{target}/blobs/uploads/")[-1]["http.request.uri"]
        if mounted:
            assert resp.status == 201, resp.body
            assert uri == start
            assert resp.header("Location") == [f"https://{site.host}/v2/{target}/blobs/{digest}"]
            assert linked(site.registry, target, digest)
        else:  # mount and from dropped: a plain upload, and nothing crossed
            assert resp.status == 202, resp.body
            assert uri == f"/v2/{target}/blobs/uploads/"
            assert resp.header("Location")[0].startswith(f"https://{site.host}/v2/{target}/blobs/uploads/")
            assert not linked(site.registry, target, digest)
            assert _registry(site.registry, "HEAD", f"/v2/{target}/blobs/{digest}")[0] == 404

    bob, alice = {"Authorization": basic("bob")}, {"Authorization": basic("alice")}
    # Basic credentials: bob may pull public/* (anonymous may), not private/*; alice may
    await mount("team/mount-a", public, "public/mount-src", bob, mounted=True)
    await mount("team/mount-b", private, "private/mount-src", bob, mounted=False)
    await mount("team/mount-c", private, "private/mount-src", alice, mounted=True)
    # tokens: what the token grants of the source decides, as with a token server
    scopes = ["repository:public/mount-src:pull", "repository:private/mount-src:pull"]
    token = await get_token(site, ["repository:team/mount-d:pull,push", *scopes], "bob")
    await mount("team/mount-d", public, "public/mount-src", bearer(token), mounted=True)
    token = await get_token(site, ["repository:team/mount-e:pull,push", *scopes], "bob")
    await mount("team/mount-e", private, "private/mount-src", bearer(token), mounted=False)
    # a token without the source's scope mounts nothing, though the policy would allow it
    token = await get_token(site, ["repository:team/mount-f:pull,push"], "bob")
    await mount("team/mount-f", public, "public/mount-src", bearer(token), mounted=False)
    # the query as skopeo and podman write it (values percent-encoded) mounts the same
    encoded = f"from=public%2Fmount-src&mount={public.replace(':', '%3A')}"
    await mount("team/mount-g", public, "public/mount-src", bob, mounted=True, query=encoded)
    # the keys percent-encoded: the registry decodes them too, so they are dropped as well
    hidden = f"%6Dount={private}&%66rom=private/mount-src"
    await mount("team/mount-h", private, "private/mount-src", bob, mounted=False, query=hidden)
    # without push on the target, no upload at all
    resp = await call(site, "POST", mount_target("public/mount-i", public, "public/mount-src"), bob)
    assert resp.status == 403 and error_code(resp) == "DENIED"


# --- 3. the catalog per user ----------------------------------------------------------


def links(resp: RawResponse) -> list[str]:
    return [m.group(1) for v in resp.header("Link") for m in [re.fullmatch(r'<([^>]+)>; rel="next"', v)] if m]


async def read_catalog(site: Site, headers: dict[str, str], n: int | None = None) -> tuple[list[str], int]:
    """Every page of the catalog as the caller sees it, following Link; (names, pages)."""
    target: str | None = "/v2/_catalog" + (f"?n={n}" if n else "")
    names: list[str] = []
    pages = 0
    while target is not None and pages < 1000:
        resp = await call(site, "GET", target, headers)
        assert resp.status == 200, resp.body
        page = json.loads(resp.body)["repositories"]
        if n:
            assert len(page) <= n
        names += page
        pages += 1
        nexts = links(resp)
        assert len(nexts) <= 1
        target = nexts[0] if nexts else None
        if target is not None:
            assert target.startswith(f"/v2/_catalog?n={n}&last=")
    return names, pages


async def test_the_catalog_is_filtered_per_user_with_pagination(site: Site) -> None:
    for name in ("public/cat-a", "public/cat-b", "public/cat-c", "team/cat-d", "private/cat-e", "lan/cat-f",
                 "other/cat-g"):
        seed(site.registry, name)
    everything = catalog_of(site.registry)
    pullable = [n for n in everything if fnmatch.fnmatch(n, "team/*") or fnmatch.fnmatch(n, "public/*")]
    assert {"private/cat-e", "lan/cat-f", "other/cat-g"} <= set(everything) - set(pullable)

    # an admin sees everything, in one answer and page by page
    assert (await read_catalog(site, {"Authorization": basic("alice")}))[0] == everything
    names, pages = await read_catalog(site, {"Authorization": basic("alice")}, n=3)
    assert names == everything and pages == -(-len(everything) // 3)
    # dave may list the catalog: what he may pull (what anonymous may), with a token as clients do
    dave = await get_token(site, ["registry:catalog:*"], "dave")
    assert (await read_catalog(site, bearer(dave)))[0] == pullable
    names, pages = await read_catalog(site, bearer(dave), n=2)
    assert names == pullable and pages == -(-len(pullable) // 2)
    # bob has no catalog grant: DENIED, with Basic and with a token that asked for it
    for headers in ({"Authorization": basic("bob")},
                    bearer(await get_token(site, ["registry:catalog:*"], "bob"))):
        resp = await call(site, "GET", "/v2/_catalog", headers)
        assert resp.status == 403 and error_code(resp) == "DENIED"
    # anonymous: the challenge names the catalog's scope
    resp = await call(site, "GET", "/v2/_catalog?n=2")
    assert resp.status == 401 and error_code(resp) == "UNAUTHORIZED"
    assert resp.header("WWW-Authenticate") == [
        f'Bearer realm="https://{site.host}/token",service="{site.host}",scope="registry:catalog:*"']
    # a token of dave's without the catalog scope: sent back for one
    resp = await call(site, "GET", "/v2/_catalog", bearer(await get_token(site, [], "dave")))
    assert resp.status == 401 and 'error="insufficient_scope"' in resp.header("WWW-Authenticate")[0]
    log = logged(site.cp, r'"GET /v2/_catalog\?n=2" 401 .* user=anonymous action=catalog')
    assert "refused catalog for bob from 127.0.0.1: not granted" in log


# --- 4. a rule limited to client addresses ---------------------------------------------


async def test_a_from_rule_looks_at_the_client_address(site: Site) -> None:
    seed(site.registry, "lan/app")
    target = manifest("lan/app")
    # anonymous pull of lan/* from 127.0.0.2 only
    assert (await call(site, "GET", target, ACCEPT, source="127.0.0.2")).status == 200
    resp = await call(site, "GET", target, ACCEPT, source="127.0.0.1")
    assert resp.status == 401
    assert 'scope="repository:lan/app:pull"' in resp.header("WWW-Authenticate")[0]
    # bob's push of lan/* from 127.0.0.2 only
    upload = "/v2/lan/app/blobs/uploads/"
    bob = {"Authorization": basic("bob")}
    assert (await call(site, "POST", upload, bob, source="127.0.0.2")).status == 202
    resp = await call(site, "POST", upload, bob, source="127.0.0.1")
    assert resp.status == 403 and error_code(resp) == "DENIED"
    # a token is granted where it is asked for, and the policy is asked again where it is used
    scopes = ["repository:lan/app:pull,push"]
    near = await get_token(site, scopes, "bob", source="127.0.0.2")
    assert (await call(site, "POST", upload, bearer(near), source="127.0.0.2")).status == 202
    resp = await call(site, "POST", upload, bearer(near), source="127.0.0.1")
    assert resp.status == 403 and error_code(resp) == "DENIED"
    far = await get_token(site, scopes, "bob", source="127.0.0.1")  # grants nothing of lan/app
    resp = await call(site, "POST", upload, bearer(far), source="127.0.0.2")
    assert resp.status == 401 and 'error="insufficient_scope"' in resp.header("WWW-Authenticate")[0]
    # the catalog of an admin is the same from anywhere; dave's follows his address
    dave = await get_token(site, ["registry:catalog:*"], "dave", source="127.0.0.2")
    resp = await call(site, "GET", "/v2/_catalog?n=100000", bearer(dave), source="127.0.0.2")
    assert "lan/app" in json.loads(resp.body)["repositories"]
    resp = await call(site, "GET", "/v2/_catalog?n=100000", bearer(dave), source="127.0.0.1")
    assert "lan/app" not in json.loads(resp.body)["repositories"]
    assert "refused push of lan/app for bob from 127.0.0.1" in site.cp.output()


# --- 5. failed logins ------------------------------------------------------------------


async def test_wrong_passwords_are_throttled_per_address(site: Site) -> None:
    seed(site.registry, "team/throttle")
    token_path = f"/token?service={site.host}&scope=repository:team/throttle:pull"
    statuses = []
    async with Conn(site, "127.0.0.3") as conn:
        for _ in range(11):
            resp = await conn.send("GET", token_path, {"Authorization": basic("bob", "guess")})
            statuses.append(resp.status)
        assert statuses == [401] * 10 + [429]
        assert error_code(resp) == "TOOMANYREQUESTS"
        retry = int(resp.header("Retry-After")[0])
        assert 1 <= retry <= 60
        # the address's logins wait, good ones too, at the token endpoint and in Basic
        assert (await conn.send("GET", token_path, {"Authorization": basic("bob")})).status == 429
        resp = await conn.send("GET", manifest("team/throttle"), {"Authorization": basic("bob"), **ACCEPT})
        assert resp.status == 429
        # anonymous callers from there are not logging in: served
        assert (await conn.send("GET", manifest("team/throttle"), ACCEPT)).status == 200
    # another address is unaffected: a wrong password is a 401, the right one a token
    async with Conn(site, "127.0.0.4") as conn:
        assert (await conn.send("GET", token_path, {"Authorization": basic("bob", "guess")})).status == 401
        assert (await conn.send("GET", token_path, {"Authorization": basic("bob")})).status == 200
    log = logged(site.cp, "throttled logins from 127.0.0.3")
    assert log.count("throttled logins from 127.0.0.3") == 1  # once per window
    assert log.count("failed login from 127.0.0.3: user bob") == 10
    assert "guess" not in log


async def timed_pulls(conn: Conn, target: str, headers: dict[str, str], count: int,
                      every: float) -> list[float]:
    """``count`` GETs, one each ``every`` seconds; their latencies in milliseconds."""
    times = []
    start = time.monotonic()
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i * every - time.monotonic()))
        t0 = time.perf_counter()
        resp = await conn.send("GET", target, headers)
        times.append((time.perf_counter() - t0) * 1000)
        assert resp.status == 200, resp.body
    return times


def figures(times: list[float]) -> str:
    p95 = statistics.quantiles(times, n=20)[-1]
    return f"median {statistics.median(times):.1f} ms, p95 {p95:.1f} ms"


async def test_pull_latency_while_another_address_floods_wrong_passwords(
        site: Site, measure: Callable[[str, str], None]) -> None:
    seed(site.registry, "team/latency")
    token = await get_token(site, ["repository:team/latency:pull"], "bob")
    headers = {**bearer(token), **ACCEPT}
    target = manifest("team/latency")
    flood_statuses: list[int] = []
    stop = asyncio.Event()

    async def flood() -> None:  # 50 wrong passwords a second from 127.0.0.5
        wrong = {"Authorization": basic("bob", "brute-force")}
        path = f"/token?service={site.host}&scope=repository:team/latency:pull,push"
        start = time.monotonic()
        async with Conn(site, "127.0.0.5") as conn:
            i = 0
            while not stop.is_set():
                await asyncio.sleep(max(0.0, start + i * 0.02 - time.monotonic()))
                flood_statuses.append((await conn.send("GET", path, wrong)).status)
                i += 1

    count, every = 200, 0.01
    async with Conn(site) as conn:
        await timed_pulls(conn, target, headers, 20, every)  # warm
        idle = await timed_pulls(conn, target, headers, count, every)
        flooding = asyncio.create_task(flood())
        await asyncio.sleep(0.5)
        try:
            busy = await timed_pulls(conn, target, headers, count, every)
        finally:
            stop.set()
            await asyncio.wait_for(flooding, 15)
    assert flood_statuses[:10] == [401] * 10 and set(flood_statuses[10:]) == {429}
    rate = len(flood_statuses) / (0.5 + count * every)
    measure("authenticated manifest GET (token, keep-alive), idle",
            f"{figures(idle)} over {count}")
    measure("authenticated manifest GET while another address sends 50 wrong passwords/s",
            f"{figures(busy)} over {count} (flood: {len(flood_statuses)} logins at {rate:.0f}/s, "
            f"{flood_statuses.count(401)} x 401 then {flood_statuses.count(429)} x 429)")
    assert statistics.median(busy) < 1000  # generous: the machine is shared


# --- 6. editing the policy while pulls run ------------------------------------------------

LIVE_POLICY = """\
users = "htpasswd"

[[rule]]
repositories = ["team/*"]
who = ["anonymous"]
actions = ["pull"]

[[rule]]
repositories = ["extra/*"]
who = ["bob"]
actions = ["pull"]
"""
WITHOUT_BOB = LIVE_POLICY.split("\n[[rule]]\nrepositories = [\"extra/*\"]")[0]
BROKEN = LIVE_POLICY.replace('who = ["bob"]', 'who = ["@pullers"]')  # line 10: no such group


@dataclass
class Loop:
    """Pulls over one keep-alive connection until told to stop: (time, status) of each."""

    name: str
    target: str
    headers: dict[str, str]
    seen: list[tuple[float, int]] = field(default_factory=list)

    async def run(self, site: Site, stop: asyncio.Event) -> None:
        async with Conn(site) as conn:  # one connection: any drop fails the loop
            while not stop.is_set():
                resp = await conn.send("GET", self.target, {**self.headers, **ACCEPT})
                assert resp.header("Connection") != ["close"], resp.head
                self.seen.append((time.monotonic(), resp.status))
                await asyncio.sleep(0.01)

    def since(self, t: float) -> list[int]:
        return [status for when, status in self.seen if when > t]


async def until_status(loops: list[Loop], status: int, since: float, timeout: float = 5) -> float:
    """Seconds from ``since`` until every loop has answered ``status`` (the first such answer
    of the slowest loop); fails past ``timeout``."""
    deadline = since + timeout
    while time.monotonic() < deadline:
        if all(loop.since(since) and loop.since(since)[-1] == status for loop in loops):
            return max(next(t for t, s in loop.seen if t > since and s == status) for loop in loops) - since
        await asyncio.sleep(0.02)
    recent = {loop.name: loop.since(since)[-5:] for loop in loops}
    raise AssertionError(f"not {status} within {timeout} s: {recent}")


def changed_once(statuses: list[int], before: int, after: int) -> bool:
    """``before`` for a while, then ``after`` for good: no flapping."""
    turn = statuses.index(after) if after in statuses else len(statuses)
    return set(statuses[:turn]) <= {before} and set(statuses[turn:]) <= {after}


async def test_policy_edits_under_load_take_effect_without_dropping_a_connection(
        site: Site, tmp_path: Path, ca: trustme.CA, ca_dir: Path,
        measure: Callable[[str, str], None]) -> None:
    seed(site.registry, "team/live")
    seed(site.registry, "extra/live")
    live = await asyncio.to_thread(start_site, tmp_path / "live", ca, ca_dir, LIVE_POLICY, site.registry)
    try:
        token = await get_token(live, ["repository:extra/live:pull"], "bob")
        public = Loop("anonymous team/live", manifest("team/live"), {})
        basic_loop = Loop("bob Basic extra/live", manifest("extra/live"), {"Authorization": basic("bob")})
        token_loop = Loop("bob token extra/live", manifest("extra/live"), bearer(token))
        bobs = [basic_loop, token_loop]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(lp.run(live, stop)) for lp in (public, *bobs)]
        try:
            await until_status([public, *bobs], 200, time.monotonic())
            # 1. bob's grant taken away by a rename over the file
            t_rename = time.monotonic()
            (live.root / "access.new").write_text(WITHOUT_BOB)
            os.replace(live.root / "access.new", live.policy)
            rename_s = await until_status(bobs, 403, t_rename)
            # 2. given back by an edit in place
            t_edit = time.monotonic()
            live.policy.write_text(LIVE_POLICY)
            edit_s = await until_status(bobs, 200, t_edit)
            # 3. a broken edit in place: the last good policy stays
            t_broken = time.monotonic()
            live.policy.write_text(BROKEN)
            await asyncio.to_thread(logged, live.cp, r"access\.toml:10: unknown group")
            await asyncio.sleep(1.5)  # three more looks at the file
            # 4. the file gone for a while: still the last good policy, said once
            live.policy.unlink()
            await asyncio.to_thread(logged, live.cp, r"access\.toml: No such file or directory")
            await asyncio.sleep(1.5)
            live.policy.write_text(LIVE_POLICY)  # back, and good again
            await asyncio.to_thread(wait_for, lambda: live.cp.output().count("access.toml reloaded") == 3,
                                    5, "the policy back")
        finally:
            stop.set()
            done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
        errors = [repr(r) for r in done if r is not None]
        assert not errors, errors  # no request failed, no connection dropped
        assert public.seen and set(public.since(0)) == {200}
        for lp in bobs:
            before_edit = [s for when, s in lp.seen if when <= t_edit]
            assert changed_once(before_edit, 200, 403), (lp.name, before_edit)
            after_edit = [s for when, s in lp.seen if when > t_edit]
            assert changed_once(after_edit, 403, 200), (lp.name, after_edit)
            assert set(lp.since(t_broken)) == {200}
        assert rename_s < 1.5 and edit_s < 1.5, (rename_s, edit_s)
        log = live.cp.output()
        problem = [line for line in log.splitlines() if "access.toml:10:" in line]
        assert len(problem) == 1, problem  # said once
        assert problem[0].endswith('access.toml:10: unknown group "@pullers" in "who" of [[rule]] 2 '
                                   '(there are no groups); keeping the last good policy'), problem
        assert log.count("access.toml reloaded") == 3
        gone = [line for line in log.splitlines() if "No such file or directory" in line]
        assert len(gone) == 1 and gone[0].endswith("keeping the last good policy"), gone
        measure("policy edit to effect under load (rename / in place)", f"{rename_s:.2f} s / {edit_s:.2f} s")
    finally:
        stop_process(live.cp.proc)


async def test_a_changed_password_takes_effect_without_a_restart(site: Site, tmp_path: Path, ca: trustme.CA,
                                                                 ca_dir: Path) -> None:
    seed(site.registry, "extra/pw")
    live = await asyncio.to_thread(start_site, tmp_path / "pw", ca, ca_dir, LIVE_POLICY, site.registry)
    try:
        target = manifest("extra/pw")
        async with Conn(live) as conn:
            assert (await conn.send("GET", target, {"Authorization": basic("bob"), **ACCEPT})).status == 200
            users = live.root / "htpasswd"
            lines = [ln for ln in users.read_text().splitlines() if not ln.startswith("bob:")]
            lines.append(make_entry("bob", "new-pw", cost=8))
            (live.root / "htpasswd.new").write_text("\n".join(lines) + "\n")
            t0 = time.monotonic()
            os.replace(live.root / "htpasswd.new", users)
            while True:  # bounded: one failed login at most, the throttle stays far
                resp = await conn.send("GET", target, {"Authorization": basic("bob"), **ACCEPT})
                if resp.status != 200 or time.monotonic() - t0 > 5:
                    break
                await asyncio.sleep(0.1)
            assert resp.status == 401 and time.monotonic() - t0 < 2.5
            resp = await conn.send("GET", target, {"Authorization": basic("bob", "new-pw"), **ACCEPT})
            assert resp.status == 200
    finally:
        stop_process(live.cp.proc)


# --- 7. a broken policy at start-up ------------------------------------------------------

BROKEN_AT_START = [
    ("unknown key", POLICY.replace('repositories = ["private/*"]', 'repository = ["private/*"]'),
     'repository = ["private/*"]',
     'unknown key "repository" in [[rule]] 4 (did you mean "repositories"?)'),
    ("unknown group", POLICY.replace('who = ["@ci", "bob"]', 'who = ["@cl", "bob"]'), 'who = ["@cl", "bob"]',
     'unknown group "@cl" in "who" of [[rule]] 2 (did you mean "@ci"?)'),
    ("bad CIDR", POLICY.replace('"10.0.0.0/8"', '"10.0.0/8"'), '"10.0.0/8"',
     'bad address "10.0.0/8" in "from" of [[rule]] 2 (a CIDR like 10.0.0.0/8 or fd00::/8)'),
    ("host bits", POLICY.replace('"10.0.0.0/8"', '"10.1.2.3/8"'), '"10.1.2.3/8"',
     '"10.1.2.3/8" in "from" of [[rule]] 2 has host bits set (did you mean "10.0.0.0/8"?)'),
    ("missing users file", POLICY.replace('users = "htpasswd"', 'users = "no-such-htpasswd"'),
     'users = "no-such-htpasswd"', "users file {root}/no-such-htpasswd does not exist"),
]


@pytest.mark.parametrize(("text", "culprit", "reason"), [case[1:] for case in BROKEN_AT_START],
                         ids=[case[0] for case in BROKEN_AT_START])
def test_a_broken_policy_stops_start_up_with_one_line(text: str, culprit: str, reason: str, tmp_path: Path,
                                                      store: Path) -> None:
    root = tmp_path / "broken"
    root.mkdir()
    write_users(root / "htpasswd")
    (root / "access.toml").write_text(text)
    line = next(n for n, ln in enumerate(text.splitlines(), start=1) if culprit in ln)
    port = free_port()
    cp = start_certproxy(tmp_path, {port: "http://127.0.0.1:9"}, store, wait=False, extra_env={
        "CERTPROXY_ACCESS": str(root / "access.toml"), "CERTPROXY_ACCESS_PORTS": str(port)})
    try:
        assert cp.proc.wait(30) == 2
    finally:
        stop_process(cp.proc)
    out = cp.output()
    expected = f"certproxy: CERTPROXY_ACCESS: access.toml:{line}: {reason.format(root=root)}"
    named = [ln for ln in out.splitlines() if "access.toml" in ln or "ERROR" in ln or "Traceback" in ln]
    assert named == [expected], out
    assert "listening on" not in out


# --- 8. replicas sharing a store -----------------------------------------------------------


async def test_replicas_sharing_a_store_accept_each_others_tokens(site: Site, tmp_path: Path, ca: trustme.CA,
                                                                  ca_dir: Path) -> None:
    seed(site.registry, "team/replicated")
    store = tmp_path / "store"
    write_live(store, "localhost", ca, "localhost", "127.0.0.1")
    a = await asyncio.to_thread(start_site, tmp_path / "a", ca, ca_dir, POLICY, site.registry, store)
    try:
        b = await asyncio.to_thread(start_site, tmp_path / "b", ca, ca_dir, POLICY, site.registry, store)
        try:
            scopes = ["repository:team/replicated:pull,push"]
            target = manifest("team/replicated")
            # replicas behind one name: the client's Host is the same whichever answers
            from_a = await get_token(a, scopes, "bob")
            resp = await call(b, "GET", target, {**bearer(from_a), **ACCEPT}, host=a.host)
            assert resp.status == 200, resp.body
            resp = await call(b, "POST", "/v2/team/replicated/blobs/uploads/", bearer(from_a), host=a.host)
            assert resp.status == 202, resp.body
            from_b = await get_token(b, scopes, "bob")
            resp = await call(a, "GET", target, {**bearer(from_b), **ACCEPT}, host=b.host)
            assert resp.status == 200, resp.body
            # a token is for the service it was asked for
            resp = await call(b, "GET", target, {**bearer(from_a), **ACCEPT})
            assert resp.status == 401 and 'error="invalid_token"' in resp.header("WWW-Authenticate")[0]
            # a forged one is refused and is no failed login
            forged = from_a[:-4] + ("AAAA" if not from_a.endswith("AAAA") else "BBBB")
            resp = await call(b, "GET", target, {**bearer(forged), **ACCEPT}, host=a.host)
            assert resp.status == 401 and 'error="invalid_token"' in resp.header("WWW-Authenticate")[0]
            # a key no replica made: refused after one reread of the store's keys
            unknown = "0123456789abcdef" + from_a[16:]
            t0 = time.monotonic()
            resp = await call(b, "GET", target, {**bearer(unknown), **ACCEPT}, host=a.host)
            assert resp.status == 401 and 'error="invalid_token"' in resp.header("WWW-Authenticate")[0]
            assert time.monotonic() - t0 < 5
            assert "failed login" not in b.cp.output()
        finally:
            stop_process(b.cp.proc)
    finally:
        stop_process(a.cp.proc)
    keys = list((store / "tokens").iterdir())
    assert keys and all(k.stat().st_mode & 0o077 == 0 for k in keys)


# --- 9. a plain HTTPS client -------------------------------------------------------------


def curl(site: Site, path: str, *args: str) -> tuple[int, dict[str, str], bytes]:
    out = subprocess.run(["curl", "-sS", "--max-time", "15", "--cacert", str(site.ca_dir / "ca.crt"),
                          "-D", "-", *args, f"https://{site.host}{path}"], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_curl_gets_a_public_manifest_and_the_ping_asks_for_credentials(site: Site) -> None:
    digest = seed(site.registry, "public/plain")
    status, headers, body = curl(site, manifest("public/plain"), "-H",
                                 "Accept: application/vnd.oci.image.manifest.v1+json")
    assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == digest
    assert headers["docker-content-digest"] == digest
    challenge = f'Bearer realm="https://{site.host}/token",service="{site.host}"'
    for extra in ([], ["-H", "Authorization: Basic Og=="]):  # nobody, or the empty login some clients send
        status, headers, body = curl(site, "/v2/", *extra)
        assert status == 401 and headers["www-authenticate"] == challenge
        assert headers["docker-distribution-api-version"] == "registry/2.0"
        assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
    status, headers, body = curl(site, "/v2/", "-u", creds("carol"))
    assert status == 200 and json.loads(body) == {}
    status, headers, body = curl(site, "/v2/", "-u", creds("carol", "wrong"))
    assert status == 401 and json.loads(body)["errors"][0]["message"] == "incorrect username or password"
    # a private manifest without credentials: the challenge names its scope
    seed(site.registry, "private/plain")
    status, headers, _ = curl(site, manifest("private/plain"))
    assert status == 401
    assert headers["www-authenticate"] == challenge + ',scope="repository:private/plain:pull"'
