"""Filesystem layers: what a build step changed in a root filesystem, as an OCI layer (tar+gzip).

A step of the build (images/imagebuild/build.py) runs between two `snapshot`s of the rootfs; `diff`
turns them into the changed paths and whiteouts, `write_layer` packs them into the blob store, and
`unpack_layer` turns a cached layer into an overlayfs lower directory when a later step must run again.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Contents of these are the host's (mounted while a step runs), never the image's.
SKIP_CONTENTS = ("proc", "sys", "dev")
WHITEOUT = ".wh."

Snapshot = dict[str, tuple]


def snapshot(root: Path, exclude: tuple[str, ...] = ()) -> Snapshot:
    """rel path -> identity of the file: any write, replace or chmod changes it."""
    out: Snapshot = {}
    root_s = str(root)
    for dirpath, dirnames, filenames in os.walk(root_s):
        rel_dir = os.path.relpath(dirpath, root_s)
        rel_dir = "" if rel_dir == "." else rel_dir
        if rel_dir in SKIP_CONTENTS:
            dirnames[:] = []
            continue
        keep = []
        for name in dirnames + filenames:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if rel in exclude:
                continue
            st = os.lstat(os.path.join(dirpath, name))
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
            if name in dirnames and stat.S_ISDIR(st.st_mode):
                keep.append(name)
        dirnames[:] = [d for d in dirnames if d in keep]
    return out


def diff(before: Snapshot, after: Snapshot) -> tuple[list[str], list[str]]:
    """(added or changed paths, deleted paths); a deleted directory is listed once, not its children."""
    changed = sorted(p for p, ident in after.items() if before.get(p) != ident)
    gone = sorted(p for p in before if p not in after)
    gone_set = set(gone)
    deleted = [p for p in gone if os.path.dirname(p) not in gone_set]
    return changed, deleted


@dataclass(frozen=True)
class Blob:
    digest: str  # sha256:<hex> of the compressed bytes
    size: int
    diff_id: str  # sha256:<hex> of the uncompressed tar

    def to_json(self) -> dict:
        return {"digest": self.digest, "size": self.size, "diff_id": self.diff_id}


class _Hashing:
    """A write-only file that hashes and counts what passes through to `inner`."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.inner.write(data) if self.inner is not None else len(data)

    def flush(self) -> None:
        if self.inner is not None:
            self.inner.flush()


def _tarinfo(tar: tarfile.TarFile, path: str, arcname: str) -> tarfile.TarInfo:
    info = tar.gettarinfo(path, arcname)
    info.uname = info.gname = ""  # numeric ids only: the image has its own /etc/passwd
    return info


def write_layer(root: Path, paths: list[str], deleted: list[str], blobs: Path) -> Blob:
    """Pack `paths` (relative to `root`) and whiteouts for `deleted` into a gzip layer in `blobs`."""
    blobs.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=blobs, prefix=".layer-")
    with os.fdopen(fd, "wb") as raw:
        compressed = _Hashing(raw)
        with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0, compresslevel=6) as gz:
            plain = _Hashing(gz)
            with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                entries = [(p, False) for p in paths] + [(p, True) for p in deleted]
                for rel, is_whiteout in sorted(entries):
                    if is_whiteout:
                        head, name = os.path.split(rel)
                        info = tarfile.TarInfo(os.path.join(head, WHITEOUT + name))
                        info.mode = 0o644
                        tar.addfile(info)
                        continue
                    full = os.path.join(root, rel)
                    info = _tarinfo(tar, full, rel)
                    if info.isreg():
                        with open(full, "rb") as f:
                            tar.addfile(info, f)
                    else:
                        tar.addfile(info)
    digest = "sha256:" + compressed.sha.hexdigest()
    os.chmod(tmp, 0o644)
    os.replace(tmp, blobs / compressed.sha.hexdigest())
    return Blob(digest, compressed.size, "sha256:" + plain.sha.hexdigest())


def write_tree_layer(root: Path, blobs: Path) -> Blob:
    """The whole tree as one layer (the base)."""
    snap = snapshot(root)
    return write_layer(root, sorted(snap), [], blobs)


def unpack_layer(blob_path: Path, dest: Path, whiteouts: list[str]) -> None:
    """A layer as an overlayfs lower directory: its files, and its whiteouts as overlay whiteouts
    (0/0 character devices). `whiteouts` are the deleted paths the layer was written with (kept in the
    layer's cache record, so the tarball is not read twice)."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    subprocess.run(["rm", "-rf", "--one-file-system", str(tmp)], check=True)
    tmp.mkdir(parents=True)
    subprocess.run(["tar", "--numeric-owner", "-xpzf", str(blob_path), "-C", str(tmp)], check=True)
    for rel in whiteouts:
        head, name = os.path.split(rel)
        (tmp / head / (WHITEOUT + name)).unlink(missing_ok=True)
        os.mknod(tmp / rel, stat.S_IFCHR, os.makedev(0, 0))
    os.replace(tmp, dest)
