"""OCI image archives: layers + config -> config blob, manifest, index.json, one tarball.

Last stop of the Docker-less build: the tarball is what `ctr -n k8s.io images import`, `kind load
image-archive` and `minikube image load` take. Each name is written as `io.containerd.image.name`
(the full reference containerd and the CRI look up) and the tag as `org.opencontainers.image.ref.name`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

from imagebuild.layers import Blob

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def full_reference(name: str) -> str:
    """`elasticserving/pause:3.10` -> `docker.io/elasticserving/pause:3.10`, as containerd stores it."""
    first = name.split("/", 1)[0]
    if "/" not in name:
        name = "library/" + name
    elif "." in first or ":" in first or first == "localhost":
        return name if ":" in name.rsplit("/", 1)[-1] or "@" in name else name + ":latest"
    name = "docker.io/" + name
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def _json_bytes(value: dict) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _put(blobs: Path, data: bytes) -> tuple[str, int]:
    hexd = hashlib.sha256(data).hexdigest()
    path = blobs / hexd
    if not path.exists():
        tmp = blobs / f".{hexd}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return "sha256:" + hexd, len(data)


def write_image(blobs: Path, layers: list[Blob], config: dict, history: list[str]) -> dict:
    """Config and manifest blobs into `blobs`; returns the manifest descriptor."""
    blobs.mkdir(parents=True, exist_ok=True)
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [b.diff_id for b in layers]},
        "history": [{"created_by": h} for h in history],
    }
    cdigest, csize = _put(blobs, _json_bytes(image_config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": cdigest, "size": csize},
        "layers": [{"mediaType": LAYER, "digest": b.digest, "size": b.size} for b in layers],
    }
    mdigest, msize = _put(blobs, _json_bytes(manifest))
    return {"mediaType": MANIFEST, "digest": mdigest, "size": msize,
            "platform": {"architecture": "amd64", "os": "linux"}}


def write_archive(out: Path, blobs: Path, manifest: dict, names: list[str]) -> None:
    """An OCI layout tarball holding one image under every name in `names`."""
    mdata = json.loads((blobs / manifest["digest"].split(":", 1)[1]).read_bytes())
    digests = [manifest["digest"], mdata["config"]["digest"]] + [x["digest"] for x in mdata["layers"]]
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        dict(manifest, annotations={"io.containerd.image.name": full_reference(n),
                                    "org.opencontainers.image.ref.name": full_reference(n).rsplit(":", 1)[1]})
        for n in names]}
    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))

        add_bytes("oci-layout", _json_bytes({"imageLayoutVersion": "1.0.0"}))
        add_bytes("index.json", _json_bytes(index))
        seen = set()
        for d in digests:
            if d in seen:
                continue
            seen.add(d)
            hexd = d.split(":", 1)[1]
            info = tar.gettarinfo(str(blobs / hexd), f"blobs/sha256/{hexd}")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(blobs / hexd, "rb") as f:
                tar.addfile(info, f)
    os.replace(tmp, out)
