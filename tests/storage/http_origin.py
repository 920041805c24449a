"""A real HTTP origin on loopback for the storage tests: serves registered bodies with or without
ETag / Last-Modified, counts requests per path, and can answer slowly, cut off or with a status."""

from __future__ import annotations

import collections
import http.server
import threading
from dataclasses import dataclass


@dataclass
class Blob:
    body: bytes
    etag: str | None = None
    last_modified: str | None = None
    status: int = 200
    stall_after: int | None = None  # send this many bytes, then stall (a read timeout)
    cut_after: int | None = None  # send this many bytes, then close (a short body)
    redirect: str | None = None
    head_status: int | None = None  # answer HEAD with this (a presigned URL refuses it)


class Origin:
    def __init__(self) -> None:
        self.blobs: dict[str, Blob] = {}
        self.gets: collections.Counter[str] = collections.Counter()  # GETs and HEADs
        self.heads: collections.Counter[str] = collections.Counter()
        self.bodies_sent: collections.Counter[str] = collections.Counter()  # full bodies
        self.release = threading.Event()  # ends every stall
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                self.do_GET(head=True)

            def do_GET(self, head: bool = False) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                origin.gets[path] += 1
                if head:
                    origin.heads[path] += 1
                blob = origin.blobs.get(path)
                if head and blob is not None and blob.head_status:
                    self.send_response(blob.head_status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if blob is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if blob.redirect:
                    self.send_response(302)
                    self.send_header("Location", blob.redirect)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(blob.status)
                body = blob.body if blob.status == 200 else b""
                self.send_header("Content-Length", str(len(body)))
                if blob.etag:
                    self.send_header("ETag", blob.etag)
                if blob.last_modified:
                    self.send_header("Last-Modified", blob.last_modified)
                self.end_headers()
                if head:
                    return
                try:
                    if blob.stall_after is not None:
                        self.wfile.write(body[:blob.stall_after])
                        self.wfile.flush()
                        origin.release.wait(30)
                        return
                    if blob.cut_after is not None:
                        self.wfile.write(body[:blob.cut_after])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    for i in range(0, len(body), 1 << 16):
                        self.wfile.write(body[i:i + (1 << 16)])
                    origin.bodies_sent[path] += 1
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading: a cached version needs only the headers

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> Origin:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
