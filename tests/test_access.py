"""The access policy (CERTPROXY_ACCESS) with the real clients: Debian's docker-registry
behind certproxy, skopeo and podman pushing, pulling and deleting as anonymous callers
and as users of the policy, and raw HTTPS requests where a client cannot go (a
cross-repository mount, the catalog, a client's source address, a flood of wrong
passwords, a policy edited while pulls run). What the clients print, what the registry
logs and what certproxy logs are the evidence.

One registry and one certproxy (``site``, ``support/access_site.py``) serve this
module's tests; the failed logins here stay well below the throttle's limit.
Failed logins, edits while pulls run, start-up and replicas: ``test_access_live.py``.
"""
from __future__ import annotations

import pytest

from support.access_site import *  # noqa: F403 - the site, its clients and helpers
from support.access_site import registry_call  # noqa: F401

pytestmark = pytest.mark.integration


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
    assert json.loads(registry_call(site.registry, "GET", f"/v2/team/{client.name}-matrix/tags/list")[2])[
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
    assert registry_call(site.registry, "GET", manifest("team/deleted"), headers=ACCEPT)[0] == 200
    ok(delete("--creds", creds("alice")))
    assert registry_call(site.registry, "GET", manifest("team/deleted"), headers=ACCEPT)[0] == 404
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
            assert registry_call(site.registry, "HEAD", f"/v2/{target}/blobs/{digest}")[0] == 404

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
