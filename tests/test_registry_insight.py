"""What certproxy says of the registry's traffic, with real clients: Debian's
docker-registry (with its own htpasswd auth, or behind certproxy's access policy),
skopeo pushing and pulling, raw HTTPS where a client cannot go (an upload cut off
mid-body, a session cancelled), the access lines (text and JSON) and ``/metrics``
on the admin listener as Prometheus would scrape it.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from conftest import write_live
from support.access_site import POLICY, write_users
from support.oci import layer_digests, make_image
from support.procs import CertproxyProcess, free_port, start_certproxy, stop_process, wait_for
from support.registry import Registry, start_registry

pytestmark = pytest.mark.integration

MiB = 1 << 20
PASSWORD = "insight-s3cret"


@dataclass
class Front:
    cp: CertproxyProcess
    registry: Registry
    port: int
    admin: int
    ca_dir: Path

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_dir / "ca.crt"))


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=300)


def start_front(root: Path, ca: trustme.CA, ca_dir: Path, registry: Registry,
                extra: dict[str, str]) -> Front:
    """certproxy on a free port in front of ``registry``: that port is a registry port as
    CERTPROXY_REGISTRY_PORTS, or, with an access policy in ``extra``, as its port."""
    store = root / f"store-{free_port()}"
    write_live(store, "localhost", ca, "localhost", "127.0.0.1")
    port, admin = free_port(), free_port()
    ports = "CERTPROXY_ACCESS_PORTS" if "CERTPROXY_ACCESS" in extra else "CERTPROXY_REGISTRY_PORTS"
    cp = start_certproxy(root, {port: registry.url}, store, extra_env={
        ports: str(port), "CERTPROXY_ADMIN_PORT": str(admin), **extra})
    return Front(cp, registry, port, admin, ca_dir)


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA, ca_dir: Path) -> Iterator[Front]:
    """certproxy in front of a registry that checks its own htpasswd file."""
    root = tmp_path_factory.mktemp("insight")
    htpasswd = root / "htpasswd"
    htpasswd.write_text(subprocess.run(["htpasswd", "-Bbn", "alice", PASSWORD], capture_output=True,
                                       text=True, check=True, timeout=30).stdout)
    registry = start_registry(root, htpasswd=htpasswd)
    try:
        f = start_front(root, ca, ca_dir, registry, {})
    except BaseException:
        stop_process(registry.proc)
        raise
    yield f
    stop_process(f.cp.proc)
    stop_process(registry.proc)
    out = f.cp.output()
    assert "Traceback" not in out and PASSWORD not in out
    assert base64.b64encode(f"alice:{PASSWORD}".encode()).decode() not in out


def lines_with(cp: CertproxyProcess, text: str, count: int, timeout: float = 10) -> list[str]:
    """The access lines holding ``text``, once there are ``count`` of them."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in cp.output().splitlines() if "certproxy.access" in line and text in line]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_push_and_a_pull_in_the_access_lines_and_the_metrics(front: Front, tmp_path: Path) -> None:
    image = tmp_path / "image"
    pushed = make_image(image, 8 * MiB)
    ref = f"docker://localhost:{front.port}/insight/app:v1"
    push = skopeo("copy", "--dest-cert-dir", str(front.ca_dir), "--dest-creds", f"alice:{PASSWORD}",
                  f"oci:{image}:v1", ref)
    assert push.returncode == 0, push.stderr
    pull = skopeo("copy", "--src-cert-dir", str(front.ca_dir), "--src-creds", f"alice:{PASSWORD}",
                  ref, f"oci:{tmp_path / 'pulled'}:v1")
    assert pull.returncode == 0, pull.stderr
    assert layer_digests(tmp_path / "pulled") == pushed

    # one grep for an upload's id follows the layer: POST (the id from Docker-Upload-UUID),
    # PATCH, PUT with the digest that finished it
    opened = lines_with(front.cp, '"POST /v2/insight/app/blobs/uploads/" 202', 3)
    uploads = [re.search(r"upload=(\S+)$", line).group(1) for line in opened]  # type: ignore[union-attr]
    assert len(uploads) == 3 and "-" not in uploads  # two layers and the config
    for upload in uploads:
        trail = lines_with(front.cp, upload, 3)
        assert [re.search(r'"(\w+) ', line).group(1) for line in trail] == ["POST", "PATCH", "PUT"], trail  # type: ignore[union-attr]
        assert all(f"user=alice action=push repository=insight/app" in line for line in trail), trail
        assert re.search(r'" 201 .* reference=sha256:[0-9a-f]{64} upload=', trail[-1]), trail[-1]
    big = lines_with(front.cp, f'"GET /v2/insight/app/blobs/{pushed[1]}"', 1)
    assert big and f'" 200 ' in big[0] and f"user=alice action=pull repository=insight/app reference={pushed[1]}" \
        in big[0], big
    assert lines_with(front.cp, '"GET /v2/" 401', 1)[0].endswith(
        "user=anonymous action=ping repository=- reference=- upload=-")

    samples = front.metrics()
    requests = "certproxy_registry_requests_total"
    assert value(samples, requests, action="push", repository="insight/app", status="201") == 4  # 3 blobs, manifest
    assert value(samples, requests, action="pull", repository="insight/app", status="200") >= 4
    assert value(samples, requests, action="ping", repository="-", status="401") >= 1
    assert value(samples, "certproxy_registry_pushed_bytes_total", repository="insight/app") >= 8 * MiB
    assert value(samples, "certproxy_registry_pulled_bytes_total", repository="insight/app") >= 8 * MiB
    assert value(samples, "certproxy_registry_uploads_started_total", repository="insight/app") == 3
    assert value(samples, "certproxy_registry_uploads_completed_total", repository="insight/app") == 3
    assert value(samples, "certproxy_registry_uploads_in_progress") == 0
    assert not [k for k in samples if k[0] == "certproxy_registry_uploads_failed_total"
                and dict(k[1])["repository"] == "insight/app"]
    assert value(samples, "certproxy_registry_request_duration_seconds_count", action="push") >= 10
    assert value(samples, "certproxy_upstream_up", route=str(front.port)) == 1


def raw(front: Front, request: bytes, body: bytes = b"", close_after: bool = False) -> bytes:
    """One request over TLS; the answer's head (nothing when ``close_after``: the
    connection closes with the body unfinished)."""
    sock = socket.create_connection(("127.0.0.1", front.port), timeout=30)
    with front.tls().wrap_socket(sock, server_hostname="localhost") as tls:
        tls.sendall(request + body)
        if close_after:
            return b""
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = tls.recv(65536)
            if not chunk:
                break
            head += chunk
        return head


def auth() -> bytes:
    return b"Authorization: Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()) + b"\r\n"


def open_upload(front: Front, repo: bytes) -> tuple[str, bytes]:
    """A new upload session: its id, and the target its ``Location`` names (with ``_state``)."""
    head = raw(front, b"POST /v2/%s/blobs/uploads/ HTTP/1.1\r\nHost: localhost\r\n%sContent-Length: 0\r\n\r\n"
               % (repo, auth()))
    assert head.startswith(b"HTTP/1.1 202"), head
    upload = re.search(rb"(?i)docker-upload-uuid: (\S+)", head).group(1).decode()  # type: ignore[union-attr]
    location = re.search(rb"(?i)location: https://[^/]+(\S+)", head).group(1)  # type: ignore[union-attr]
    return upload, location


def test_an_upload_cut_off_and_one_cancelled_count_as_failed_by_reason(front: Front) -> None:
    cut, target = open_upload(front, b"insight/failing")
    raw(front, b"PATCH %s HTTP/1.1\r\nHost: localhost\r\n%s"
        b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % (target, auth(), 4 * MiB),
        b"x" * MiB, close_after=True)
    _, target = open_upload(front, b"insight/failing")
    head = raw(front, b"DELETE %s HTTP/1.1\r\nHost: localhost\r\n%s\r\n" % (target, auth()))
    assert head.startswith(b"HTTP/1.1 204"), head
    line = lines_with(front.cp, f"upload={cut}", 2)[-1]
    assert '"PATCH ' in line and '" 499 ' in line and "action=push repository=insight/failing" in line

    def failed() -> bool:
        samples = front.metrics()
        return (value(samples, "certproxy_registry_uploads_failed_total", repository="insight/failing",
                      reason="aborted") == 1
                and value(samples, "certproxy_registry_uploads_failed_total", repository="insight/failing",
                          reason="cancelled") == 1)
    wait_for(failed, 10, "the failed uploads counted")
    assert value(front.metrics(), "certproxy_registry_uploads_started_total", repository="insight/failing") == 2


def test_behind_the_access_policy_the_checked_user_refusals_and_failed_logins(
        tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA, ca_dir: Path) -> None:
    root = tmp_path_factory.mktemp("insight-access")
    write_users(root / "htpasswd")
    (root / "access.toml").write_text(POLICY)
    registry = start_registry(root)
    f = None
    try:
        f = start_front(root, ca, ca_dir, registry, {
            "CERTPROXY_ACCESS": str(root / "access.toml"), "CERTPROXY_LOG_FORMAT": "json"})
        # a wrong password at the token endpoint; an anonymous push (the challenge); bob pushes
        wrong = b"Authorization: Basic " + base64.b64encode(b"bob:not-bobs-pw") + b"\r\n"
        head = raw(f, b"GET /token?service=localhost&scope=repository:team/x:push HTTP/1.1\r\n"
                   b"Host: localhost\r\n%s\r\n" % wrong)
        assert head.startswith(b"HTTP/1.1 401"), head
        head = raw(f, b"POST /v2/team/x/blobs/uploads/ HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401"), head
        bob = b"Authorization: Basic " + base64.b64encode(b"bob:bob-pw") + b"\r\n"
        head = raw(f, b"POST /v2/team/x/blobs/uploads/ HTTP/1.1\r\nHost: localhost\r\n%s"
                   b"Content-Length: 0\r\n\r\n" % bob)
        assert head.startswith(b"HTTP/1.1 202"), head
        upload = re.search(rb"(?i)docker-upload-uuid: (\S+)", head).group(1).decode()  # type: ignore[union-attr]
        carol = b"Authorization: Basic " + base64.b64encode(b"carol:carol-pw") + b"\r\n"
        head = raw(f, b"DELETE /v2/team/x/manifests/v1 HTTP/1.1\r\nHost: localhost\r\n%s\r\n" % carol)
        assert head.startswith(b"HTTP/1.1 403"), head

        found = lines_with(f.cp, upload, 1)
        assert found, f.cp.output()[-2000:]
        fields = json.loads(found[0])
        assert {k: fields[k] for k in ("user", "action", "repository", "reference", "upload", "status")} == {
            "user": "bob", "action": "push", "repository": "team/x", "reference": None, "upload": upload,
            "status": 202}
        samples = f.metrics()
        assert value(samples, "certproxy_access_failed_logins_total") == 1
        assert value(samples, "certproxy_access_refusals_total", reason="unauthenticated") >= 2
        assert value(samples, "certproxy_access_refusals_total", reason="denied") == 1
        assert value(samples, "certproxy_registry_requests_total", action="delete", repository="team/x",
                     status="403") == 1
        assert value(samples, "certproxy_registry_uploads_started_total", repository="team/x") == 1
        assert "bob-pw" not in f.cp.output() and "not-bobs-pw" not in f.cp.output()
    finally:
        if f is not None:
            stop_process(f.cp.proc)
        stop_process(registry.proc)
