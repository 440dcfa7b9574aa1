"""Build a small OCI image layout on disk, for skopeo to push.

Layers are gzip-compressed tarballs made here, so skopeo pushes them as they
are and the digests seen in the registry are the ones computed here.

Run as a script: ``python oci.py DIR [BIG_LAYER_MIB]`` writes an image to DIR.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import time
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"


def _layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1700000000
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    diff_id = "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    return gzip.compress(tar_bytes, compresslevel=1, mtime=0), diff_id


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def make_image(layout: Path, big_layer_bytes: int = 0, tag: str = "v1") -> list[str]:
    """Write an OCI layout with a small layer and (optionally) a random big one.

    Returns the layer digests in manifest order.
    """
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    layer_files = [{"etc/certproxy-demo.txt": f"built {time.time()}\n".encode()}]
    if big_layer_bytes:
        layer_files.append({"data/random.bin": os.urandom(big_layer_bytes)})
    layers, diff_ids = [], []
    for files in layer_files:
        gz, diff_id = _layer(files)
        layers.append({"mediaType": OCI_LAYER_GZ, **_blob(layout, gz)})
        diff_ids.append(diff_id)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, **_blob(layout, config)},
        "layers": layers,
    }).encode()
    mdesc = {"mediaType": OCI_MANIFEST, **_blob(layout, manifest),
             "annotations": {"org.opencontainers.image.ref.name": tag}}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [mdesc]}))
    return [str(layer["digest"]) for layer in layers]


def layer_digests(layout: Path) -> list[str]:
    """The layer digests of the (single) image in an OCI layout, checked against the blobs."""
    index = json.loads((layout / "index.json").read_text())
    mdigest = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((layout / "blobs" / "sha256" / mdigest).read_bytes())
    digests = []
    for layer in manifest["layers"]:
        algo, hexd = layer["digest"].split(":", 1)
        blob = layout / "blobs" / algo / hexd
        h = hashlib.sha256()
        with open(blob, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != hexd:
            raise ValueError(f"blob {hexd} does not match its digest")
        digests.append(layer["digest"])
    return digests


if __name__ == "__main__":
    out = Path(sys.argv[1])
    size = int(sys.argv[2]) << 20 if len(sys.argv) > 2 else 0
    print("\n".join(make_image(out, size)))
