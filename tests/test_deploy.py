"""The multi-host files, offline: ``deploy/kubernetes/`` validated against the
Kubernetes API schemas (``kubernetes-validate``, strict: an unknown or misspelt
field fails), ``compose/docker-stack.yml`` through ``docker-compose config``,
and both read for what they promise: replicas, rolling updates that start the
new before stopping the old, probes, limits, a non-root read-only container,
and certproxy settings that certproxy itself accepts. The stack file runs for
real on a swarm in ``test_swarm.py``."""

from __future__ import annotations

import copy
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from certproxy.service.config import load_config
from support.procs import ROOT

K8S = ROOT / "deploy" / "kubernetes"
STACK = ROOT / "compose" / "docker-stack.yml"
# The oldest Kubernetes still widely run, and the newest the validator knows.
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
IMAGE_UID = int(re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text()).group(1))  # type: ignore[union-attr]
STACK_ENV = {"CERTPROXY_IMAGE": "registry.example.com:5000/certproxy:1", "CERTPROXY_DOMAINS": "registry.example.com",
             "CERTPROXY_EMAIL": "ops@example.com", "REGISTRY_HTTP_SECRET": "0123456789abcdef",
             "S3_ACCESS_KEY": "key", "S3_SECRET_KEY": "secret", "NFS_SERVER": "10.0.0.5"}


def k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_validate_strictly(version: str) -> None:
    docs = k8s_docs()
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "PersistentVolumeClaim",
                                         "PodDisruptionBudget", "ConfigMap"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
    # The check can fail: a misspelt field of the kind an operator makes is refused.
    broken = copy.deepcopy(one(docs, "Deployment", "certproxy"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/healthz"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_kubernetes_deployment_is_what_the_readme_promises() -> None:
    docs = k8s_docs()
    dep = one(docs, "Deployment", "certproxy")
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert spec["replicas"] == 3
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    (container,) = pod["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"].startswith("/healthz"), probe
    # Non-root, read-only root filesystem, as the image's own user.
    sc, csc = pod["securityContext"], container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == IMAGE_UID
    assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"]
    assert {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"} in sc["sysctls"]
    assert container["resources"]["limits"] and container["resources"]["requests"]
    # The store on the shared claim; the only other writable place is /tmp (the admin socket).
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config = one(docs, "ConfigMap", "certproxy")["data"]
    assert volumes[mounts[config["CERTPROXY_STORE"]]]["persistentVolumeClaim"]["claimName"] == "certproxy-store"
    assert "emptyDir" in volumes[mounts[str(Path(config["CERTPROXY_ADMIN_SOCKET"]).parent)]]
    assert one(docs, "PersistentVolumeClaim", "certproxy-store")["spec"]["accessModes"] == ["ReadWriteMany"]
    # Every setting in the ConfigMap is one certproxy accepts, with a value it accepts.
    cfg = load_config(config)
    assert cfg.acme_enabled and cfg.admin_socket is not None and cfg.reload_poll <= 1
    served = {r.port for r in cfg.routes} | {cfg.http_port}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert set(ports.values()) == served
    svc = one(docs, "Service", "certproxy")
    assert svc["spec"]["type"] == "LoadBalancer" and svc["spec"]["selector"].items() <= labels.items()
    assert {p["port"] for p in svc["spec"]["ports"]} == {80, 443, 5000}
    assert {ports[p["targetPort"]] for p in svc["spec"]["ports"]} == served
    pdb = one(docs, "PodDisruptionBudget", "certproxy")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items() and pdb["spec"]["minAvailable"] < 3
    # The routes' upstreams are Services of the folder.
    for route in cfg.routes:
        host, port = re.match(r"http://([^:/]+):(\d+)", route.url).groups()  # type: ignore[union-attr]
        assert int(port) in {p["port"] for p in one(docs, "Service", host)["spec"]["ports"]}


def stack_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker-compose", "-f", str(STACK), "config"], capture_output=True, text=True,
                          timeout=60, cwd="/", env={**os.environ, **env})


def test_swarm_stack_file_is_valid_and_complete() -> None:
    out = stack_config(STACK_ENV)
    assert out.returncode == 0, out.stderr
    stack = yaml.safe_load(out.stdout)
    cp = stack["services"]["certproxy"]
    deploy = cp["deploy"]
    assert deploy["replicas"] == 3
    assert deploy["update_config"]["order"] == "start-first" and deploy["update_config"]["parallelism"] == 1
    assert deploy["resources"]["limits"] and deploy["resources"]["reservations"]
    assert cp["healthcheck"]["test"] == ["CMD", "certproxy", "healthcheck"]
    assert {int(p["target"]) for p in cp["ports"]} == {80, 443, 5000}
    cfg = load_config({k: str(v) for k, v in cp["environment"].items()})
    assert cfg.acme_enabled and cfg.admin_socket is not None and cfg.reload_poll <= 1
    store = stack["volumes"]["certproxy-store"]["driver_opts"]
    assert store["type"] == "nfs" and "addr=10.0.0.5" in store["o"]
    registry = stack["services"]["registry"]["environment"]
    assert registry["REGISTRY_STORAGE"] == "s3" and registry["REGISTRY_HTTP_SECRET"] == "0123456789abcdef"
    # What must be set is asked for by name, not left empty.
    for name in ("CERTPROXY_IMAGE", "REGISTRY_HTTP_SECRET", "NFS_SERVER"):
        missing = stack_config({k: v for k, v in STACK_ENV.items() if k != name})
        assert missing.returncode != 0 and name in missing.stderr, (name, missing.stderr)
