"""The compose files: every documented combination passes `docker-compose
config`, the image is set up as documented, and the stack they describe runs
natively (no Docker engine here) with a real push and pull through certproxy."""

from __future__ import annotations

import base64
import ipaddress
import shutil
import subprocess
import urllib.error
import urllib.request
import ssl
from pathlib import Path
from typing import Callable, Iterator

import pytest
import yaml
import trustme

from certproxy.service.access.policy import load_policy
from certproxy.service.auth import make_entry
from certproxy.service.config import load_config
from support.native_compose import COMPOSE_DIR, NativeStack, prepare
from support.oci import layer_digests, make_image
from support.pebble import Pebble, start_pebble
from support.procs import ROOT, free_port, wait_for

pytestmark = pytest.mark.integration

BASE = "docker-compose.yml"
# Every combination the README shows.
COMBINATIONS = [
    [BASE],
    [BASE, "docker-compose.auth.yml"],
    [BASE, "docker-compose.storage.yml"],
    [BASE, "docker-compose.acme.yml"],
    [BASE, "docker-compose.auth.yml", "docker-compose.acme.yml"],
    [BASE, "docker-compose.auth.yml", "docker-compose.storage.yml", "docker-compose.acme.yml"],
    [BASE, "docker-compose.metrics.yml"],
    [BASE, "docker-compose.access.yml"],
    [BASE, "docker-compose.access.yml", "docker-compose.acme.yml"],
    [BASE, "docker-compose.access.yml", "docker-compose.storage.yml", "docker-compose.acme.yml"],
]
ENV_EXAMPLE = (COMPOSE_DIR / ".env.example").read_text()


@pytest.mark.parametrize("files", COMBINATIONS, ids=lambda f: "+".join(x.split(".")[1] for x in f))
def test_compose_config_accepts_every_documented_combination(files: list[str], tmp_path: Path) -> None:
    stack = prepare(tmp_path, files, ENV_EXAMPLE)
    services = stack.config["services"]
    published = {name: s.get("ports") for name, s in services.items() if s.get("ports")}
    assert list(published) == ["certproxy"]  # certproxy is the only front
    assert sorted(int(p["published"]) for p in published["certproxy"]) == [80, 443, 5000]
    cp = services["certproxy"]
    assert cp["healthcheck"]["test"] == ["CMD", "certproxy", "healthcheck"]
    assert cp["sysctls"]["net.ipv4.ip_unprivileged_port_start"] in ("0", 0)
    assert services["registry"]["environment"]["REGISTRY_STORAGE_DELETE_ENABLED"] == "true"
    env = cp["environment"]
    ui = services["registry-ui"]
    if "docker-compose.access.yml" in files:
        # The UI calls certproxy's registry route, from a network the registry is not on.
        assert ui["environment"]["ENV_DOCKER_REGISTRY_HOST"] == "certproxy"
        assert ui["environment"]["ENV_DOCKER_REGISTRY_PORT"] == "5000"
        assert ui["environment"]["ENV_DOCKER_REGISTRY_USE_SSL"] == "1"
        assert set(ui["networks"]) == {"ui"} and set(cp["networks"]) == {"default", "ui"}
        assert "ui" not in (services["registry"].get("networks") or {"default": None})
        assert not any(k.startswith("REGISTRY_AUTH") for k in services["registry"]["environment"])
        config = load_config({k: str(v) for k, v in env.items()})
        assert config.gated_ports == (5000,) and config.access == Path("/etc/certproxy/access/access.toml")
        [mount] = [v for v in cp["volumes"] if ":/etc/certproxy/access" in v]  # "SOURCE:TARGET:ro"
        assert mount.endswith("/access:/etc/certproxy/access:ro"), mount
    else:
        assert ui["environment"]["ENV_DOCKER_REGISTRY_HOST"] == "registry"
    if "docker-compose.acme.yml" in files:
        assert env["CERTPROXY_ACME"] == "on" and env["CERTPROXY_DOMAINS"] == "registry.example.com"
        assert env["CERTPROXY_STAGING"] == "1"
    else:
        assert env["CERTPROXY_ACME"] == "off"
    if "docker-compose.storage.yml" in files:
        assert services["registry"]["environment"]["REGISTRY_STORAGE"] == "s3"
        assert "minio" in services
    if "docker-compose.metrics.yml" in files:
        # Prometheus scrapes the admin port certproxy listens on, over the compose network only.
        scrape = yaml.safe_load((COMPOSE_DIR / "metrics" / "prometheus.yml").read_text())
        [target] = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
        assert target == f"certproxy:{env['CERTPROXY_ADMIN_PORT']}" and env["CERTPROXY_ADMIN_BIND"] == "0.0.0.0"
        assert "ports" not in services["prometheus"] and "ports" not in services["grafana"]
        assert "9100" not in str(cp.get("ports"))
        load_config({k: str(v) for k, v in env.items()})  # certproxy accepts the layer's settings
        # Prometheus loads the alert rules beside its configuration; Grafana is provisioned with
        # the Prometheus data source and certproxy's dashboard.
        prom_mounts = mounts(services["prometheus"], stack.work / "compose")
        assert prom_mounts["/etc/prometheus/prometheus.yml"] == COMPOSE_DIR / "metrics" / "prometheus.yml"
        [rules] = scrape["rule_files"]
        assert prom_mounts[f"/etc/prometheus/{rules}"] == COMPOSE_DIR / "metrics" / "alerts.yml"
        grafana = services["grafana"]
        assert grafana["image"].startswith("grafana/grafana:") and grafana["image"] != "grafana/grafana:latest"
        g_mounts = mounts(grafana, stack.work / "compose")
        provisioning = g_mounts["/etc/grafana/provisioning"]
        assert provisioning == COMPOSE_DIR / "metrics" / "grafana" / "provisioning"
        [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
        assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
        [provider] = yaml.safe_load((provisioning / "dashboards" / "certproxy.yml").read_text())["providers"]
        folder = provider["options"]["path"]
        dashboards = {target: host for target, host in g_mounts.items() if target.startswith(folder + "/")}
        assert list(dashboards.values()) == [COMPOSE_DIR / "metrics" / "certproxy-dashboard.json"]
        assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] in dashboards


def mounts(service: dict, copy: Path) -> dict[str, Path]:
    """A service's bind mounts from ``copy`` (the prepared copy of compose/), container path ->
    the file or folder of the checkout's compose/ it comes from."""
    out = {}
    for volume in service.get("volumes") or []:
        source, target = volume.split(":")[:2]
        if source.startswith("/"):
            out[target] = COMPOSE_DIR / Path(source).relative_to(copy)
    return out


def test_the_access_layer_example_policy_loads_with_its_three_roles(tmp_path: Path) -> None:
    """compose/access/access.toml as shipped, with the htpasswd the operator makes."""
    folder = tmp_path / "access"
    shutil.copytree(COMPOSE_DIR / "access", folder)
    (folder / "htpasswd").write_text("".join(make_entry(u, "pw", cost=4) + "\n" for u in ("alice", "bob", "carol")))
    policy = load_policy(folder / "access.toml")
    anywhere = ipaddress.ip_address("192.0.2.1")
    assert policy.actions(None, anywhere, "public/app") == {"pull"} and policy.may_catalog(None, anywhere)
    assert policy.actions(None, anywhere, "team/app") == set()
    assert policy.actions("bob", anywhere, "team/app") >= {"pull", "push"}
    assert "delete" not in policy.actions("bob", anywhere, "team/app")
    assert policy.actions("carol", anywhere, "team/app") == {"pull"}
    assert policy.actions("alice", anywhere, "other/app") == {"pull", "push", "delete"}


def test_acme_layer_refuses_to_start_without_a_domain(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="set CERTPROXY_DOMAINS in .env"):
        prepare(tmp_path, [BASE, "docker-compose.acme.yml"], "CERTPROXY_EMAIL=a@b.c\n")


def test_dockerfile_runs_as_non_root_with_health_check_and_store_volume() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.startswith("#")]
    assert any(l.startswith("USER certproxy") for l in lines)
    assert 'VOLUME ["/var/lib/certproxy"]' in lines
    assert "STOPSIGNAL SIGTERM" in lines
    assert 'CMD ["certproxy", "healthcheck"]' in text and "HEALTHCHECK" in text
    assert lines.index('ENTRYPOINT ["certproxy"]') > lines.index("USER certproxy")


@pytest.fixture
def native(tmp_path: Path) -> Iterator[Callable[..., NativeStack]]:
    stacks: list[NativeStack] = []

    def factory(files: list[str], env_text: str | None = None) -> NativeStack:
        stack = prepare(tmp_path / f"stack{len(stacks)}", files, env_text)
        stacks.append(stack)
        return stack

    yield factory
    for s in stacks:
        s.stop()


def _skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, text=True,
                          timeout=120)


def test_base_and_auth_layers_run_natively_with_push_and_pull(
        native: Callable[..., NativeStack], tmp_path: Path) -> None:
    stack = native([BASE, "docker-compose.auth.yml"], ENV_EXAMPLE)
    auth_dir = Path(stack.host_path("registry", "/auth"))
    (auth_dir / "htpasswd").write_text(make_entry("alice", "s3cret", cost=5) + "\n")
    stack.start_registry()
    stack.start_ui()
    cp = stack.start_certproxy()
    reg_port, ui_port = stack.ports[5000], stack.ports[443]
    certs = tmp_path / "certs"
    certs.mkdir()
    # No ACME layer: certproxy serves its bootstrap certificate; trust it for skopeo.
    (certs / "ca.crt").write_bytes((cp.store / "bootstrap" / "localhost" / "fullchain.pem").read_bytes())
    image = tmp_path / "image"
    pushed = make_image(image, 2 << 20)
    ref = f"docker://localhost:{reg_port}/compose/native:v1"
    denied = _skopeo("copy", "--dest-cert-dir", str(certs), f"oci:{image}:v1", ref)
    assert denied.returncode != 0  # the registry's htpasswd auth, through certproxy
    ok = _skopeo("copy", "--dest-cert-dir", str(certs), "--dest-creds", "alice:s3cret",
                 f"oci:{image}:v1", ref)
    assert ok.returncode == 0, ok.stderr
    pull = _skopeo("copy", "--src-cert-dir", str(certs), "--src-creds", "alice:s3cret", ref,
                   f"oci:{tmp_path / 'pulled'}:v1")
    assert pull.returncode == 0, pull.stderr
    assert layer_digests(tmp_path / "pulled") == pushed
    # The UI route is behind certproxy's own basic auth.
    ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"https://localhost:{ui_port}/", context=ctx, timeout=10)
    assert err.value.code == 401
    req = urllib.request.Request(f"https://localhost:{ui_port}/", headers={
        "Authorization": "Basic " + base64.b64encode(b"alice:s3cret").decode()})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        assert r.status == 200 and b"Registry web UI placeholder" in r.read()
    # Plain HTTP redirects to https: on 443 in a container; natively 443 is remapped, so to
    # the lowest TLS port (certproxy's rule when 443 is not routed).
    https_port = min(ui_port, reg_port)
    req = urllib.request.Request(f"http://127.0.0.1:{cp.http_port}/x?y=1", headers={"Host": "reg.test"})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a: object, **k: object) -> None:
            return None

    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.build_opener(NoRedirect).open(req, timeout=10)
    assert err.value.code == 301 and err.value.headers["Location"] == f"https://reg.test:{https_port}/x?y=1"


def test_a_wrong_variable_in_a_compose_file_breaks_the_native_run(
        native: Callable[..., NativeStack], tmp_path: Path) -> None:
    stack = native([BASE, "docker-compose.auth.yml"], ENV_EXAMPLE)
    stack.config["services"]["registry"]["environment"]["REGISTRY_AUTH_HTPASSWD_PATH"] = "/nowhere/htpasswd"
    with pytest.raises((RuntimeError, TimeoutError, KeyError)):
        stack.start_registry()
    stack2 = native([BASE], ENV_EXAMPLE)
    stack2.config["services"]["certproxy"]["environment"]["CERTPROXY_ROUTES"] = "5000=http://regsitry:5000"
    stack2.start_registry()
    with pytest.raises(KeyError, match="regsitry"):
        stack2.start_certproxy()


def test_acme_layer_runs_natively_against_pebble(
        native: Callable[..., NativeStack], tmp_path: Path, ca: trustme.CA) -> None:
    http_port = free_port()
    pebble: Pebble = start_pebble(tmp_path, ca, http_port)
    try:
        env_text = (f"CERTPROXY_DOMAINS=localhost\nCERTPROXY_EMAIL=ops@certproxy.test\n"
                    f"CERTPROXY_STAGING=0\nCERTPROXY_ACME_DIRECTORY={pebble.directory}\n")
        stack = native([BASE, "docker-compose.acme.yml"], env_text)
        stack.start_registry()
        stack.start_ui()
        # Pebble stands in for Let's Encrypt; its API certificate comes from the test CA.
        cp = stack.start_certproxy(extra_env={"CERTPROXY_ACME_CA_BUNDLE": str(pebble.ca_bundle),
                                              "CERTPROXY_ACME_RETRY_MIN": "1"}, http_port=http_port)
        roots = pebble.roots_pem()
        certs = tmp_path / "pebble-certs"
        certs.mkdir()
        (certs / "ca.crt").write_bytes(roots)
        ctx = ssl.create_default_context(cadata=roots.decode())

        def served() -> bool:
            with urllib.request.urlopen(f"https://localhost:{stack.ports[443]}/", context=ctx, timeout=5):
                return True

        wait_for(served, 60, "the Pebble certificate", cp.proc, cp.log)
        image = tmp_path / "image"
        pushed = make_image(image, 1 << 20)
        ref = f"docker://localhost:{stack.ports[5000]}/compose/acme:v1"
        assert _skopeo("copy", "--dest-cert-dir", str(certs), f"oci:{image}:v1", ref).returncode == 0
        pull = _skopeo("copy", "--src-cert-dir", str(certs), ref, f"oci:{tmp_path / 'pulled'}:v1")
        assert pull.returncode == 0, pull.stderr
        assert layer_digests(tmp_path / "pulled") == pushed
    finally:
        pebble.stop()
