"""``certproxy doctor`` against fronts that are broken on purpose, each named by the check
at fault with its remedy, and against a healthy certproxy front, where nothing is ✗.

The fronts are Debian's nginx in front of the real docker-registry (support/fronts.py),
and certproxy itself (with and without its access policy). The doctor runs as a user
runs it: a subprocess with ``--json`` (or the text report), its password on stdin.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from conftest import write_live
from support.access_site import POLICY, start_site
from support.fronts import Nginx, run_doctor, start_nginx
from support.procs import CertproxyProcess, free_port, stop_process
from support.registry import Registry

pytestmark = pytest.mark.integration

SMALL = "4MiB"


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    """Stands in for /etc: no docker or podman certs.d unless a test writes one."""
    folder = tmp_path / "etc"
    folder.mkdir()
    return folder


@pytest.fixture
def ca_file(tmp_path: Path, ca: trustme.CA) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def nginx_front(tmp_path: Path, ca: trustme.CA, registry: Registry) -> Iterator[Callable[..., Nginx]]:
    """nginx in front of the registry, the given directives making it broken or not."""
    started: list[Nginx] = []

    def start(leaf: trustme.LeafCert | None = None, **directives: str) -> Nginx:
        front = start_nginx(tmp_path / f"nginx{len(started)}", registry.port, leaf or ca.issue_cert("localhost"),
                            **directives)
        started.append(front)
        return front

    yield start
    for front in started:
        front.stop()


def test_a_healthy_certproxy_front_passes_at_the_default_size(
        tmp_path: Path, store: Path, registry: Registry, etc: Path, ca_file: Path,
        certproxy_factory: Callable[..., CertproxyProcess], measure: Callable[[str, str], None]) -> None:
    port = free_port()
    certproxy_factory({port: registry.url}, store)
    for client in ("docker", "containers"):  # both clients' certs.d trust the CA
        folder = etc / client / "certs.d" / f"localhost:{port}"
        folder.mkdir(parents=True)
        (folder / "ca.crt").write_bytes(ca_file.read_bytes())
    run = run_doctor(f"https://localhost:{port}", "--ca", str(ca_file), "--json", etc=etc)
    measure("doctor, healthy certproxy front, 128 MiB", f"{run.seconds:.1f} s")
    assert run.code == 0, run.stdout + run.stderr
    statuses = {c["id"]: c["status"] for c in run.report["checks"]}
    assert [i for i, status in statuses.items() if status in ("fail", "warn")] == [], run.stdout
    for id in ("tls.chain", "tls.docker", "tls.podman", "registry.api", "push.chunked", "push.monolithic",
               "push.cap", "push.buffering", "push.idle", "push.location", "pull.digest", "cleanup", "clock",
               "certproxy"):
        assert statuses[id] == "ok", (id, run.stdout)
    assert run.check("push.chunked")["data"]["bytes"] == 128 * 1024 * 1024


def test_nginx_with_its_default_body_limit_is_named_as_a_cap(nginx_front: Callable[..., Nginx], etc: Path,
                                                              ca_file: Path) -> None:
    front = nginx_front(server="")  # client_max_body_size stays at its default, 1m
    run = run_doctor(front.url, "--ca", str(ca_file), "--size", SMALL, "--json", etc=etc)
    assert run.code == 1, run.stdout + run.stderr
    cap = run.check("push.cap")
    assert cap["status"] == "fail"
    assert "a cap at about 1.0 MB in front of the registry" in cap["summary"]
    assert "client_max_body_size" in cap["remedy"]
    assert 0.9e6 < cap["data"]["cap_bytes"] < 1.2e6
    assert run.check("push.chunked")["status"] == "fail"


def test_nginx_without_x_forwarded_proto_is_named_by_the_location(nginx_front: Callable[..., Nginx],
                                                                   etc: Path, ca_file: Path) -> None:
    front = nginx_front(location="proxy_request_buffering off;")
    run = run_doctor(front.url, "--ca", str(ca_file), "--size", SMALL, "--json", etc=etc)
    assert run.code == 1, run.stdout + run.stderr
    location = run.check("push.location")
    assert location["status"] == "fail"
    assert "http://" in location["summary"] and "X-Forwarded-Proto" in location["summary"]
    assert "proxy_set_header X-Forwarded-Proto" in location["remedy"]
    assert run.failed() == ["push.location"]


@pytest.mark.parametrize("fault", ["expired", "wrong name"])
def test_a_bad_certificate_is_named(nginx_front: Callable[..., Nginx], ca: trustme.CA, etc: Path,
                                    ca_file: Path, fault: str) -> None:
    if fault == "expired":
        leaf = ca.issue_cert("localhost", not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
                             not_after=dt.datetime(2020, 6, 1, tzinfo=dt.UTC))
    else:
        leaf = ca.issue_cert("other.example")
    front = nginx_front(leaf)
    run = run_doctor(front.url, "--ca", str(ca_file), "--size", SMALL, "--idle", "0", "--json", etc=etc)
    assert run.code == 1, run.stdout + run.stderr
    chain = run.check("tls.chain")
    assert chain["status"] == "fail"
    if fault == "expired":
        assert "expired on 2020-06-01" in chain["summary"]
        assert run.check("tls.expiry")["status"] == "fail"
        assert sorted(run.failed()) == ["tls.chain", "tls.expiry"]
    else:
        assert "for other.example, not for localhost" in chain["summary"]
        assert "CERTPROXY_DOMAINS" in chain["remedy"]
        assert run.failed() == ["tls.chain"]


def test_a_front_that_buffers_request_bodies_is_named(nginx_front: Callable[..., Nginx], etc: Path,
                                                      ca_file: Path) -> None:
    front = nginx_front(location="proxy_set_header X-Forwarded-Proto $scheme;")  # buffering on: the default
    run = run_doctor(front.url, "--ca", str(ca_file), "--size", SMALL, "--idle", "0", "--json", etc=etc)
    assert run.code == 1, run.stdout + run.stderr
    buffering = run.check("push.buffering")
    assert buffering["status"] == "fail"
    assert "buffers request bodies" in buffering["summary"]
    assert "proxy_request_buffering off" in buffering["remedy"]
    assert run.failed() == ["push.buffering"]


def test_a_front_with_a_short_idle_timeout_is_named(nginx_front: Callable[..., Nginx], etc: Path,
                                                    ca_file: Path) -> None:
    front = nginx_front(server="client_max_body_size 0; client_body_timeout 2s;")
    run = run_doctor(front.url, "--ca", str(ca_file), "--size", SMALL, "--idle", "4", "--json", etc=etc)
    assert run.code == 1, run.stdout + run.stderr
    idle = run.check("push.idle")
    assert idle["status"] == "fail"
    assert "cut the connection after about" in idle["summary"]
    assert 1.5 <= idle["data"]["seconds"] < 4
    assert "client_body_timeout" in idle["remedy"]
    assert run.failed() == ["push.idle"]


@pytest.fixture
def access_site(tmp_path: Path, ca: trustme.CA, ca_dir: Path) -> Iterator[CertproxyProcess]:
    """certproxy with its access policy (the token flow) in front of a registry."""
    site = start_site(tmp_path / "site", ca, ca_dir, POLICY)
    yield site.cp
    stop_process(site.cp.proc)
    stop_process(site.registry.proc)


def test_a_wrong_password_fails_the_login_and_a_right_one_from_stdin_pushes(
        access_site: CertproxyProcess, etc: Path, ca_file: Path) -> None:
    url = access_site.https()
    wrong = run_doctor(url, "--user", "alice", "--ca", str(ca_file), "--size", SMALL, "--idle", "0", "--json",
                       etc=etc, password="not-alices-password")
    assert wrong.code == 1, wrong.stdout + wrong.stderr
    login = wrong.check("auth.login")
    assert login["status"] == "fail"
    assert "refused the login of alice" in login["summary"] and "password" in login["remedy"]
    assert wrong.check("auth.challenge")["data"]["scheme"] == "bearer"
    assert "not-alices-password" not in wrong.stdout + wrong.stderr

    right = run_doctor(url, "--user", "alice", "--ca", str(ca_file), "--size", SMALL, "--idle", "0", etc=etc,
                       password="alice-pw")
    assert right.code == 0, right.stdout + right.stderr
    assert "✗" not in right.stdout
    assert "✓ alice logged in" in right.stdout and "the path works" in right.stdout
    assert "alice-pw" not in right.stdout + right.stderr and "Authorization" not in right.stdout


def test_no_login_given_where_one_is_needed_fails(access_site: CertproxyProcess, etc: Path,
                                                  ca_file: Path) -> None:
    run = run_doctor(access_site.https(), "--ca", str(ca_file), "--json", etc=etc)
    assert run.code == 1, run.stdout + run.stderr
    assert run.check("auth.login")["status"] == "fail"
    assert "--user" in run.check("auth.login")["remedy"]
    assert run.failed() == ["auth.login"]


@pytest.mark.parametrize(("args", "flag"), [
    (("https://localhost:1", "--size", "12XB"), "--size"),
    (("http://localhost:1",), "URL"),
    (("localhost:5000",), "URL"),
    (("https://alice:pw@localhost:1",), "URL"),
    (("https://localhost:1", "--ca", "/nonexistent/ca.pem"), "--ca"),
    (("https://localhost:1", "--idle", "inf"), "--idle"),
    (("https://localhost:1", "--idle", "nan"), "--idle"),
    (("https://localhost:1", "--idle", "-1"), "--idle"),
])
def test_bad_usage_exits_2_with_one_line_naming_the_flag(tmp_path: Path, args: tuple[str, ...],
                                                         flag: str) -> None:
    url, *rest = args
    run = run_doctor(url, *rest, etc=tmp_path, timeout=60)
    assert run.code == 2, run.stdout + run.stderr
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"certproxy: {flag}:"), run.stderr
