"""Local stand-ins for the images the stack pulls from Docker Hub, which these
machines cannot reach; each is tagged with the name the Dockerfile and the
compose files use, so both run unchanged.

- ``python:3.11-slim``: a Debian 12 root made with ``debootstrap`` (python3.11
  and pip; ``python`` and ``pip`` on PATH as in the official image, and pip
  allowed to install into the system, as the official image's own Python is).
  The machine's trust store goes in with it: this machine reaches PyPI through
  an intercepting proxy, whose CA a user behind such a proxy adds the same way.
- ``python:3.11``: the same root with what the official full image adds that the
  Dockerfile's build stage uses: a C compiler and Python's headers.
- ``registry:2``: Debian's build of the same distribution registry, with
  ``registry:2``'s layout and busybox's ``wget`` (``tests/container/standins/registry``).
- ``konradkleine/docker-registry-frontend:v2``: a page listing the repositories
  from the browser, with ``/v2/`` proxied to the registry
  (``tests/container/standins/ui``).

Each image carries a label with a hash of what made it; a run rebuilds only
an image whose recipe changed (the engine's data root is kept in
``/var/cache/certproxy-tests/engine``, or ``CPT_ENGINE_CACHE``), so ``make test`` pays
for ``debootstrap`` once per machine.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .engine import REPO, STATE, Engine, EngineError, run
from .procs import free_port

STANDINS = REPO / "tests" / "container" / "standins"
LABEL = "org.certproxy.test.recipe"
BASE = "python:3.11-slim"
BUILD_BASE = "python:3.11"
PACKAGES = "python3,python3-pip,ca-certificates"
# Each base image and the Debian packages of its root.
BASES = {BASE: PACKAGES, BUILD_BASE: PACKAGES + ",python3-dev,gcc,libc6-dev"}
MIRROR = "http://deb.debian.org/debian"
TRUST = Path("/etc/ssl/certs/ca-certificates.crt")


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big") + p)
    return h.hexdigest()[:16]


def _folder_digest(folder: Path, *extra: bytes) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return _digest(*(p.relative_to(folder).as_posix().encode() + b"\0" + p.read_bytes() for p in files), *extra)


def _current(engine: Engine, tag: str) -> str | None:
    out = engine.docker("image", "inspect", "-f", f'{{{{index .Config.Labels "{LABEL}"}}}}', tag, check=False)
    return out.stdout.strip() if out.returncode == 0 else None


def ensure_base(engine: Engine, tag: str = BASE) -> None:
    debootstrap = ["debootstrap", "--variant=minbase", f"--include={BASES[tag]}", "bookworm"]
    recipe = _digest(" ".join(debootstrap).encode(), TRUST.read_bytes(), Path(__file__).read_bytes())
    if _current(engine, tag) == recipe:
        return
    root = STATE / "rootfs"
    shutil.rmtree(root, ignore_errors=True)
    try:
        run([*debootstrap, str(root), MIRROR], timeout=900)
    except EngineError as e:
        raise EngineError(f"debootstrap of the {tag} stand-in failed: {e}") from None
    (root / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
    (root / "usr/local/bin/python").symlink_to("/usr/bin/python3")
    (root / "usr/local/bin/pip").symlink_to("/usr/bin/pip3")
    shutil.copyfile(TRUST, root / "etc/ssl/certs/ca-certificates.crt")
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        shutil.rmtree(root / cache, ignore_errors=True)
        (root / cache).mkdir(parents=True)
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    try:
        imported = subprocess.run(
            ["/usr/bin/docker", "-H", engine.sock, "import", "-c", "ENV LANG=C.UTF-8",
             "-c", f"LABEL {LABEL}={recipe}", "-c", 'CMD ["python3"]', "-", tag],
            stdin=tar.stdout, capture_output=True, text=True, timeout=300)
    finally:
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait(60)
    if imported.returncode != 0:
        raise EngineError(f"docker import of the {tag} stand-in failed: {imported.stderr}")
    shutil.rmtree(root, ignore_errors=True)


def ensure_image(engine: Engine, tag: str, folder: str, files: dict[str, Path] | None = None) -> None:
    """Build ``tests/container/standins/FOLDER`` as ``tag`` (plus ``files`` copied into the context)."""
    extra = [p.read_bytes() for p in (files or {}).values()]
    recipe = _folder_digest(STANDINS / folder, *extra, _current(engine, BASE).encode())  # type: ignore[union-attr]
    if _current(engine, tag) == recipe:
        return
    with tempfile.TemporaryDirectory() as tmp:
        context = Path(tmp) / folder
        shutil.copytree(STANDINS / folder, context)
        for name, source in (files or {}).items():
            shutil.copy2(source, context / name)
        engine.docker("build", "-q", "--label", f"{LABEL}={recipe}", "-t", tag, str(context))


BUSYBOX = "/usr/bin/busybox"  # Debian's busybox-static: one static binary


def ensure_standins(engine: Engine) -> None:
    for tag in BASES:
        ensure_base(engine, tag)
    registry_binary = shutil.which("docker-registry")
    if registry_binary is None:
        raise EngineError("docker-registry is not installed (scripts/install-system-deps.sh installs it)")
    if not Path(BUSYBOX).exists():
        raise EngineError("busybox-static is not installed (scripts/install-system-deps.sh installs it)")
    ensure_image(engine, "registry:2", "registry",
                 {"docker-registry": Path(registry_binary), "busybox": Path(BUSYBOX)})
    ensure_image(engine, "konradkleine/docker-registry-frontend:v2", "ui")


def build_image(engine: Engine, tag: str) -> None:
    """``docker build`` of the repository's Dockerfile as it is, tagged ``tag``; PyPI
    through a CONNECT proxy on the namespace's veth address."""
    port = free_port()
    proxy = subprocess.Popen([sys.executable, str(REPO / "tests/support/connect_proxy.py"),
                              engine.netns.host_addr, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"
        engine.docker("build", "--network", "host", "--build-arg",
                      f"HTTPS_PROXY=http://{engine.netns.host_addr}:{port}", "-t", tag, str(REPO),
                      timeout=900)
    finally:
        proxy.terminate()
        proxy.wait(10)
