"""The model pull: storageUri -> a read-only model directory in the node-local cache (or the local path
itself), downloading only when the cache lacks this version. Called by the storage initializer
(`python -m runtime.storage`) in a Pod and by the local platform before it starts a replica."""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from runtime.storage.archive import unpack
from runtime.storage.cache import ModelCache, cache_key, remove_tree
from runtime.storage.errors import StorageError
from runtime.storage.http import HttpSource
from runtime.storage.progress import Progress
from runtime.storage.s3 import S3Source
from runtime.storage.uri import StorageUri, StorageUriError, check_sha256, parse_uri


@dataclass(frozen=True)
class PullLimits:
    max_bytes: int = 20 * 1024**3  # one download (archives: also what they unpack to)
    connect_timeout: float = 10.0
    read_timeout: float = 60.0  # no byte for this long: the download failed
    deadline: float = 3600.0  # the whole pull
    max_objects: int = 10_000  # s3:// prefixes


@dataclass(frozen=True)
class ModelVersion:
    """What a replica is given: `path` (its $MODEL_DIR), the URI as shown, the version's identity,
    and how it got there (`cached`: no byte was downloaded)."""

    uri: str
    path: Path
    identity: str
    size: int
    cached: bool
    seconds: float
    key: str = ""

    def report(self) -> dict:
        return {"uri": self.uri, "identity": self.identity, "bytes": self.size,
                "cache": "hit" if self.cached else "miss", "seconds": round(self.seconds, 3), "key": self.key}


def pull(uri_text: str, cache: ModelCache, env: Mapping[str, str] | None = None, sha256: str | None = None,
         limits: PullLimits = PullLimits(), say: Callable[[str], None] = lambda line: None) -> ModelVersion:  # noqa: B008
    """The model version at `uri_text` as a local read-only directory. `env`: AWS_* settings and keys
    for s3:// (none: unsigned requests to AWS S3, for public buckets); `sha256`: the downloaded file's digest, verified, and then
    also the version's identity (a cached copy is used without asking the storage anything).
    Raises StorageError whose reason names the URI as shown, never a secret."""
    t0 = time.monotonic()
    try:
        uri = parse_uri(uri_text)
        digest = check_sha256(sha256) if sha256 else None
    except StorageUriError as exc:
        raise StorageError(f"invalid storageUri: {exc}", retryable=False) from None
    try:
        cache.ensure()
        return _pull(uri, cache, env or {}, digest, limits, say, t0)
    except StorageError as exc:
        raise StorageError(f"cannot pull {uri.display}: {exc.reason}", exc.retryable) from None
    except OSError as exc:  # the cache's disk: full, read-only, removed under us
        raise StorageError(f"cannot pull {uri.display}: the model cache {cache.root}: "
                           f"{exc.strerror or exc}") from None


def _pull(uri: StorageUri, cache: ModelCache, env: Mapping[str, str], digest: str | None, limits: PullLimits,
          say: Callable[[str], None], t0: float) -> ModelVersion:
    if uri.scheme == "file":
        path = Path(uri.path)
        if not path.exists():
            raise StorageError("no such file or directory", retryable=False)
        return ModelVersion(uri.display, path, "local", 0, True, time.monotonic() - t0)
    if uri.scheme == "pvc":
        raise StorageError("pvc:// is mounted by Kubernetes; on this machine use a path or file://",
                           retryable=False)
    if digest and uri.scheme == "s3" and (uri.path == "" or uri.path.endswith("/")):
        raise StorageError("storageSha256 checks one object; this URI names a prefix", retryable=False)
    location = uri.cache_identity
    # the user named the content: a cached copy needs no request at all
    if digest and (found := _cached(cache, cache_key(location, f"sha256:{digest}"), uri, t0)):
        return found
    source: HttpSource | S3Source
    if uri.scheme == "s3":
        source = S3Source(uri, env, limits.connect_timeout, limits.read_timeout, limits.max_objects)
    else:
        source = HttpSource(uri, limits.connect_timeout, limits.read_timeout)
    source.open()
    try:
        if digest and isinstance(source, S3Source) and not source.single_object():
            raise StorageError("storageSha256 checks one object; this URI names a prefix", retryable=False)
        named = f"sha256:{digest}" if digest else source.identity()
        key = cache_key(location, named) if named else ""
        if key and (found := _cached(cache, key, uri, t0)):
            return found
        with cache.building(key or "unnamed-" + hashlib.sha256(location.encode()).hexdigest()[:16]):
            # pulled by another process while we waited for the lock
            if key and (found := _cached(cache, key, uri, t0)):
                return found
            return _download(uri, source, cache, key, named, digest, limits, say, t0)
    finally:
        if isinstance(source, HttpSource):
            source.close()


def _cached(cache: ModelCache, key: str, uri: StorageUri, t0: float) -> ModelVersion | None:
    with cache.shared():
        entry = cache.get(key)
    if entry is None:
        return None
    return ModelVersion(uri.display, entry.path, str(entry.meta.get("identity", "")), entry.size, True,
                        time.monotonic() - t0, key)


def _download(uri: StorageUri, source: HttpSource | S3Source, cache: ModelCache, key: str, named: str | None,
              digest: str | None, limits: PullLimits, say: Callable[[str], None], t0: float) -> ModelVersion:
    work = cache.new_dir()
    try:
        model = work / "model"
        model.mkdir()
        progress = Progress(uri.display, say, limits.max_bytes, t0 + limits.deadline)
        if isinstance(source, S3Source) and not source.single_object():
            source.download(model, progress)
            got = None
        else:
            (work / "download").mkdir()
            raw = work / "download" / uri.basename
            if isinstance(source, S3Source):
                source.download(raw.parent, progress)
                with open(raw, "rb") as f:
                    got = hashlib.file_digest(f, "sha256").hexdigest()
            else:
                got = source.download(raw, progress)
            if digest and got != digest:
                raise StorageError(f"checksum mismatch: storageSha256 is {digest}, the download's is {got}",
                                   retryable=False)
            if uri.is_archive:
                unpack(raw, model, limits.max_bytes)
                raw.unlink()
            else:
                shutil.move(raw, model / raw.name)
        progress.finish()
        identity = named or f"sha256:{got}"
        if not key:  # the storage named no version: the content's digest does
            key = cache_key(uri.cache_identity, identity)
        entry = cache.commit(key, model, {"uri": uri.display, "identity": identity})
        return ModelVersion(uri.display, entry.path, identity, entry.size, False, time.monotonic() - t0, key)
    finally:
        remove_tree(work)
