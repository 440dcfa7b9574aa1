"""Operators' mistakes: every bad setting stops start-up with exit 2 and one line
naming it; the CLI never prints a traceback; public answers keep internals to
the log; HTTP/1.1 Host and target rules. In-process where it can be, the real
`certproxy` command where the behaviour is the command's."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import trustme

from certproxy.certs import FileStore
from certproxy.proxy.tls import CertificateSet, TLSState
from certproxy.service.auth import BasicAuth, HtpasswdError, make_entry, parse_htpasswd
from certproxy.service.config import ConfigError, load_config
from certproxy.service.health import Health, HealthState
from conftest import write_live
from support.inproc import make_plane, settle
from support.procs import CertproxyProcess, free_port
from support.rawhttp import exchange

Factory = Callable[..., CertproxyProcess]


def run(*args: str, env: dict[str, str] | None = None, stdin: int | None = subprocess.DEVNULL,
        input: str | None = None, prefix: tuple[str, ...] = (), timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``certproxy ARGS`` with only the given CERTPROXY_* variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CERTPROXY_")}
    base.update(env or {})
    return subprocess.run([*prefix, sys.executable, "-m", "certproxy", *args], env=base,
                          stdin=None if input is not None else stdin, input=input,
                          capture_output=True, text=True, timeout=timeout)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    """The line a failed `serve` stops with (start-up may have logged before it)."""
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"CERTPROXY_STORE": str(tmp_path / "store"), "CERTPROXY_BIND": "127.0.0.1",
            "CERTPROXY_HTTP_PORT": str(free_port()), "CERTPROXY_ROUTES": f"{free_port()}=http://127.0.0.1:9",
            **extra}


# -- settings that stop start-up ------------------------------------------------

@pytest.mark.parametrize("environ, source, hint", [
    ({"CERTPROXY_STAGIN": "1"}, "CERTPROXY_STAGIN", "did you mean CERTPROXY_STAGING?"),
    ({"CERTPROXY_DOMAIN": "reg.example.com"}, "CERTPROXY_DOMAIN", "did you mean CERTPROXY_DOMAINS?"),
    ({"CERTPROXY_XYZZY": "1"}, "CERTPROXY_XYZZY", "unknown setting"),
    ({"CERTPROXY_EMAIL": "not-an-email"}, "CERTPROXY_EMAIL", "is not an e-mail address"),
    ({"CERTPROXY_AUTH_PORTS": "8443"}, "CERTPROXY_AUTH_PORTS", "port 8443 is not a TLS route"),
])
def test_bad_settings_are_refused_naming_the_variable(environ: dict[str, str], source: str, hint: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(environ)
    assert err.value.source == source and hint in str(err.value)


def test_a_typo_in_the_toml_file_gets_a_hint(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('domian = "x"\n')
    with pytest.raises(ConfigError, match="unknown key 'domian'; did you mean domains?"):
        load_config({}, None, conf)


def test_unknown_variables_stop_serve_with_exit_2(tmp_path: Path) -> None:
    result = run("serve", env={**serve_env(tmp_path), "CERTPROXY_STAGIN": "1"})
    assert result.returncode == 2
    assert one_line(result) == "certproxy: CERTPROXY_STAGIN: unknown setting; did you mean CERTPROXY_STAGING?"


@pytest.mark.parametrize("content, expected", [
    ("alice:$2y$05$abc\n", ":1: user 'alice' has a malformed bcrypt hash"),
    ("# users\n\n", "no users"),
    ("bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n", "has no bcrypt hash"),
])
def test_a_bad_htpasswd_file_stops_start_up_naming_the_line(tmp_path: Path, content: str, expected: str) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(content)
    result = run("serve", env=serve_env(tmp_path, CERTPROXY_AUTH_HTPASSWD=str(htpasswd),
                                        CERTPROXY_AUTH_PORTS=""))
    assert result.returncode == 2
    line = one_line(result)
    assert line.startswith("certproxy: CERTPROXY_AUTH_HTPASSWD: ") and expected in line


async def test_a_live_edit_that_breaks_htpasswd_is_logged_and_the_last_good_file_stays(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "htpasswd"
    path.write_text(make_entry("alice", "secret", 4) + "\n")
    auth = BasicAuth(path)
    auth.load()
    header = "Basic " + __import__("base64").b64encode(b"alice:secret").decode()
    assert await auth.allowed(header)
    path.write_text(make_entry("alice", "secret", 4) + "\nmallory:plaintext\n")
    os.utime(path, (time.time() + 5, time.time() + 5))
    await asyncio.sleep(1.1)  # the file is looked at again at most once a second
    assert await auth.allowed(header)
    assert "not using the changed" in caplog.text and ":2: user 'mallory' has no bcrypt hash" in caplog.text
    errors = len([r for r in caplog.records if r.levelname == "ERROR"])
    await asyncio.sleep(1.1)
    assert await auth.allowed(header)  # said once per change, not per request
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == errors


def test_parse_htpasswd_accepts_what_htpasswd_and_certproxy_write() -> None:
    users = parse_htpasswd(make_entry("alice", "pw", 4) + "\n# comment\n", "f")
    assert list(users) == ["alice"]
    with pytest.raises(HtpasswdError, match="f:1: not USER:HASH"):
        parse_htpasswd("no-colon\n", "f")


def test_a_missing_acme_ca_bundle_stops_start_up(tmp_path: Path) -> None:
    result = run("serve", env=serve_env(tmp_path, CERTPROXY_DOMAINS="reg.example.com",
                                        CERTPROXY_ACME_CA_BUNDLE="/nonexistent.pem"))
    assert result.returncode == 2
    assert one_line(result) == ("certproxy: CERTPROXY_ACME_CA_BUNDLE: /nonexistent.pem: "
                                "No such file or directory")
    renewed = run("renew", "--domain", "reg.example.com", "--store", str(tmp_path / "s2"),
                  "--ca-bundle", "/nonexistent.pem", "--directory", "https://127.0.0.1:9/dir")
    assert renewed.returncode == 2 and "CERTPROXY_ACME_CA_BUNDLE: /nonexistent.pem" in one_line(renewed)


@pytest.mark.parametrize("which", ["CERTPROXY_HTTP_PORT", "CERTPROXY_ROUTES"])
def test_a_port_in_use_names_the_setting_it_came_from(tmp_path: Path, which: str) -> None:
    env = serve_env(tmp_path)
    taken = int(env["CERTPROXY_HTTP_PORT"] if which == "CERTPROXY_HTTP_PORT"
                else env["CERTPROXY_ROUTES"].split("=")[0])
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        result = run("serve", env=env)
    assert result.returncode == 2
    assert last_line(result) == (f"certproxy: {which}: cannot listen on 127.0.0.1:{taken}: "
                                f"port {taken} is already in use")


NO_BIND_CAP = ("setpriv", "--bounding-set", "-net_bind_service", "--inh-caps", "-net_bind_service")
NO_DAC_CAP = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search",
              "--inh-caps", "-dac_override,-dac_read_search")


def test_a_privileged_port_without_the_capability_gets_the_hint(tmp_path: Path) -> None:
    # Dropping CAP_NET_BIND_SERVICE (setpriv) is what a non-root container user lacks.
    assert int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()) > 81
    env = serve_env(tmp_path, CERTPROXY_HTTP_PORT="81")
    result = run("serve", env=env, prefix=NO_BIND_CAP)
    assert result.returncode == 2
    line = last_line(result)
    assert line.startswith("certproxy: CERTPROXY_HTTP_PORT: cannot listen on 127.0.0.1:81: Permission denied")
    assert "CAP_NET_BIND_SERVICE" in line and "ip_unprivileged_port_start" in line


def test_a_store_under_a_folder_certproxy_may_not_enter_is_one_line(tmp_path: Path) -> None:
    # Without CAP_DAC_OVERRIDE root is held to the modes, as `nobody` would be.
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o000)
    try:
        env = serve_env(tmp_path, CERTPROXY_STORE=str(locked / "store"))
        served = run("serve", env=env, prefix=NO_DAC_CAP)
        assert served.returncode == 2
        assert one_line(served) == f"certproxy: CERTPROXY_STORE: {locked / 'store'}: Permission denied"
        status = run("status", "--url", f"http://127.0.0.1:{free_port()}/", env=env, prefix=NO_DAC_CAP)
        assert status.returncode == 2
        assert one_line(status) == f"certproxy status: CERTPROXY_STORE: {locked / 'store'}: Permission denied"
    finally:
        locked.chmod(0o700)


# -- the command line -------------------------------------------------------------

def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == "certproxy 0.1.0"


def test_every_setting_is_a_flag_of_serve(tmp_path: Path) -> None:
    result = run("serve", "--email", "not-an-email", env=serve_env(tmp_path))
    assert result.returncode == 2 and one_line(result) == "certproxy: --email: 'not-an-email' is not an e-mail address"
    helptext = run("serve", "--help").stdout
    for flag in ("--email", "--admin-port", "--auth-htpasswd", "--hsts-max-age", "--acme-ca-bundle"):
        assert flag in helptext


def test_htpasswd_reads_a_piped_password_and_says_so_when_there_is_none() -> None:
    piped = run("htpasswd", "bob", input="s3cret\n")
    assert piped.returncode == 0 and piped.stdout.startswith("bob:$2")
    user, digest = piped.stdout.strip().split(":", 1)
    assert __import__("bcrypt").checkpw(b"s3cret", digest.encode())
    empty = run("htpasswd", "bob")  # stdin is /dev/null
    assert empty.returncode == 1 and "no password on standard input" in one_line(empty)


def test_status_into_a_closed_pipe_is_quiet(tmp_path: Path, ca: trustme.CA) -> None:
    store = tmp_path / "store"
    for i in range(40):
        write_live(store, f"r{i}.example.com", ca)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTPROXY_")}
    reader, writer = os.pipe()
    os.close(reader)  # `| head` that has already gone
    try:
        proc = subprocess.run([sys.executable, "-m", "certproxy", "status", "--store", str(store), "--url",
                               f"http://127.0.0.1:{free_port()}"], stdout=writer, stderr=subprocess.PIPE,
                              env=env, text=True, timeout=30)
    finally:
        os.close(writer)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@pytest.mark.parametrize("store_kind", ["missing", "not a store"])
def test_a_mistyped_store_is_an_error_not_an_empty_list(tmp_path: Path, store_kind: str) -> None:
    store = tmp_path / "stor"
    if store_kind == "not a store":
        store.mkdir()
        (store / "notes.txt").write_text("x")
    result = run("status", "--store", str(store), "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    expected = "no such folder" if store_kind == "missing" else "not a certproxy store"
    assert expected in one_line(result) and str(store) in one_line(result)


async def test_status_and_healthcheck_find_the_server_from_the_config_and_a_base_url(
        certproxy_factory: Factory, store: Path, tmp_path: Path) -> None:
    port = free_port()
    cp = await asyncio.to_thread(certproxy_factory, {port: "http://127.0.0.1:9"}, store)
    conf = tmp_path / "c.toml"
    conf.write_text(f'http_port = {cp.http_port}\nbind = "127.0.0.1"\nstore = "{store}"\n')
    health = await asyncio.to_thread(run, "healthcheck", "--config", str(conf))
    assert health.returncode == 0 and health.stdout.startswith("200 "), health.stderr
    off = await asyncio.to_thread(run, "healthcheck", env={"CERTPROXY_HTTP_PORT": "off",
                                                          "CERTPROXY_ROUTES": f"{port}=http://127.0.0.1:9"})
    assert off.returncode == 0 and off.stdout.startswith("200 "), off.stderr  # asked on the TLS route
    # The shell does not know CERTPROXY_DOMAINS: the primary name comes from the server.
    status = await asyncio.to_thread(run, "status", "--url", f"http://127.0.0.1:{cp.http_port}/",
                                     "--store", str(store))
    assert status.returncode == 0, status.stderr
    assert "served by the running certproxy" in status.stdout and "(primary name: localhost)" in status.stdout


@pytest.mark.parametrize("args, stdin", [
    (("serve", "--bogus"), None),
    (("serve", "--config", "/nonexistent.toml"), None),
    (("serve", "--routes", "443"), None),
    (("serve", "--http-port", "99999"), None),
    (("status", "--store", "/nonexistent/store"), None),
    (("status", "--url", "not a url"), None),
    (("renew",), None),
    (("renew", "--domain", "bad..name"), None),
    (("htpasswd",), None),
    (("htpasswd", "bob", "--cost", "99"), "pw\n"),
    (("healthcheck", "--url", "http://127.0.0.1:9/healthz"), None),
    (("healthcheck", "--url", "ftp://x"), None),
    (("nosuchcommand",), None),
])
def test_no_command_prints_a_traceback_on_broken_input(args: tuple[str, ...], stdin: str | None) -> None:
    result = run(*args, input=stdin, timeout=60)
    assert result.returncode in (1, 2), (args, result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "Error:" not in result.stderr.split(":", 1)[0], result.stderr
    assert result.stderr.strip(), args


# -- public answers keep internals to the log -----------------------------------------

def _health(tmp_path: Path) -> Health:
    store = FileStore(tmp_path / "store")
    store.ensure_layout()
    store.ensure_bootstrap(("localhost",))
    inv = store.inventory(("localhost",))
    return Health(TLSState(CertificateSet(inv.primary, inv.pairs)), [], HealthState())


class _Asker:
    def __init__(self, ip: str) -> None:
        self.method, self.target, self._ip = b"GET", b"/healthz", ip

    @property
    def client_ip(self) -> str:
        return self._ip

    def header(self, name: bytes) -> list[bytes]:
        return []


@pytest.mark.parametrize("ip, full", [
    ("127.0.0.1", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("192.0.2.7", False), ("2001:db8::1", False), ("-", False),
])
async def test_healthz_is_full_for_loopback_and_status_only_for_others(tmp_path: Path, ip: str, full: bool) -> None:
    health = _health(tmp_path)
    code, _headers, body, _ctype = await health.answer(_Asker(ip))
    report = json.loads(body)
    assert code == 200 and report["status"] == "degraded"
    assert ("certificates" in report) is full and (len(report) == 1) is (not full)
    code, _headers, body, _ctype = await health.answer()  # the admin listener
    assert "certificates" in json.loads(body)


async def test_access_lines_name_port_and_host_and_certproxys_own_answers(
        certproxy_factory: Factory, store: Path, client_ssl: ssl.SSLContext) -> None:
    port = free_port()
    cp = await asyncio.to_thread(certproxy_factory, {port: "http://127.0.0.1:9"}, store)
    assert await asyncio.to_thread(cp.wait_output, f"route :{port} -> http://127.0.0.1:9 (basic auth off)")
    await exchange(port, f"GET /healthz HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode(), client_ssl)
    await exchange(cp.http_port, b"GET /x HTTP/1.1\r\nHost: reg.example.com\r\n\r\n")
    assert await asyncio.to_thread(cp.wait_output, f'127.0.0.1 :{port} localhost:{port} "GET /healthz" 200 ')
    line = next(x for x in cp.output().splitlines() if '"GET /healthz"' in x and f":{port} " in x)
    assert line.endswith("upstream=-")  # answered by certproxy, not proxied
    assert await asyncio.to_thread(cp.wait_output, f'127.0.0.1 :{cp.http_port} reg.example.com "GET /x" 301 ')
    # A request meant for the upstream names it, even when the upstream could not be reached.
    await exchange(port, f"GET /v2/ HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode(), client_ssl)
    assert await asyncio.to_thread(cp.wait_output, '"GET /v2/" 502 ')
    line = next(x for x in cp.output().splitlines() if '"GET /v2/" 502 ' in x)
    assert line.endswith("upstream=http://127.0.0.1:9")


# -- HTTP/1.1 rules, in-process ------------------------------------------------------

@pytest.mark.parametrize("request_bytes, status, reason", [
    (b"GET /v2/ HTTP/1.1\r\n\r\n", 400, b"missing Host header"),
    (b"GET /v2/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, b"more than one Host header"),
    (b"GET /v2/ HTTP/1.1\r\nHost: a b\r\n\r\n", 400, b"invalid Host header"),
    (b"GET /v2/ HTTP/1.1\r\nHost: evil.example/x\r\n\r\n", 400, b"invalid Host header"),
    (b"GET https://user:pass@registry.test/v2/ HTTP/1.1\r\nHost: registry.test\r\n\r\n", 400,
     b"credentials in the request target are not accepted"),
    (b"GET http://bad..name/v2/ HTTP/1.1\r\nHost: registry.test\r\n\r\n", 400,
     b"invalid authority in the request target"),
])
async def test_host_and_target_rules_answer_400_and_reach_no_upstream(
        request_bytes: bytes, status: int, reason: bytes) -> None:
    plane = make_plane()
    conn, client = plane.connect_client()
    conn.data_received(request_bytes)
    await settle()
    out = client.take()
    assert out.startswith(b"HTTP/1.1 %d " % status) and reason in out, out
    assert plane.upstreams == []


async def test_an_http10_request_without_host_gets_the_upstreams_name() -> None:
    plane = make_plane()
    conn, _client = plane.connect_client()
    conn.data_received(b"GET /v2/ HTTP/1.0\r\n\r\n")
    await settle()
    assert b"\r\nHost: registry:5000\r\n" in plane.upstreams[0].take()


async def test_healthz_is_degraded_when_a_certificate_besides_the_primary_has_expired(
        tmp_path: Path, ca: trustme.CA) -> None:
    """A certificate for an address (served without SNI on that address) that expires
    while loaded: clients dialling the address fail, so /healthz says so."""
    import datetime as dt

    from certproxy.certs.pair import load_pair
    store = tmp_path / "store"
    write_live(store, "localhost", ca, "localhost")
    write_live(store, "192.0.2.7", ca, "192.0.2.7")
    now = dt.datetime.now(dt.timezone.utc)
    primary = load_pair(store / "live" / "localhost", "localhost", "live", now)
    address = load_pair(store / "live" / "192.0.2.7", "192.0.2.7", "live", now)
    health = Health(TLSState(CertificateSet(primary, (primary, address))), [], HealthState())
    code, report = await health.report()
    assert code == 200 and report["status"] == "ok", report["problems"]
    object.__setattr__(address, "not_after", now - dt.timedelta(seconds=1))  # it expired since
    code, report = await health.report()
    assert code == 200 and report["status"] == "degraded"
    assert report["problems"] == ["certificate 192.0.2.7 is not valid now"]
