"""The container tier: the image built from the unchanged Dockerfile, the
compose files started with docker-compose on a real Docker engine, the real
``docker`` client pushing and pulling through the containerized certproxy, and
headless Chromium through the UI path with the auth layer on.

The engine runs in a network namespace of the test's own (see
``support/engine.py`` for how it differs from a user's host); base images are
local stand-ins (``support/standins.py``). Nothing here is skipped: if the
engine cannot start, the tier fails with the reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from support import browser
from support.engine import DOCKER, REGISTRY_NAME, REPO, Engine, EngineError, run, start_engine
from support.pebble import Pebble, start_pebble
from support.standins import build_image, ensure_standins

pytestmark = [pytest.mark.integration, pytest.mark.container]

IMAGE = "localhost/certproxy:latest"
USER, PASSWORD = "alice", "s3cret-pass"
PROXIED = f"{REGISTRY_NAME}:5000"
DIRECT = f"{REGISTRY_NAME}:5001"  # the same registry image with its own TLS, for the ratio
GiB = 1 << 30


@pytest.fixture(scope="module")
def engine(measure) -> Iterator[Engine]:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    try:
        eng = start_engine()
    except EngineError as e:
        pytest.fail(f"the Docker engine could not start: {e}")
    try:
        ensure_standins(eng)
        build_image(eng, IMAGE)
        measure("container tier: engine, stand-ins and image ready", f"{time.monotonic() - started:.1f} s")
        yield eng
    finally:
        eng.stop()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory, engine: Engine) -> dict[str, Path]:
    """A CA of the test's, and a certificate for the registry's name laid out as certbot does
    (``live/NAME/*.pem`` symlinks into ``archive/``): what a migrating user copies in."""
    ca = trustme.CA()
    root = tmp_path_factory.mktemp("letsencrypt")
    leaf = ca.issue_cert(REGISTRY_NAME, engine.netns.addr)
    archive, live = root / "archive" / REGISTRY_NAME, root / "live" / REGISTRY_NAME
    archive.mkdir(parents=True)
    live.mkdir(parents=True)
    (archive / "fullchain1.pem").write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    (archive / "privkey1.pem").write_bytes(leaf.private_key_pem.bytes())
    (archive / "privkey1.pem").chmod(0o600)
    for name in ("fullchain", "privkey"):
        (live / f"{name}.pem").symlink_to(f"../../archive/{REGISTRY_NAME}/{name}1.pem")
    ca_pem = root / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    return {"letsencrypt": root, "ca": ca_pem, "fullchain": live / "fullchain.pem", "privkey": live / "privkey.pem"}


def stack_dir(tmp: Path) -> Path:
    """The compose folder as a user has it: the repository's files, copied unchanged."""
    folder = tmp / "compose"
    shutil.copytree(REPO / "compose", folder, ignore=shutil.ignore_patterns(".env"))
    return folder


def files(folder: Path, *layers: str) -> list[Path]:
    return [folder / "docker-compose.yml", *(folder / f"docker-compose.{layer}.yml" for layer in layers)]


def pebble_acme_stack(engine: Engine, tmp_path: Path, domain: str) -> tuple[Pebble, list[Path]]:
    """base + acme with Pebble as the CA for ``domain``: Pebble in the engine's network
    namespace (validating HTTP-01 on the stack's published :80), its root in a folder the
    test layer mounts, and the compose files to run."""
    addr = engine.netns.addr
    pebble = start_pebble(tmp_path, trustme.CA(), 80, listen=addr, names_resolve_to=addr,
                          prefix=engine.netns.enter)
    folder = stack_dir(tmp_path)
    trust = tmp_path / "pebble-ca"
    trust.mkdir(mode=0o755)
    shutil.copy(pebble.ca_bundle, trust / "ca.pem")
    (trust / "ca.pem").chmod(0o644)
    # .env as a user writes it (from .env.example), plus the test layer's one variable.
    (folder / ".env").write_text(f"CERTPROXY_DOMAINS={domain}\nCERTPROXY_EMAIL=ops@certproxy.test\n"
                                 f"CERTPROXY_STAGING=0\nCERTPROXY_ACME_DIRECTORY={pebble.directory}\n"
                                 f"PEBBLE_CA_DIR={trust}\n")
    return pebble, [*files(folder, "acme"), REPO / "tests" / "container" / "compose.pebble.yml"]


def unverified() -> ssl.SSLContext:
    """For looking at what is served (the tests that need trust use the CA)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def served_cert(engine: Engine, port: int) -> x509.Certificate:
    ctx = unverified()
    with socket.create_connection((engine.netns.addr, port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=REGISTRY_NAME) as tls_sock:
        der = tls_sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def serving(engine: Engine, port: int) -> bool:
    try:
        served_cert(engine, port)
    except OSError:
        return False
    return True


def curl(engine: Engine, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    authority = url.split("://", 1)[1].split("/", 1)[0]
    port = authority.rpartition(":")[2] if ":" in authority else ("443" if url.startswith("https") else "80")
    return run(["curl", "-sS", "--max-time", "20", "--resolve", f"{REGISTRY_NAME}:{port}:{engine.netns.addr}",
                *args, url], check=False, timeout=30)


def wait_until(check, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout} s")


def wait_for_pebble_certificate(engine: Engine, container: str, what: str) -> None:
    """Until :5000 serves a certificate Pebble issued (90 s at most); else fail with the
    container's last log lines."""
    def from_pebble() -> bool:
        try:
            return "Pebble" in served_cert(engine, 5000).issuer.rfc4514_string()
        except OSError:
            return False

    try:
        wait_until(from_pebble, 90, what)
    except AssertionError:
        logs = engine.docker("logs", "--tail", "40", container, check=False)
        raise AssertionError(f"no Pebble certificate: {logs.stdout[-3000:]}{logs.stderr[-3000:]}") from None


# -- the image ------------------------------------------------------------------------------


def test_image_runs_as_uid_10001_with_its_store_volume(engine: Engine) -> None:
    config = engine.inspect(IMAGE)["Config"]
    assert config["User"] == "certproxy"  # type: ignore[index]
    assert config["Healthcheck"]["Test"] == ["CMD", "certproxy", "healthcheck"]  # type: ignore[index]
    assert "/var/lib/certproxy" in config["Volumes"]  # type: ignore[index,operator]
    name = "cp-uid"
    engine.docker("run", "-d", "--name", name, "--network", "none",
                  "--sysctl", "net.ipv4.ip_unprivileged_port_start=0", IMAGE)
    try:
        assert engine.docker("exec", name, "id", "-u").stdout.strip() == "10001"
        wait_until(lambda: engine.docker("exec", name, "test", "-f",
                                         "/var/lib/certproxy/bootstrap/localhost/privkey.pem",
                                         check=False).returncode == 0, 20, "bootstrap key written")
        owners = engine.docker("exec", name, "stat", "-c", "%u %a %n", "/var/lib/certproxy",
                               "/var/lib/certproxy/bootstrap/localhost/privkey.pem").stdout.split("\n")
        assert owners[0] == "10001 700 /var/lib/certproxy"
        assert owners[1].startswith("10001 600 ")
    finally:
        engine.docker("rm", "-f", "-v", name)


def test_image_runs_the_compiled_data_plane_and_keeps_the_pure_one(engine: Engine, measure) -> None:  # type: ignore[no-untyped-def]
    """The Dockerfile's build stage compiles the hot modules (setup.py); the sources stay
    beside them, and CERTPROXY_PURE=1 runs those."""
    code = "import certproxy.build as b; print(b.describe())"
    run = ["run", "--rm", "--network", "none", "--entrypoint", "python", IMAGE, "-c", code]
    assert engine.docker(*run).stdout.strip() == "compiled"
    pure = ["run", "--rm", "--network", "none", "-e", "CERTPROXY_PURE=1", "--entrypoint", "python",
            IMAGE, "-c", code]
    assert engine.docker(*pure).stdout.strip() == "pure"
    size = int(engine.docker("image", "inspect", "-f", "{{.Size}}", IMAGE).stdout.strip())
    measure("image size, MB (compiled data plane)", f"{size / 1e6:.1f}")


@pytest.mark.parametrize("case", ["bind-ipv6-loopback", "http-port-off", "http-port-from-toml"])
def test_healthcheck_follows_the_configuration(engine: Engine, case: str, tmp_path: Path, measure) -> None:  # type: ignore[no-untyped-def]
    """The image's own HEALTHCHECK (`certproxy healthcheck`, no arguments) finds the
    listener wherever the configuration puts it."""
    args = ["run", "-d", "--name", f"cp-{case}", "--network", "none", "--health-interval", "1s",
            "--sysctl", "net.ipv4.ip_unprivileged_port_start=0"]
    if case == "bind-ipv6-loopback":  # Docker turns IPv6 off in containers unless asked
        args += ["-e", "CERTPROXY_BIND=::1", "--sysctl", "net.ipv6.conf.all.disable_ipv6=0",
                 "--sysctl", "net.ipv6.conf.lo.disable_ipv6=0"]
    elif case == "http-port-off":
        args += ["-e", "CERTPROXY_HTTP_PORT=off"]
    else:
        conf = tmp_path / "conf"
        conf.mkdir()
        conf.chmod(0o755)
        (conf / "certproxy.toml").write_text('http_port = 8080\nbind = "127.0.0.1"\n')
        (conf / "certproxy.toml").chmod(0o644)
        args += ["-v", f"{conf}:/etc/certproxy:ro", "-e", "CERTPROXY_CONFIG=/etc/certproxy/certproxy.toml"]
    engine.docker(*args, IMAGE)
    try:
        took = engine.wait_healthy(f"cp-{case}", timeout=60)
        measure(f"container tier: healthy after ({case})", f"{took:.1f} s")
        if case == "http-port-from-toml":  # and it is the file's port that answers
            out = engine.docker("exec", f"cp-{case}", "certproxy", "healthcheck", "--url",
                                "http://127.0.0.1:8080/healthz").stdout
            assert out.startswith("200 ")
    finally:
        engine.docker("rm", "-f", "-v", f"cp-{case}")


# -- the base stack --------------------------------------------------------------------------


def test_base_stack_is_healthy_keeps_its_store_and_drains_on_stop(engine: Engine, tmp_path: Path,
                                                                  measure) -> None:  # type: ignore[no-untyped-def]
    folder = stack_dir(tmp_path)
    fs = files(folder)
    started = time.monotonic()
    try:
        engine.compose("cpbase", fs, "up", "-d")
        took = engine.wait_healthy("cpbase_certproxy_1")
        measure("container tier: base stack healthy after `up -d`", f"{time.monotonic() - started:.1f} s "
                f"(certproxy's HEALTHCHECK {took:.1f} s after `up` returned: its first probe comes after "
                f"the 30 s interval)")
        # :80 redirects, :443 is the UI, :5000 the registry, all through the compose network.
        r = curl(engine, f"http://{REGISTRY_NAME}/", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}")
        assert r.stdout == f"301 https://{REGISTRY_NAME}/"
        assert "Docker Registry Frontend" in curl(engine, f"https://{REGISTRY_NAME}/", "-k").stdout
        r = curl(engine, f"https://{REGISTRY_NAME}:5000/v2/", "-k", "-i")
        assert r.stdout.startswith("HTTP/1.1 200") and "registry/2.0" in r.stdout
        serial = served_cert(engine, 5000).serial_number
        engine.compose("cpbase", fs, "restart", "certproxy")
        wait_until(lambda: serving(engine, 5000), 30, "serving again after the restart")
        assert served_cert(engine, 5000).serial_number == serial  # the store volume survived

        # docker stop: a request in flight (half its body sent) is answered, then exit 0.
        with socket.create_connection((engine.netns.addr, 5000), timeout=30) as raw, \
                unverified().wrap_socket(raw, server_hostname=REGISTRY_NAME) as conn:
            conn.sendall(f"POST /v2/drain/blobs/uploads/ HTTP/1.1\r\nHost: {PROXIED}\r\n"
                         "Content-Length: 10\r\n\r\nhello".encode())
            time.sleep(0.5)
            stopping = time.monotonic()
            stopper = threading.Thread(target=engine.docker, args=("stop", "-t", "40", "cpbase_certproxy_1"))
            stopper.start()
            time.sleep(1.0)
            conn.sendall(b"world")
            answer = conn.recv(4096)
            stopper.join(60)
        stopped = time.monotonic() - stopping
        assert answer.startswith(b"HTTP/1.1 202 "), answer[:200]  # the registry accepted the upload
        state = engine.inspect("cpbase_certproxy_1")["State"]
        assert state["ExitCode"] == 0 and not state["OOMKilled"]  # type: ignore[index]
        assert stopped < 40
        measure("container tier: `docker stop` with a request in flight", f"exit 0 after {stopped:.1f} s")
    finally:
        engine.compose("cpbase", fs, "down", "-v", check=False)


# -- the ACME stack (before the auth stack, which holds the ports until the module ends) ------


def test_acme_stack_gets_a_pebble_certificate_without_a_restart(engine: Engine, tmp_path: Path,
                                                                measure) -> None:  # type: ignore[no-untyped-def]
    """base + acme, with Pebble as the CA: Pebble (in the engine's network namespace) validates
    HTTP-01 on the stack's published :80; certproxy reaches Pebble's API from the compose
    network through the namespace's address."""
    pebble, fs = pebble_acme_stack(engine, tmp_path, REGISTRY_NAME)
    started = time.monotonic()
    name = "cpacme_certproxy_1"
    try:
        engine.compose("cpacme", fs, "up", "-d")  # inside: a failed `up` still stops Pebble
        started_at = engine.inspect(name)["State"]["StartedAt"]  # type: ignore[index]
        wait_for_pebble_certificate(engine, name, "a Pebble certificate served on :5000")
        first_cert = time.monotonic() - started
        took_healthy = engine.wait_healthy(name) + first_cert
        state = engine.inspect(name)["State"]
        assert state["StartedAt"] == started_at and state["Running"]  # type: ignore[index]
        cert = served_cert(engine, 443)
        assert cert.subject.rfc4514_string() == "" or REGISTRY_NAME in str(
            cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        listed = engine.docker("exec", name, "sh", "-c", "stat -c '%u %a %n' /var/lib/certproxy/live/*/*").stdout
        assert all(line.startswith("10001 ") for line in listed.splitlines()) and "600 " in listed, listed
        measure("container tier: ACME stack, `up -d` to the first Pebble certificate served",
                f"{first_cert:.1f} s, without a restart (HEALTHCHECK healthy at {took_healthy:.1f} s, probing every second)")

        serial = served_cert(engine, 5000).serial_number
        engine.compose("cpacme", fs, "restart", "certproxy")
        wait_until(lambda: serving(engine, 5000), 30, "serving again after the restart")
        assert served_cert(engine, 5000).serial_number == serial  # kept in the volume, no new order
        issued = pebble.log.read_text().count("Issued certificate serial")
        assert issued == 1, f"{issued} certificates issued"
    finally:
        engine.compose("cpacme", fs, "down", "-v", check=False)
        pebble.stop()


def test_docker_pushes_to_the_registrys_ip_address_with_an_acme_certificate_for_it(
        engine: Engine, tmp_path: Path, measure) -> None:  # type: ignore[no-untyped-def]
    """A registry without a DNS name (RFC 8738): base + acme with the namespace's address in
    CERTPROXY_DOMAINS; Pebble validates it over HTTP-01 on the published :80; the docker client
    pushes to ADDRESS:5000 (sending no SNI), trusting Pebble's root through certs.d, and refuses
    the certificate without it (the address is not loopback, so Docker checks it)."""
    addr = engine.netns.addr
    registry = f"{addr}:5000"
    pebble, fs = pebble_acme_stack(engine, tmp_path, addr)
    name = "cpip_certproxy_1"
    certs_d = engine.netns.certs_d(registry)
    try:
        started = time.monotonic()
        engine.compose("cpip", fs, "up", "-d")
        wait_for_pebble_certificate(engine, name, "a Pebble certificate for the address on :5000")
        took = time.monotonic() - started
        san = served_cert(engine, 5000).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [addr]
        image = make_big_image(engine, tmp_path, f"{registry}/ip/app:1", 1 << 20, layers=2)
        refused = engine.docker("push", f"{registry}/ip/app:1", check=False)
        assert refused.returncode != 0 and "x509: certificate signed by unknown authority" in refused.stderr
        certs_d.mkdir(parents=True)
        (certs_d / "ca.crt").write_bytes(pebble.roots_pem())
        pushed, out = timed(engine, "push", f"{registry}/ip/app:1")
        digest = digest_of(out)
        engine.docker("rmi", f"{registry}/ip/app:1")
        pulled = engine.docker("pull", f"{registry}/ip/app:1")
        assert f"Digest: {digest}" in pulled.stdout
        assert engine.docker("image", "inspect", "-f", "{{.Id}}", f"{registry}/ip/app:1").stdout.strip() == image
        listed = engine.docker("exec", name, "ls", "/var/lib/certproxy/live").stdout.split()
        assert listed == [addr], listed
        logs = engine.docker("logs", name, check=False)
        assert f"{addr} is not a public address" in logs.stdout + logs.stderr  # 10.x: the local CA's case
        measure("container tier: registry by IP address, `up -d` to Pebble's certificate for it / docker push",
                f"{took:.1f} s / {pushed:.1f} s")
    finally:
        engine.compose("cpip", fs, "down", "-v", check=False)
        shutil.rmtree(certs_d, ignore_errors=True)
        pebble.stop()


# -- the auth stack, the docker client and the browser ----------------------------------------


def import_certbot_certificates(engine: Engine, folder: Path, fs: list[Path], letsencrypt: Path,
                                project: str = "cpauth") -> None:
    """The README's migration recipe: certbot's live/ copied into the store volume, owned by uid 10001."""
    engine.compose(project, fs, "run", "--rm", "--no-deps", "--user", "root", "--entrypoint", "sh",
                   "-v", f"{letsencrypt}:/letsencrypt:ro", "certproxy", "-c",
                   "cp -rL /letsencrypt/live /var/lib/certproxy/"
                   " && chown -R certproxy:certproxy /var/lib/certproxy/live"
                   " && chmod 600 /var/lib/certproxy/live/*/privkey.pem")


def make_htpasswd(engine: Engine, folder: Path, fs: list[Path]) -> None:
    """The README's recipe for a host with only Docker: `docker-compose run ... certproxy htpasswd`."""
    out = engine.compose("cpauth", fs, "run", "--rm", "-T", "--no-deps", "certproxy", "htpasswd",
                         "--password-stdin", "--cost", "8", USER, input=f"{PASSWORD}\n".encode(), timeout=120)
    (folder / "auth" / "htpasswd").write_text(out.stdout)
    assert out.stdout.startswith(f"{USER}:$2")


def make_big_image(engine: Engine, tmp: Path, tag: str, size: int, *, layers: int = 3) -> str:
    """An image whose first layer holds ``size`` random bytes, then ``layers - 1`` small ones."""
    ctx = tmp / f"ctx-{tag.replace('/', '_').replace(':', '_')}"
    base = ctx / "base"
    base.mkdir(parents=True)
    run(["sh", "-c", f"head -c {size} /dev/urandom > {base}/big.bin"], timeout=300)
    tar = subprocess.Popen(["tar", "-C", str(base), "-c", "."], stdout=subprocess.PIPE)
    try:
        subprocess.run([DOCKER, "-H", engine.sock, "import", "-", f"{tag}-base"], stdin=tar.stdout,
                       check=True, capture_output=True, timeout=600)
    finally:
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait(60)
    shutil.rmtree(base)
    lines = [f"FROM {tag}-base"]
    for i in range(1, layers):
        (ctx / f"small{i}.txt").write_bytes(os.urandom(4096))
        lines.append(f"COPY small{i}.txt /small{i}.txt")
    (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
    engine.docker("build", "-q", "-t", tag, str(ctx), timeout=600)
    engine.docker("rmi", f"{tag}-base")
    return engine.docker("image", "inspect", "-f", "{{.Id}}", tag).stdout.strip()


def timed(engine: Engine, *args: str, timeout: float = 900) -> tuple[float, str]:
    started = time.monotonic()
    out = engine.docker(*args, timeout=timeout)
    return time.monotonic() - started, out.stdout


def digest_of(push_output: str) -> str:
    for line in push_output.splitlines():
        if "digest: sha256:" in line:
            return line.split("digest: ", 1)[1].split()[0]
    raise AssertionError(f"no digest in: {push_output[-500:]}")


@pytest.fixture(scope="module")
def auth_stack(engine: Engine, tls: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[Path, list[Path]]]:
    folder = stack_dir(tmp_path_factory.mktemp("auth"))
    fs = files(folder, "auth")
    make_htpasswd(engine, folder, fs)
    import_certbot_certificates(engine, folder, fs, tls["letsencrypt"])
    try:
        engine.compose("cpauth", fs, "up", "-d")
        certs_d = engine.netns.certs_d(PROXIED)
        certs_d.mkdir(parents=True)
        shutil.copy(tls["ca"], certs_d / "ca.crt")
        yield folder, fs  # the tests wait for the HEALTHCHECK when they have used the time
    finally:
        engine.compose("cpauth", fs, "down", "-v", check=False)


@pytest.fixture(scope="module")
def direct_registry(engine: Engine, tls: dict[str, Path], auth_stack: tuple[Path, list[Path]]) -> Iterator[str]:
    """registry:2 serving TLS itself on :5001, with the same htpasswd: the baseline for the ratios."""
    folder, _ = auth_stack
    live = tls["letsencrypt"] / "live" / REGISTRY_NAME
    # On the stack's network: with --bridge=none, Docker's default network publishes nothing.
    engine.docker("run", "-d", "--name", "direct", "--network", "cpauth_default", "-p", "5001:5000",
                  "-v", f"{tls['letsencrypt']}:/letsencrypt:ro", "-v", f"{folder / 'auth'}:/auth:ro",
                  "-e", f"REGISTRY_HTTP_TLS_CERTIFICATE=/letsencrypt/live/{REGISTRY_NAME}/fullchain.pem",
                  "-e", f"REGISTRY_HTTP_TLS_KEY=/letsencrypt/live/{REGISTRY_NAME}/privkey.pem",
                  "-e", "REGISTRY_AUTH=htpasswd", "-e", "REGISTRY_AUTH_HTPASSWD_REALM=Registry",
                  "-e", "REGISTRY_AUTH_HTPASSWD_PATH=/auth/htpasswd", "registry:2")
    assert live.exists()
    certs_d = engine.netns.certs_d(DIRECT)
    certs_d.mkdir(parents=True)
    shutil.copy(tls["ca"], certs_d / "ca.crt")
    try:
        wait_until(lambda: curl(engine, f"https://{DIRECT}/v2/", "-k", "-o", "/dev/null",
                                "-w", "%{http_code}").stdout == "401", 30, "direct registry up")
        engine.docker("login", "-u", USER, "--password-stdin", DIRECT, input=PASSWORD.encode())
        yield DIRECT
    finally:
        engine.docker("rm", "-f", "-v", "direct")


def test_docker_client_through_certproxy(engine: Engine, tls: dict[str, Path], auth_stack: tuple[Path, list[Path]],
                                         direct_registry: str, tmp_path: Path, measure) -> None:  # type: ignore[no-untyped-def]
    image_id = make_big_image(engine, tmp_path, "big/app:1", GiB)  # while the stack starts
    engine.wait_healthy("cpauth_certproxy_1")
    # TLS is checked: without the CA in certs.d, the client refuses the certificate.
    ca_file = engine.netns.certs_d(PROXIED) / "ca.crt"
    ca_file.rename(ca_file.with_suffix(".off"))
    refused = engine.docker("login", "-u", USER, "--password-stdin", PROXIED, input=PASSWORD.encode(),
                            check=False)
    ca_file.with_suffix(".off").rename(ca_file)
    assert refused.returncode != 0 and "x509: certificate signed by unknown authority" in refused.stderr

    wrong = engine.docker("login", "-u", USER, "--password-stdin", PROXIED, input=b"wrong\n", check=False)
    assert wrong.returncode != 0 and "401 Unauthorized" in wrong.stderr
    engine.docker("login", "-u", USER, "--password-stdin", PROXIED, input=PASSWORD.encode())

    layer_count = len(engine.inspect("big/app:1")["RootFS"]["Layers"])  # type: ignore[index,arg-type]
    assert layer_count == 3
    for registry in (PROXIED, DIRECT):
        engine.docker("tag", "big/app:1", f"{registry}/big/app:1")
    push = {}
    for registry in (DIRECT, PROXIED):
        took, out = timed(engine, "push", f"{registry}/big/app:1")
        push[registry] = (took, digest_of(out))
    assert push[PROXIED][1] == push[DIRECT][1]  # the same manifest, whichever way it went

    # Cross-repository mount: the 1 GiB layer is not sent again.
    engine.docker("tag", "big/app:1", f"{PROXIED}/other/app:1")
    took_mount, out = timed(engine, "push", f"{PROXIED}/other/app:1")
    assert "Mounted from big/app" in out
    assert digest_of(out) == push[PROXIED][1]

    pull = {}
    for registry in (DIRECT, PROXIED):
        engine.docker("rmi", "big/app:1", f"{PROXIED}/big/app:1", f"{DIRECT}/big/app:1", f"{PROXIED}/other/app:1",
                      check=False)
        took, out = timed(engine, "pull", f"{registry}/big/app:1")
        assert f"Digest: {push[PROXIED][1]}" in out
        assert engine.docker("image", "inspect", "-f", "{{.Id}}", f"{registry}/big/app:1").stdout.strip() == image_id
        pull[registry] = took
        if registry == DIRECT:
            engine.docker("rmi", f"{DIRECT}/big/app:1")
    measure("container tier: docker push of 1 GiB + 2 small layers, through certproxy / direct",
            f"{push[PROXIED][0]:.1f} s / {push[DIRECT][0]:.1f} s = {push[PROXIED][0] / push[DIRECT][0]:.2f}x "
            f"(cross-repository mount {took_mount:.1f} s)")
    measure("container tier: docker pull of the same, through certproxy / direct",
            f"{pull[PROXIED]:.1f} s / {pull[DIRECT]:.1f} s = {pull[PROXIED] / pull[DIRECT]:.2f}x")

    # A push interrupted mid-layer (the user's Ctrl-C), then pushed again. On a loaded
    # machine the push may finish before the interrupt lands: then again, with more to send.
    # The registry's volume is read from the host (a docker exec per look was slower than
    # a whole push on a loaded machine).
    volume = Path(engine.docker("volume", "inspect", "-f", "{{.Mountpoint}}", "cpauth_registry-data").stdout.strip())
    for attempt, size in enumerate((128 << 20, 256 << 20, 512 << 20)):
        repo = f"interrupted/app{attempt}"
        make_big_image(engine, tmp_path, f"{PROXIED}/{repo}:1", size, layers=2)
        # Ctrl-C must reach it: a run started in the background (as `make test &`) ignores
        # SIGINT, and so would every program it starts.
        proc = subprocess.Popen([DOCKER, "--config", str(engine.client_config), "-H", engine.sock, "push",
                                 f"{PROXIED}/{repo}:1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        uploads = volume / "docker/registry/v2/repositories" / repo / "_uploads"

        def uploading() -> bool:
            sizes = [f.stat().st_size for f in uploads.glob("*/data")] if uploads.is_dir() else []
            return sum(sizes) > 8 << 20

        started = time.monotonic()
        while not uploading() and proc.poll() is None and time.monotonic() - started < 120:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        manifest = curl(engine, f"https://{PROXIED}/v2/{repo}/manifests/1", "--cacert", str(tls["ca"]),
                        "-u", f"{USER}:{PASSWORD}", "-o", "/dev/null", "-w", "%{http_code}")
        if manifest.stdout != "200":  # the push did not get to its manifest
            break
    else:
        raise AssertionError("every push finished before it could be interrupted")
    assert manifest.stdout == "404"  # nothing half-pushed is visible as an image
    _, out = timed(engine, "push", f"{PROXIED}/{repo}:1")
    again = digest_of(out)
    engine.docker("rmi", f"{PROXIED}/{repo}:1")
    _, out = timed(engine, "pull", f"{PROXIED}/{repo}:1")
    assert f"Digest: {again}" in out

    # docker logout: a pull is refused.
    engine.docker("logout", PROXIED)
    refused = engine.docker("pull", f"{PROXIED}/big/app:1", check=False)
    assert refused.returncode != 0 and ("no basic auth credentials" in refused.stderr
                                        or "unauthorized" in refused.stderr), refused.stderr


def test_docker_trusts_the_local_ca_fetched_from_ca_crt(engine: Engine, auth_stack: tuple[Path, list[Path]],
                                                       tmp_path: Path, measure) -> None:  # type: ignore[no-untyped-def]
    """CERTPROXY_LOCAL_CA=1 in the image, in front of the stack's registry on :5002: the
    one-line recipe from the log (curl /ca.crt into certs.d) is all Docker needs."""
    local = f"{REGISTRY_NAME}:5002"
    engine.docker("run", "-d", "--name", "localca", "--network", "cpauth_default", "-p", "5002:5002",
                  "-p", "8082:8082", "-e", "CERTPROXY_LOCAL_CA=1", "-e", f"CERTPROXY_DOMAINS={REGISTRY_NAME}",
                  "-e", "CERTPROXY_HTTP_PORT=8082", "-e", "CERTPROXY_ROUTES=5002=http://registry:5000", IMAGE)
    try:
        started = time.monotonic()
        wait_until(lambda: "docker (no restart needed)" in engine.docker("logs", "localca").stderr, 30,
                   "the trust recipe in the log")
        recipe = next(line.split("trust it: docker (no restart needed): ", 1)[1]
                      for line in engine.docker("logs", "localca").stderr.splitlines() if "no restart needed" in line)
        assert recipe == (f"sudo mkdir -p /etc/docker/certs.d/{local} && curl -fsS http://{REGISTRY_NAME}:8082/ca.crt"
                          f" | sudo tee /etc/docker/certs.d/{local}/ca.crt >/dev/null")
        # The recipe, with this engine's certs.d in place of /etc/docker/certs.d.
        certs_d = engine.netns.certs_d(local)
        certs_d.mkdir(parents=True)
        fetched = curl(engine, f"http://{REGISTRY_NAME}:8082/ca.crt", "-f", "-o", str(certs_d / "ca.crt"))
        assert fetched.returncode == 0, fetched.stderr
        make_big_image(engine, tmp_path, f"{local}/lan/app:1", 8 << 20, layers=2)
        # The stack's registry asks for its htpasswd login itself (certproxy passes it on).
        wait_until(lambda: engine.docker("login", "-u", USER, "--password-stdin", local, input=PASSWORD.encode(),
                                         check=False).returncode == 0, 30, "docker login trusting only the local CA")
        pushes: list[subprocess.CompletedProcess[str]] = []

        def pushed() -> bool:  # the first leaf follows the CA by a moment
            pushes.append(engine.docker("push", f"{local}/lan/app:1", check=False))
            return pushes[-1].returncode == 0

        try:
            wait_until(pushed, 30, "a push trusting only the local CA")
        except AssertionError:
            logs = engine.docker("logs", "--tail", "20", "localca", check=False)
            raise AssertionError(f"push: {pushes[-1].stderr[-1500:]}\n{logs.stderr[-3000:]}") from None
        took = time.monotonic() - started
        engine.docker("rmi", f"{local}/lan/app:1")
        pulled = engine.docker("pull", f"{local}/lan/app:1")
        assert "Downloaded newer image" in pulled.stdout, pulled.stdout
        # Without the CA, Docker refuses the same registry.
        (certs_d / "ca.crt").unlink()
        refused = engine.docker("pull", f"{local}/lan/app:1", check=False)
        assert refused.returncode != 0 and "x509" in refused.stderr, refused.stderr
        measure("container tier: local CA, `docker run` to a push trusting only /ca.crt", f"{took:.1f} s")
    finally:
        engine.docker("rm", "-f", "-v", "localca", check=False)


async def test_browser_one_login_lists_the_repositories(engine: Engine, tls: dict[str, Path],
                                                        auth_stack: tuple[Path, list[Path]],
                                                        tmp_path: Path) -> None:
    """http://HOST/ -> https://HOST/ -> one basic-auth prompt (certproxy's) -> the page's own
    /v2/_catalog call goes through with the same login, as in the classic stack."""
    engine.wait_healthy("cpauth_certproxy_1")
    engine.docker("login", "-u", USER, "--password-stdin", PROXIED, input=PASSWORD.encode())
    make_big_image(engine, tmp_path, f"{PROXIED}/ui/probe:1", 4096, layers=1)
    engine.docker("push", f"{PROXIED}/ui/probe:1")
    engine.docker("logout", PROXIED)
    visit = await browser.visit(f"http://{REGISTRY_NAME}/", user=USER, password=PASSWORD,
                                trust_pem=tls["fullchain"].read_bytes(),
                                resolve={REGISTRY_NAME: engine.netns.addr}, wait_for="state",
                                done_prefixes=("loaded", "error"), read_ids=["repositories"])
    assert visit.url == f"https://{REGISTRY_NAME}/"
    assert visit.text["state"].startswith("loaded"), visit.text
    assert "ui/probe" in visit.text["repositories"].split("\n")
    assert [c.get("realm") for c in visit.challenges] == ["certproxy"], visit.challenges
