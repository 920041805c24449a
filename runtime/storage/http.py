"""http:// and https:// model sources for runtime.storage.pull: one file or archive, fetched with
urllib3; its identity comes from a HEAD's headers, so a cached version costs one HEAD and no body."""

from __future__ import annotations

import hashlib
from pathlib import Path

import urllib3

from runtime.storage.errors import StorageError
from runtime.storage.progress import Progress
from runtime.storage.uri import StorageUri

CHUNK = 1 << 20


class HttpSource:
    def __init__(self, uri: StorageUri, connect_timeout: float, read_timeout: float) -> None:
        self.uri = uri
        self.pool = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            retries=urllib3.Retry(total=2, connect=2, read=0, redirect=5, status=0, backoff_factor=0.2,
                                  # a redirect to another host must not carry the user's password on
                                  remove_headers_on_redirect=["Authorization", "Cookie"]))
        self.resp: urllib3.BaseHTTPResponse | None = None  # a GET whose body is not read yet
        self.headers: urllib3.HTTPHeaderDict | None = None

    def open(self) -> None:
        """Ask for the headers: HEAD, or a GET whose body `download` reads later when the server refuses
        HEAD (a presigned URL signs its method)."""
        resp = self._request("HEAD")
        if resp.status in (403, 405, 501):
            resp = self._request("GET")
            self.resp = resp
        self._check(resp)
        self.headers = resp.headers

    def identity(self) -> str | None:
        """The version the server names (ETag, else Last-Modified with the length); None: it names none."""
        return _identity(self.headers)

    def download(self, file: Path, progress: Progress) -> str:
        """Stream the body into `file`; returns its sha256."""
        if self.resp is None:
            self.resp = self._request("GET")
            self._check(self.resp)
            if _identity(self.resp.headers) != self.identity():
                raise StorageError("the file changed while it was being pulled; pulling again")
        expected = _length(self.resp.headers)
        progress.expect(expected)
        digest = hashlib.sha256()
        try:
            with open(file, "wb") as out:
                for chunk in self.resp.stream(CHUNK, decode_content=False):
                    progress.advance(len(chunk))
                    digest.update(chunk)
                    out.write(chunk)
        except urllib3.exceptions.HTTPError as exc:
            raise StorageError(f"download from {self.uri.host} broke off: {connection_reason(exc)}") from None
        if expected is not None and progress.done != expected:
            raise StorageError(f"download from {self.uri.host} ended after {progress.done} of {expected} bytes")
        return digest.hexdigest()

    def close(self) -> None:
        if self.resp is not None:
            self.resp.release_conn()
        self.pool.clear()

    def _request(self, method: str) -> urllib3.BaseHTTPResponse:
        try:
            # a HEAD is read whole (it has no body), so its connection can serve the GET
            return self.pool.request(method, self.uri.url, preload_content=method == "HEAD", redirect=True,
                                     headers={"Accept-Encoding": "identity"})
        except urllib3.exceptions.HTTPError as exc:  # a MaxRetryError's reason is the last attempt's error
            why = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
            raise StorageError(f"cannot reach {self.uri.host}: {connection_reason(why)}") from None

    @staticmethod
    def _check(resp: urllib3.BaseHTTPResponse) -> None:
        if resp.status != 200:
            resp.close()  # an error's body is not read: this connection is not reused
            raise StorageError(_status_reason(resp.status), retryable=resp.status >= 500 or resp.status == 429)


def _identity(headers: urllib3.HTTPHeaderDict | None) -> str | None:
    if not headers:
        return None
    if headers.get("ETag"):
        return f"etag:{headers['ETag']}"
    if headers.get("Last-Modified"):
        return f"modified:{headers['Last-Modified']}:{headers.get('Content-Length', '')}"
    return None


def _length(headers: urllib3.HTTPHeaderDict) -> int | None:
    try:
        return int(headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _status_reason(status: int) -> str:
    if status == 404:
        return "not found (HTTP 404)"
    if status in (401, 403):
        return f"access denied (HTTP {status})"
    return f"the server answered HTTP {status}"


def connection_reason(exc: BaseException | None) -> str:
    """A short reason from urllib3's nested errors (connection refused, timed out, name not known)."""
    text = str(exc) if exc is not None else "unknown error"
    for marker in ("Connection refused", "timed out", "Name or service not known", "No route to host",
                   "Temporary failure in name resolution", "certificate verify failed", "Connection reset"):
        if marker in text:
            return marker.lower()
    return "the connection failed"  # urllib3's own text holds object reprs and the URL's query
