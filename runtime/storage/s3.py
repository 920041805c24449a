"""s3:// model sources for runtime.storage.pull: one object or every object under a prefix, from any
S3-compatible endpoint, with the MinIO client. Endpoint, region and keys come from the standard AWS_*
variables given as a mapping (a Secret's data in a Pod, the stack's environment locally), never the URI."""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import urllib3

from runtime.storage.errors import StorageError
from runtime.storage.http import CHUNK, connection_reason
from runtime.storage.progress import Progress
from runtime.storage.uri import StorageUri

_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
           "AuthorizationHeaderMalformed", "AccessForbidden"}


class S3Source:
    def __init__(self, uri: StorageUri, env: Mapping[str, str], connect_timeout: float, read_timeout: float,
                 max_objects: int) -> None:
        from minio import Minio  # imported lazily: only s3:// pulls pay for it

        self.uri = uri
        self.max_objects = max_objects
        self.endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or "https://s3.amazonaws.com"
        ep = urllib.parse.urlsplit(self.endpoint)
        if ep.scheme not in ("http", "https") or not ep.netloc or ep.path.strip("/"):
            raise StorageError(f"AWS_ENDPOINT_URL must be http(s)://host[:port], got {self.endpoint!r}",
                               retryable=False)
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            retries=urllib3.Retry(total=3, connect=3, read=0, backoff_factor=0.2,
                                  status_forcelist=[500, 502, 503, 504]),
            ca_certs=env.get("AWS_CA_BUNDLE") or None)
        self.client = Minio(ep.netloc, access_key=env.get("AWS_ACCESS_KEY_ID") or None,
                            secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
                            session_token=env.get("AWS_SESSION_TOKEN") or None, secure=ep.scheme == "https",
                            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
                            http_client=http)
        self.objects: list[tuple[str, str, int]] = []  # (key, etag, size)

    def where(self) -> str:
        return f"the S3 endpoint {self.endpoint}"

    def open(self) -> None:
        """List the objects to pull: the key itself, or every object under the prefix."""
        prefix = self.uri.path
        found: list[tuple[str, str, int]] = []
        try:
            for obj in self.client.list_objects(self.uri.host, prefix=prefix or None, recursive=True):
                key = obj.object_name or ""
                # `prefix` names either one object or a "directory": a sibling like `model2` for
                # `model` belongs to neither.
                if key == prefix or not prefix or prefix.endswith("/") or key.startswith(prefix + "/"):
                    if not key.endswith("/") and not obj.is_dir:
                        found.append((key, str(obj.etag or ""), int(obj.size or 0)))
                if len(found) > self.max_objects:
                    raise StorageError(f"more than {self.max_objects} objects under {self.uri.display}",
                                       retryable=False)
        except Exception as exc:
            raise self._error(exc) from None
        if not found:
            raise StorageError(f"no objects under {self.uri.display}", retryable=False)
        self.objects = sorted(found)

    def identity(self) -> str:
        """A digest of the listing (keys, ETags, sizes): any changed object is a new version."""
        text = "\n".join(f"{k}\t{e}\t{s}" for k, e, s in self.objects)
        return "s3:" + hashlib.sha256(text.encode()).hexdigest()

    def single_object(self) -> bool:
        return len(self.objects) == 1 and self.objects[0][0] == self.uri.path

    def download(self, target: Path, progress: Progress) -> None:
        """Every listed object into `target`, by its path under the prefix (one object: its basename)."""
        progress.expect(sum(s for _, _, s in self.objects))
        prefix = self.uri.path
        if self.single_object():
            base = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        else:
            base = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        for key, _etag, _size in self.objects:
            rel = PurePosixPath(key[len(base):])
            if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                raise StorageError(f"object key {key!r} cannot be a file name under the model directory",
                                   retryable=False)
            dest = target.joinpath(*rel.parts)
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                if dest.is_dir():
                    raise FileExistsError
            except (FileExistsError, NotADirectoryError):
                # `d/x` and `d/x/y`: S3 has no directories, a file system cannot hold both
                raise StorageError(f"object key {key!r} is both a file and a directory of other keys",
                                   retryable=False) from None
            try:
                resp = self.client.get_object(self.uri.host, key)
                try:
                    with open(dest, "wb") as out:
                        for chunk in resp.stream(CHUNK):
                            progress.advance(len(chunk))
                            out.write(chunk)
                finally:
                    resp.close()
                    resp.release_conn()
            except Exception as exc:
                raise self._error(exc) from None

    def _error(self, exc: Exception) -> StorageError:
        """Our own words for the client's errors: its messages may quote the request."""
        if isinstance(exc, StorageError):  # ours already: a size, time or object-count limit
            return exc
        from minio.error import InvalidResponseError, S3Error, ServerError

        if isinstance(exc, S3Error):
            code = exc.code or ""
            status = exc.response.status if exc.response is not None else None
            if code == "NoSuchBucket":
                return StorageError(f"bucket {self.uri.host!r} does not exist", retryable=False)
            if code in ("NoSuchKey", "ResourceNotFound"):
                return StorageError(f"{self.uri.display} not found", retryable=False)
            if code in _DENIED or status in (401, 403):
                return StorageError(f"access denied by {self.where()} ({code or status}): check the "
                                    "credentials and that they may read this bucket", retryable=False)
            return StorageError(f"{self.where()} answered {code or status}", retryable=(status or 500) >= 500)
        if isinstance(exc, ServerError):
            return StorageError(f"{self.where()} answered HTTP {exc.status_code}")
        if isinstance(exc, InvalidResponseError):  # not an S3 answer: a wrong AWS_ENDPOINT_URL
            status = getattr(exc, "_code", None)
            return StorageError(f"{self.where()} did not answer as S3 does (HTTP {status}): check "
                                "AWS_ENDPOINT_URL", retryable=isinstance(status, int) and status >= 500)
        if isinstance(exc, urllib3.exceptions.MaxRetryError):
            return StorageError(f"cannot reach {self.where()}: {connection_reason(exc.reason)}")
        if isinstance(exc, urllib3.exceptions.HTTPError):
            return StorageError(f"{self.where()}: {connection_reason(exc)}")
        if isinstance(exc, OSError):  # writing the download (a full disk)
            return StorageError(f"cannot write the model: {exc.strerror or exc}")
        return StorageError(f"S3 request to {self.where()} failed")
