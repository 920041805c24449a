"""storageUri parsing: the first step of a model pull (runtime.storage.pull) and of spec validation
(autoscaler.spec); pure, no I/O. A parsed URI also knows how to show itself without secrets."""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from dataclasses import dataclass

SCHEMES = ("s3", "http", "https", "pvc", "file")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
MAX_URI_CHARS = 2048

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_CLAIM_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class StorageUriError(ValueError):
    """A storageUri that cannot be pulled from, whatever the storage answers."""


@dataclass(frozen=True)
class StorageUri:
    """One model location. `host` is the bucket (s3), the claim (pvc) or host[:port] (http/https);
    `path` has no leading slash (s3 key or prefix, path inside the claim, URL path); a local path is
    kept absolute in `path` with scheme "file"."""

    scheme: str
    host: str
    path: str
    query: str = ""  # http(s) only: kept for the request, never shown (presigned URLs sign here)
    userinfo: str = ""  # http(s) only: user:password@, never shown

    @property
    def display(self) -> str:
        """The URI as logs, conditions and errors show it: no password, no query string."""
        if self.scheme == "file":
            return f"file://{self.path}"
        return f"{self.scheme}://{self.host}/{self.path}" + ("?…" if self.query else "")

    @property
    def url(self) -> str:
        """http(s): the URL to request (with its query and user info)."""
        auth = f"{self.userinfo}@" if self.userinfo else ""
        return f"{self.scheme}://{auth}{self.host}/{self.path}" + (f"?{self.query}" if self.query else "")

    @property
    def basename(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def is_archive(self) -> bool:
        return self.basename.lower().endswith(ARCHIVE_SUFFIXES)

    @property
    def cache_identity(self) -> str:
        """What names this location in a cache key: the display form plus a digest of the query
        (two presigned URLs of one object differ only there), never the secret itself."""
        if not self.query:
            return self.display
        return f"{self.display}#{hashlib.sha256(self.query.encode()).hexdigest()[:16]}"


def parse_uri(text: str) -> StorageUri:
    """Parse a storageUri: `s3://BUCKET[/PREFIX]`, `pvc://CLAIM[/PATH]`, `http(s)://HOST/PATH`,
    `file:///ABS/PATH` or an absolute local path. Raises StorageUriError with the reason."""
    if not isinstance(text, str) or not text.strip():
        raise StorageUriError("storageUri must not be empty")
    text = text.strip()
    if len(text) > MAX_URI_CHARS:
        raise StorageUriError(f"storageUri is longer than {MAX_URI_CHARS} characters")
    if any(ord(c) < 32 or c == "\x7f" for c in text):
        raise StorageUriError("storageUri contains control characters")
    if text.startswith("/"):
        return StorageUri("file", "", _clean_local(text))
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        shown = f"{scheme}://" if "://" in text else repr(text.split(":", 1)[0])
        raise StorageUriError(f"unsupported storageUri scheme {shown} (use s3://, pvc://, http://, https://, "
                              "file:// or an absolute path)")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StorageUriError("file:// URIs name a local path: file:///abs/path")
        return StorageUri("file", "", _clean_local(urllib.parse.unquote(parts.path)))
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise StorageUriError(f"{scheme}:// URI without a host")
        path = parts.path.lstrip("/")
        if not path or path.endswith("/"):
            raise StorageUriError(f"{scheme}:// URIs name one file or archive, not a directory")
        userinfo, _, hostport = parts.netloc.rpartition("@")
        return StorageUri(scheme, hostport, path, parts.query, userinfo)
    if parts.query or parts.fragment:
        raise StorageUriError(f"{scheme}:// URIs take no query or fragment")
    host, path = parts.netloc, parts.path.lstrip("/")
    if "@" in host or ":" in host:
        raise StorageUriError(f"{scheme}:// URIs take no user, password or port: credentials come from a Secret")
    if ".." in path.split("/"):
        raise StorageUriError(f"{scheme}:// path must not contain '..'")
    if scheme == "s3" and not _BUCKET_RE.match(host):
        raise StorageUriError(f"{host!r} is not a valid S3 bucket name")
    if scheme == "pvc" and (not _CLAIM_RE.match(host) or len(host) > 253):
        raise StorageUriError(f"{host!r} is not a valid PersistentVolumeClaim name")
    return StorageUri(scheme, host, path)


def check_sha256(text: str) -> str:
    """A sha256 given by the user: 64 hex digits (lower-cased)."""
    value = str(text).strip().lower()
    if not _SHA256_RE.match(value):
        raise StorageUriError("sha256 must be 64 hexadecimal digits")
    return value


def _clean_local(path: str) -> str:
    if not path.startswith("/"):
        raise StorageUriError("a local model path must be absolute")
    return "/" + "/".join(p for p in path.split("/") if p and p != ".")
