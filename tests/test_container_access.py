"""The access layer in the container tier: ``docker-compose.access.yml`` over the base file
on a real Docker engine, certproxy's access policy (the shipped example,
``compose/access/access.toml``) deciding for the real ``docker`` client, for curl on the
registry API, and for headless Chromium on the UI, whose calls pass through certproxy's
registry route with the browser's login.

The users of the example policy: alice (admins: everything, deletes included), bob (pushes
``team/*``), carol (readers: pulls everything, pushes nothing); anyone pulls and lists
``public/*``. The engine, its conventions (the registry's name resolving to the engine's
namespace, the CA trusted through ``certs.d``) and the helpers are ``test_container.py``'s;
the stack is started once for the module.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import browser
from support.engine import REGISTRY_NAME, Engine, EngineError
from test_container import (  # noqa: F401 (engine and tls are fixtures)
    PROXIED,
    curl,
    digest_of,
    engine,
    files,
    import_certbot_certificates,
    make_big_image,
    stack_dir,
    tls,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.container]

PROJECT = "cpaccess"
USERS = {"alice": "alice-pass-1", "bob": "bob-pass-2", "carol": "carol-pass-3"}
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DENIED = "denied: requested access to the resource is denied"


def htpasswd(folder: Path) -> None:
    """The layer's recipe: `certproxy htpasswd USER >> access/htpasswd`, one line per user."""
    command = Path(sys.executable).parent / "certproxy"
    lines = []
    for user, password in USERS.items():
        out = subprocess.run([str(command), "htpasswd", "--password-stdin", "--cost", "8", user],
                             input=f"{password}\n", capture_output=True, text=True, timeout=60, check=True)
        lines.append(out.stdout)
    (folder / "access" / "htpasswd").write_text("".join(lines))


def login(engine: Engine, user: str) -> None:
    engine.docker("login", "-u", user, "--password-stdin", PROXIED, input=USERS[user].encode())


def api(engine: Engine, tls: dict[str, Path], method: str, path: str, *args: str,
        user: str | None = None, port: int = 5000) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) of one request to certproxy's registry route (or the UI's, port 443)."""
    url = f"https://{REGISTRY_NAME}{'' if port == 443 else f':{port}'}{path}"
    auth = ["-u", f"{user}:{USERS[user]}"] if user else []
    out = curl(engine, url, "--cacert", str(tls["ca"]), "-X", method, "-i", *auth, *args)
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.replace("\r\n", "\n").partition("\n\n")
    status_line, *lines = head.split("\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def error_code(body: str) -> str:
    return str(json.loads(body)["errors"][0]["code"])


@pytest.fixture(scope="module")
def access_stack(engine: Engine, tls: dict[str, Path], tmp_path_factory: pytest.TempPathFactory,  # noqa: F811
                 measure) -> Iterator[list[Path]]:  # type: ignore[no-untyped-def]
    folder = stack_dir(tmp_path_factory.mktemp("access"))
    fs = files(folder, "access")
    htpasswd(folder)
    import_certbot_certificates(engine, folder, fs, tls["letsencrypt"], project=PROJECT)
    started = time.monotonic()
    try:
        engine.compose(PROJECT, fs, "up", "-d")
        certs_d = engine.netns.certs_d(PROXIED)
        certs_d.mkdir(parents=True)
        shutil.copy(tls["ca"], certs_d / "ca.crt")
        # Up when the policy lists the registry's (empty) catalog to anonymous, and the UI answers.
        wait_until(lambda: curl(engine, f"https://{PROXIED}/v2/_catalog", "-k").stdout.startswith(
            '{"repositories":'), 60, "the registry through certproxy's policy")
        wait_until(lambda: "Docker Registry Frontend" in curl(engine, f"https://{REGISTRY_NAME}/", "-k").stdout,
                   30, "the UI through certproxy")
        measure("container tier: access stack, `up -d` to the policy answering", f"{time.monotonic() - started:.1f} s")
        yield fs
    except (EngineError, AssertionError) as exc:
        logs = engine.compose(PROJECT, fs, "logs", "--tail", "30", check=False)
        raise AssertionError(f"{exc}\n{logs.stdout[-5000:]}") from None
    finally:
        engine.compose(PROJECT, fs, "down", "-v", check=False)


def test_the_registry_is_reachable_only_through_certproxy(engine: Engine, access_stack: list[Path]) -> None:
    """No published port but certproxy's; the UI is on a network of its own with certproxy, so
    its calls cannot go around the policy; the registry has no auth of its own."""
    for name in ("registry", "registry-ui"):
        ports = engine.inspect(f"{PROJECT}_{name}_1")["NetworkSettings"]["Ports"]  # type: ignore[index]
        assert not any(ports.values()), (name, ports)  # type: ignore[union-attr]
    networks = {name: engine.inspect(f"{PROJECT}_{name}_1")["NetworkSettings"]["Networks"]  # type: ignore[index]
                for name in ("registry", "registry-ui", "certproxy")}
    assert not set(networks["registry"]) & set(networks["registry-ui"]), networks  # type: ignore[arg-type]
    assert set(networks["registry-ui"]) <= set(networks["certproxy"])  # type: ignore[arg-type]
    # The UI cannot even name the registry; certproxy reaches it. (That the address is out of
    # reach too is Docker's iptables isolation of networks, which this engine runs without.)
    probe = ("import socket,sys\ntry: socket.create_connection(('registry', 5000), 3)\n"
             "except OSError as e: sys.exit(f'unreachable: {e}')\nprint('reached')")
    quick = ["-e", "RES_OPTIONS=timeout:1 attempts:1"]  # an unknown name goes on to resolvers out of reach
    ui = engine.docker("exec", *quick, f"{PROJECT}_registry-ui_1", "python3", "-c", probe, check=False)
    assert ui.returncode != 0 and "unreachable" in ui.stderr, (ui.stdout, ui.stderr)
    cp = engine.docker("exec", *quick, f"{PROJECT}_certproxy_1", "python3", "-c", probe, check=False)
    assert cp.stdout.strip() == "reached", cp.stderr
    env = engine.inspect(f"{PROJECT}_registry_1")["Config"]["Env"]  # type: ignore[index]
    assert not any(e.startswith("REGISTRY_AUTH") for e in env)  # type: ignore[union-attr]


def test_docker_pulls_anonymously_and_is_unauthorized_to_push(engine: Engine, access_stack: list[Path],
                                                             tmp_path: Path) -> None:
    login(engine, "alice")
    make_big_image(engine, tmp_path, f"{PROXIED}/public/hello:1", 64 << 10, layers=2)
    pushed = digest_of(engine.docker("push", f"{PROXIED}/public/hello:1").stdout)
    engine.docker("logout", PROXIED)
    engine.docker("rmi", f"{PROXIED}/public/hello:1")

    pulled = engine.docker("pull", f"{PROXIED}/public/hello:1")  # nobody logged in
    assert f"Digest: {pushed}" in pulled.stdout, pulled.stdout

    make_big_image(engine, tmp_path, f"{PROXIED}/public/anon:1", 16 << 10, layers=1)
    refused = engine.docker("push", f"{PROXIED}/public/anon:1", check=False)
    assert refused.returncode != 0
    assert "unauthorized: authentication required" in refused.stderr, refused.stderr


def test_docker_login_a_writer_pushes_a_reader_is_denied(engine: Engine, access_stack: list[Path],
                                                         tmp_path: Path) -> None:
    login(engine, "bob")
    make_big_image(engine, tmp_path, f"{PROXIED}/team/app:1", 64 << 10, layers=2)
    pushed = digest_of(engine.docker("push", f"{PROXIED}/team/app:1").stdout)
    # bob pushes team/* only
    engine.docker("tag", f"{PROXIED}/team/app:1", f"{PROXIED}/other/app:1")
    refused = engine.docker("push", f"{PROXIED}/other/app:1", check=False)
    assert refused.returncode != 0 and DENIED in refused.stderr, refused.stderr
    engine.docker("logout", PROXIED)

    login(engine, "carol")  # a reader: pulls everything, pushes nothing
    make_big_image(engine, tmp_path, f"{PROXIED}/team/app:2", 16 << 10, layers=1)
    refused = engine.docker("push", f"{PROXIED}/team/app:2", check=False)
    assert refused.returncode != 0 and DENIED in refused.stderr, refused.stderr
    engine.docker("rmi", f"{PROXIED}/team/app:1", f"{PROXIED}/other/app:1")
    pulled = engine.docker("pull", f"{PROXIED}/team/app:1")
    assert f"Digest: {pushed}" in pulled.stdout, pulled.stdout
    engine.docker("logout", PROXIED)


def test_only_an_admin_deletes(engine: Engine, tls: dict[str, Path], access_stack: list[Path],  # noqa: F811
                               tmp_path: Path) -> None:
    """docker has no delete: the registry API with Basic credentials, with a token, and through
    the UI (which passes the user's credentials on to certproxy's registry route)."""
    login(engine, "alice")
    digests = {}
    for repo in ("team/gone", "public/gone"):
        make_big_image(engine, tmp_path, f"{PROXIED}/{repo}:1", 16 << 10, layers=1)
        digests[repo] = digest_of(engine.docker("push", f"{PROXIED}/{repo}:1").stdout)
    engine.docker("logout", PROXIED)
    manifest = f"/v2/team/gone/manifests/{digests['team/gone']}"

    status, headers, body = api(engine, tls, "DELETE", manifest)
    assert status == 401 and error_code(body) == "UNAUTHORIZED"
    assert headers["www-authenticate"] == (
        f'Bearer realm="https://{PROXIED}/token",service="{PROXIED}",scope="repository:team/gone:delete"')
    for user in ("bob", "carol"):  # a writer and a reader of team/*: no delete
        status, _, body = api(engine, tls, "DELETE", manifest, user=user)
        assert (status, error_code(body)) == (403, "DENIED"), (user, body)
        status, _, body = api(engine, tls, "DELETE", manifest, user=user, port=443)  # through the UI
        assert (status, error_code(body)) == (403, "DENIED"), (user, body)
    status, _, body = api(engine, tls, "DELETE", manifest, user="alice", port=443)
    assert status == 202, body
    assert api(engine, tls, "GET", manifest, "-H", f"Accept: {MANIFEST_V2}", user="alice")[0] == 404

    # The token flow, as a script would use it: bob's token grants no delete, alice's does.
    manifest = f"/v2/public/gone/manifests/{digests['public/gone']}"
    tokens = {}
    for user in ("bob", "alice"):
        status, _, body = api(engine, tls, "GET",
                              f"/token?service={PROXIED}&scope=repository:public/gone:pull,delete", user=user)
        assert status == 200, body
        tokens[user] = json.loads(body)["token"]
    status, _, body = api(engine, tls, "DELETE", manifest, "-H", f"Authorization: Bearer {tokens['bob']}")
    assert (status, error_code(body)) == (403, "DENIED"), body
    status, _, body = api(engine, tls, "DELETE", manifest, "-H", f"Authorization: Bearer {tokens['alice']}")
    assert status == 202, body


async def test_the_ui_shows_anonymous_the_public_repositories_and_a_user_theirs(
        engine: Engine, tls: dict[str, Path], access_stack: list[Path], tmp_path: Path) -> None:  # noqa: F811
    """Chromium on the UI: the page's /v2/_catalog goes through the UI to certproxy's registry
    route, which filters it for the browser's login (none, or the one the browser's prompt gave)."""
    login(engine, "alice")
    for repo in ("public/ui", "team/ui", "other/ui"):
        make_big_image(engine, tmp_path, f"{PROXIED}/{repo}:1", 4096, layers=1)
        engine.docker("push", f"{PROXIED}/{repo}:1")
    engine.docker("logout", PROXIED)
    status, _, body = api(engine, tls, "GET", "/v2/_catalog", user="alice")
    every = json.loads(body)["repositories"]
    assert status == 200 and {"public/ui", "team/ui", "other/ui"} <= set(every)

    common = dict(trust_pem=tls["fullchain"].read_bytes(), resolve={REGISTRY_NAME: engine.netns.addr},
                  wait_for="state", done_prefixes=("loaded", "error"), read_ids=["repositories"])
    anonymous = await browser.visit(f"https://{REGISTRY_NAME}/", user=None, password=None, **common)
    assert anonymous.text["state"].startswith("loaded"), anonymous.text
    assert anonymous.text["repositories"].split("\n") == [r for r in every if r.startswith("public/")]
    assert anonymous.challenges == []  # the public view asks for nothing

    # Logging in: /v2/ through the UI asks (a Basic prompt: the browser's own), then the UI's
    # calls carry the login, and the policy filters the list for bob.
    bob = await browser.visit(f"https://{REGISTRY_NAME}/", user="bob", password=USERS["bob"],
                              first=f"https://{REGISTRY_NAME}/v2/", **common)
    assert [(c.get("scheme"), c.get("realm")) for c in bob.challenges] == [("basic", "certproxy")], bob.challenges
    assert bob.first_text.strip() == "{}"
    assert bob.text["state"].startswith("loaded"), bob.text
    assert bob.text["repositories"].split("\n") == [r for r in every if r.startswith(("public/", "team/"))]
