"""The node-local model cache: one read-only directory per model version, shared by every replica
(and every Pod's storage initializer) on this machine, size-capped with least-recently-used eviction.

Layout under the root: `entries/KEY/` (the model files, read-only), `entries/KEY.json` (what it holds;
its mtime is the last use), `tmp/` (entries being built), `locks/KEY.lock` (one download per key),
`.lock` (shared while an entry is used, exclusive while entries are added or evicted).
KEY is a digest of the location (never a secret) and the content identity, computed by `cache_key`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def cache_key(location: str, identity: str) -> str:
    """The entry name of one model version: `location` is the URI as shown (plus a digest of any
    query), `identity` its content identity (an ETag, Last-Modified, a listing digest or a sha256)."""
    return hashlib.sha256(f"{location}\n{identity}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Entry:
    key: str
    path: Path
    size: int
    last_used: float
    meta: dict


class ModelCache:
    def __init__(self, root: str | os.PathLike, max_bytes: int, protect_seconds: float = 0.0) -> None:
        """`max_bytes`: the cap eviction keeps to; `protect_seconds`: entries used that recently are
        never evicted (a Pod on this node may still read them), even when that leaves the cache over."""
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.protect_seconds = protect_seconds
        self.entries = self.root / "entries"
        self.tmp = self.root / "tmp"
        self.locks = self.root / "locks"
        self.ensure()

    def ensure(self) -> None:
        """Create the layout (again: someone may have removed the cache while we ran)."""
        for d in (self.entries, self.tmp, self.locks):
            d.mkdir(parents=True, exist_ok=True)

    # ---- locks ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self, path: Path, mode: int) -> Iterator[None]:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def shared(self) -> contextlib.AbstractContextManager[None]:
        """Held while an entry is looked up and used: eviction waits for it."""
        return self._lock(self.root / ".lock", fcntl.LOCK_SH)

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        return self._lock(self.root / ".lock", fcntl.LOCK_EX)

    def building(self, key: str) -> contextlib.AbstractContextManager[None]:
        """Held while KEY is downloaded: a second puller of the same version waits, then finds it."""
        return self._lock(self.locks / f"{key}.lock", fcntl.LOCK_EX)

    # ---- entries -------------------------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        """The entry of KEY, marked used now; None when absent. Call under `shared()`."""
        meta_path = self.entries / f"{key}.json"
        path = self.entries / key
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return None
        if not path.is_dir():
            return None
        now = time.time()
        with contextlib.suppress(OSError):
            os.utime(meta_path, (now, now))
        return Entry(key, path, int(meta.get("size", 0)), now, meta)

    def new_dir(self) -> Path:
        """An empty directory under tmp/ to build an entry in (same file system: the commit renames)."""
        d = self.tmp / uuid.uuid4().hex
        d.mkdir()
        return d

    def commit(self, key: str, built: Path, meta: dict) -> Entry:
        """Make the directory `built` the read-only entry KEY, then evict down to the cap (never KEY)."""
        size = sum(p.stat().st_size for p in built.rglob("*") if p.is_file() and not p.is_symlink())
        # Its top directory stays writable until it is moved: renaming a directory into another one
        # needs write permission on it (its `..` changes), which only root has without it.
        make_read_only(built)
        meta = dict(meta, size=size, created=time.time())
        with self.exclusive():
            dest = self.entries / key
            if dest.exists():  # built twice (a lock file removed under us): keep the first
                remove_tree(built)
            else:
                os.rename(built, dest)
                os.chmod(dest, 0o555)
            tmp_meta = self.tmp / f"{key}.json.{uuid.uuid4().hex}"
            tmp_meta.write_text(json.dumps(meta, sort_keys=True))
            os.replace(tmp_meta, self.entries / f"{key}.json")
            self._evict(keep={key})
        return Entry(key, self.entries / key, size, time.time(), meta)

    def list(self) -> list[Entry]:
        out = []
        for meta_path in self.entries.glob("*.json"):
            key = meta_path.name[:-5]
            try:
                meta = json.loads(meta_path.read_text())
                used = meta_path.stat().st_mtime
            except (OSError, ValueError):
                continue
            out.append(Entry(key, self.entries / key, int(meta.get("size", 0)), used, meta))
        return sorted(out, key=lambda e: e.last_used)

    def _evict(self, keep: set[str]) -> None:
        """Least recently used first, until the total is within the cap. Under `exclusive()`."""
        entries = self.list()
        total = sum(e.size for e in entries)
        now = time.time()
        for e in entries:
            if total <= self.max_bytes:
                break
            if e.key in keep or now - e.last_used < self.protect_seconds:
                continue
            (self.entries / f"{e.key}.json").unlink(missing_ok=True)
            remove_tree(e.path)
            total -= e.size
        # Leftovers of pulls that died mid-way (older than a day: a live pull renames long before).
        for d in self.tmp.iterdir():
            with contextlib.suppress(OSError):
                if now - d.stat().st_mtime > 86400:
                    remove_tree(d) if d.is_dir() else d.unlink()


def make_read_only(root: Path) -> None:
    """Files 0444, directories 0555 under `root` (not `root` itself): a replica sees its model read-only."""
    for p in root.rglob("*"):
        if not p.is_symlink():
            os.chmod(p, 0o555 if stat.S_ISDIR(p.stat().st_mode) else 0o444)


def remove_tree(root: Path) -> None:
    """Remove a read-only tree (directories need their write bit back first)."""
    if not root.exists():
        return
    for d in [root, *(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())]:
        with contextlib.suppress(OSError):
            os.chmod(d, 0o755)
    shutil.rmtree(root, ignore_errors=True)
