"""Build an image from its Dockerfile without Docker, reusing every cached layer whose inputs match.

Driven by __main__ (scripts/build-images.sh): Dockerfile -> chain of layer keys (like Docker's build
cache: a key covers the base, every instruction before it and the files a COPY brings) -> missing
layers built on a rootfs directory (rootfs.py, layers.py) -> OCI archive (oci.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from imagebuild import dockerfile as df
from imagebuild import layers, oci, rootfs

# Bump when the way layers are made changes: it invalidates every cached layer.
BUILDER_VERSION = "1"

# The Kubernetes sandbox image is a static C program, compiled on the host with the flags of
# images/pause/Dockerfile's build stage (tests/kubernetes/test_images.py keeps them equal).
PAUSE_CFLAGS = ("-static", "-O2", "-Wall", "-Werror")


@dataclass(frozen=True)
class Target:
    names: tuple[str, ...]
    dockerfile: str


TARGETS = {
    "runtime-lac": Target(("elasticserving/runtime-lac:latest", "elasticserving/runtime:latest"),
                          "images/runtime/Dockerfile"),
    "runtime-models": Target(("elasticserving/runtime-image:latest", "elasticserving/runtime-ocr:latest"),
                             "images/runtime/Dockerfile.models"),
    "control-plane": Target(("elasticserving/control-plane:latest",), "images/control-plane/Dockerfile"),
    "pause": Target(("elasticserving/pause:3.10",), "images/pause/Dockerfile"),
}
ALIASES = {"runtime": "runtime-lac"}


def resolve_target(name: str) -> str:
    """`runtime`, `elasticserving/runtime-lac:latest`, ... -> the TARGETS key."""
    short = name.split("/")[-1].split(":")[0]
    short = ALIASES.get(short, short)
    if short not in TARGETS:
        raise df.DockerfileError(f"unknown image {name!r} (known: {', '.join(TARGETS)})")
    return short


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join((BUILDER_VERSION, *parts)).encode()).hexdigest()


_START = time.monotonic()


def log(msg: str) -> None:
    print(f"build-images: [{time.monotonic() - _START:6.1f}s] {msg}", file=sys.stderr, flush=True)


class Cache:
    """~/.cache/elasticserving/images: blobs by digest, layer records by key, finished archives."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.records = root / "layers"
        self.out = root / "out"
        self.pip = root / "pip"
        self.work = root / "work"
        self.unpacked = root / "unpacked"
        for d in (self.blobs, self.records, self.out, self.pip, self.work, self.unpacked):
            d.mkdir(parents=True, exist_ok=True)

    def layer(self, key: str) -> dict | None:
        path = self.records / f"{key}.json"
        if not path.exists():
            return None
        rec = json.loads(path.read_text())
        return rec if (self.blobs / rec["digest"].split(":", 1)[1]).exists() else None

    def lower_dir(self, rec: dict) -> Path:
        """The layer unpacked (once) as an overlayfs lower directory."""
        hexd = rec["digest"].split(":", 1)[1]
        path = self.unpacked / hexd
        if not path.exists():
            layers.unpack_layer(self.blobs / hexd, path, rec["whiteouts"])
        os.utime(path)  # last use, for pruning
        return path

    def prune_unpacked(self, max_age_s: float = 3 * 86400) -> None:
        """Unpacked layers unused for days go (their blobs stay: they are in the archives)."""
        for path in self.unpacked.iterdir():
            if time.time() - path.stat().st_mtime > max_age_s:
                subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)

    def save_layer(self, key: str, blob: layers.Blob, whiteouts: list[str], created_by: str) -> dict:
        rec = dict(blob.to_json(), whiteouts=whiteouts, created_by=created_by)
        tmp = self.records / f".{key}.tmp"
        tmp.write_text(json.dumps(rec))
        os.replace(tmp, self.records / f"{key}.json")
        return rec


@dataclass
class Step:
    key: str
    ins: df.Instruction
    config: df.ImageConfig  # the config in force when the step runs (env, workdir, user)


def _stages(instructions: list[df.Instruction]) -> list[list[df.Instruction]]:
    stages: list[list[df.Instruction]] = []
    for ins in instructions:
        if ins.word == "FROM":
            stages.append([])
        stages[-1].append(ins)
    return stages


def _blob(rec: dict) -> layers.Blob:
    return layers.Blob(rec["digest"], rec["size"], rec["diff_id"])


def build_dockerfile(context: Path, target: Target, cache: Cache) -> tuple[list[dict], dict]:
    """Layer records and OCI config of a single-stage Dockerfile FROM one of rootfs.BASES."""
    instructions = df.read(context / target.dockerfile)
    if len(_stages(instructions)) != 1:
        raise df.DockerfileError(f"{target.dockerfile}: only single-stage Dockerfiles build here")
    from_ref = instructions[0].args.split()[0]
    base = rootfs.BASES.get(from_ref)
    if base is None:
        raise df.DockerfileError(f"{target.dockerfile}: no Docker-less recipe for FROM {from_ref} "
                                 f"(known: {', '.join(rootfs.BASES)})")
    ignore = df.DockerIgnore.load(context)
    config = df.ImageConfig(env=dict(base.env), cmd=list(base.cmd) or None)
    base_key = key = _key("base", base.recipe())
    steps: list[Step] = []
    for ins in instructions[1:]:
        if ins.word in df.CONFIG_WORDS:
            df.apply(config, ins)
            key = _key(key, ins.text())
        elif ins.word in df.LAYER_WORDS:
            extra = ""
            if ins.word == "COPY":
                sources, _ = df.copy_args(ins, config.workdir)
                extra = rootfs.copy_digest(context, sources, ignore)
            key = _key(key, ins.text(), extra)
            steps.append(Step(key, ins, config.copy()))
        else:
            raise df.DockerfileError(f"{target.dockerfile}: {ins.word} is not supported by this build")

    records = [cache.layer(base_key)] + [cache.layer(s.key) for s in steps]
    if all(records):
        return records, config.to_oci()  # type: ignore[return-value]

    # Everything from the first missing layer on is rebuilt: a later key may only exist from a
    # build whose earlier blobs were since removed.
    first_missing = records.index(None)
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache.work))
    root = work / "root"
    mounted = False
    try:
        if first_missing == 0:
            log(f"{from_ref}: mmdebstrap {base.suite} with {', '.join(base.packages)}")
            rootfs.make_base(base, root)
            records[0] = cache.save_layer(base_key, layers.write_tree_layer(root, cache.blobs), [],
                                          f"FROM {from_ref} (mmdebstrap {base.suite})")
            first_missing = 1
        else:
            # The cached layers under an overlay, as containerd stacks them: nothing is copied, and
            # the steps see (and change) the merged tree.
            log(f"{target.dockerfile}: {first_missing} cached layers as overlay lowers")
            lowers = [str(cache.lower_dir(rec)) for rec in records[:first_missing]]
            for d in ("root", "upper", "ovl"):
                (work / d).mkdir()
            opts = f"lowerdir={':'.join(reversed(lowers))},upperdir={work}/upper,workdir={work}/ovl"
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(root)], check=True)
            mounted = True
        for i in range(first_missing - 1, len(steps)):
            log(f"{target.dockerfile}: {steps[i].ins.text()[:100]}")
            records[i + 1] = _run_step(context, steps[i], root, cache, ignore)
    finally:
        if mounted:
            subprocess.run(["umount", str(root)], check=False)
        subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)
    return records, config.to_oci()  # type: ignore[return-value]


def _run_step(context: Path, step: Step, root: Path, cache: Cache, ignore: df.DockerIgnore) -> dict:
    exclude = (rootfs.CACHE_MOUNT,)
    before = layers.snapshot(root, exclude)
    cfg = step.config
    if step.ins.word == "COPY":
        sources, dest = df.copy_args(step.ins, cfg.workdir)
        (root / cfg.workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        rootfs.copy(context, sources, dest, root, ignore)
    else:
        rootfs.run(root, step.ins.args, cfg.env, cfg.workdir, cfg.user, cache.pip)
    changed, deleted = layers.diff(before, layers.snapshot(root, exclude))
    log(f"layer: {len(changed)} paths changed, {len(deleted)} deleted")
    blob = layers.write_layer(root, changed, deleted, cache.blobs)
    return cache.save_layer(step.key, blob, deleted, step.ins.text())


def build_pause(context: Path, target: Target, cache: Cache) -> tuple[list[dict], dict]:
    """The sandbox image: pause.c compiled static on the host, config from the Dockerfile's last stage."""
    source = context / "images/pause/pause.c"
    stages = _stages(df.read(context / target.dockerfile))
    config = df.ImageConfig(env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"})
    for ins in stages[-1][1:]:
        if ins.word in df.CONFIG_WORDS:
            df.apply(config, ins)
    key = _key("pause", hashlib.sha256(source.read_bytes()).hexdigest(), " ".join(PAUSE_CFLAGS))
    rec = cache.layer(key)
    if rec is None:
        if shutil.which("gcc") is None:
            raise df.DockerfileError("gcc is missing (apt-get install gcc libc6-dev)")
        log("pause: gcc " + " ".join(PAUSE_CFLAGS))
        work = Path(tempfile.mkdtemp(prefix="pause-", dir=cache.work))
        try:
            (work / "root").mkdir(mode=0o755)
            binary = work / "root/pause"
            subprocess.run(["gcc", *PAUSE_CFLAGS, "-o", str(binary), str(source)], check=True, stdout=sys.stderr)
            subprocess.run(["strip", str(binary)], check=True)
            os.chmod(binary, 0o755)
            rec = cache.save_layer(key, layers.write_tree_layer(work / "root", cache.blobs), [],
                                   "COPY --from=build /pause /pause")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return [rec], config.to_oci()


def build(context: Path, name: str, cache: Cache) -> Path:
    """The archive of one target, rebuilt only when a layer or the config changed."""
    target = TARGETS[name]
    make = build_pause if name == "pause" else build_dockerfile
    records, config = make(context, target, cache)
    manifest = oci.write_image(cache.blobs, [_blob(r) for r in records], config,
                               [r["created_by"] for r in records])
    out = cache.out / f"{name}.tar"
    stamp = cache.out / f"{name}.json"
    want = {"manifest": manifest["digest"], "names": list(target.names)}
    if out.exists() and stamp.exists() and json.loads(stamp.read_text()) == want:
        return out
    log(f"{name}: writing {out}")
    oci.write_archive(out, cache.blobs, manifest, list(target.names))
    stamp.write_text(json.dumps(want))
    return out
