"""The replica's HTTP/1.1 server: an asyncio protocol that parses requests with httptools within
`HttpLimits`, hands each complete one to the API (runtime.protocols.http_api: `HttpRequest` in, `HttpResponse`
out) and writes the answers back in order per connection.

Errors of HTTP itself are JSON `{"error": ...}` with an `X-Request-Id`: 400 malformed request, 408 slow
client, 413 body too large, 414/431 request line/headers too large, 501 protocol upgrade; the
connection closes after them. A gzip or deflate request body (`Content-Encoding`) is decompressed
within the body limit (415 for another encoding, 400 for a corrupt one), as aiohttp did.

Why not aiohttp (the server before this one): the same trivial JSON handler behind each, wrk with 32
connections on one core of the 2-vCPU VM, answered ~2x the requests per second here; aiohttp's request
and response objects, router and stream reader cost ~60 us per request on the event loop, a fifth to a
quarter of the loop time of a batched small-model request (README, "Measured here"). What aiohttp did
for us is here in a few rules: limits and timeouts as the activator's front door has them, 100-continue,
pipelining in order with a bounded read-ahead, back-pressure from a client that does not read.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http
import json
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httptools

from runtime import tracing
from runtime.request_log import request_id

log = logging.getLogger("elasticserving.runtime")

KIB = 1024
MAX_PIPELINED = 16  # complete requests read ahead on one connection before reading pauses
MAX_PIPELINED_BYTES = 1 << 20  # ... or their bytes
SWEEP_SECONDS = 1.0  # how often connection deadlines are checked


@dataclass(frozen=True)
class HttpLimits:
    max_body_bytes: int = 64 << 20  # 413 beyond (--max-body-bytes)
    max_request_line: int = 8 * KIB  # 414 beyond
    max_header_bytes: int = 64 * KIB  # 431 beyond (all header lines together)
    max_header_fields: int = 100  # 431 beyond
    header_timeout: float = 10.0  # from the first byte of a request to the end of its headers: 408
    body_timeout: float = 60.0  # from the end of the headers to the end of the body: 408
    idle_timeout: float = 75.0  # a keep-alive connection with nothing to do is closed

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value <= 0:
                raise ValueError(f"{name} must be positive, not {value}")


class HttpRequest:
    """One complete request: `headers` by lower-case name (repeated ones joined with ", "), `path`
    without the query, both as sent (percent-encoded)."""

    __slots__ = ("method", "path", "query", "headers", "body", "conn")

    def __init__(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes,
                 conn: object = None) -> None:
        self.method, self.path, self.query, self.headers, self.body = method, path, query, headers, body
        self.conn = conn  # the connection it came on (one request at a time: see DataPlane.track)


class HttpResponse:
    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(self, status: int, body: bytes, content_type: str = "application/json",
                 headers: dict[str, str] | None = None) -> None:
        self.status, self.body, self.content_type, self.headers = status, body, content_type, headers


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> HttpResponse:
    return HttpResponse(status, json.dumps({"error": message}, ensure_ascii=False).encode(), headers=headers)


class BodyError(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def decode_body(body: bytes, encoding: str, limit: int) -> bytes:
    """A request body sent with `Content-Encoding` (gzip, deflate), decompressed to at most `limit` bytes
    (a small body must not unpack into gigabytes); BodyError with the status (the module docstring)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        modes = (16 + zlib.MAX_WBITS,)
    elif encoding == "deflate":  # zlib-wrapped as the RFC says; some clients send it raw
        modes = (zlib.MAX_WBITS, -zlib.MAX_WBITS)
    else:
        raise BodyError(415, f"Content-Encoding {encoding[:40]!r} is not supported (gzip, deflate)")
    for mode in modes:
        d = zlib.decompressobj(mode)
        try:
            out = d.decompress(body, limit + 1)
        except zlib.error:
            continue
        if len(out) > limit:
            raise BodyError(413, f"request body larger than {limit} bytes once decompressed")
        if not d.eof:
            raise BodyError(400, f"request body: truncated {encoding} data")
        return out
    raise BodyError(400, f"request body is not valid {encoding} data")


REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}  # the status line's, by status


def render(resp: HttpResponse, rid: str, keep_alive: bool, head_only: bool = False) -> bytes:
    """The answer's bytes on the wire: status line, headers, body (none for HEAD, with the GET's length)."""
    lines = [b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nX-Request-Id: %s\r\n"
             % (resp.status, REASONS.get(resp.status, b"Unknown"), resp.content_type.encode("latin-1"),
                len(resp.body), rid.encode("latin-1"))]
    if resp.headers:
        lines += [b"%s: %s\r\n" % (k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers.items()]
    lines.append(b"\r\n" if keep_alive else b"Connection: close\r\n\r\n")
    if not head_only:
        lines.append(resp.body)
    return b"".join(lines)


# The connection's states: IDLE -> HEAD -> BODY -> IDLE per request; REFUSED (an error answer instead of
# the rest, the input dropped until it closes) and CLOSED (the transport gone) are final.
IDLE, HEAD, BODY, REFUSED, CLOSED = range(5)
LINGER_SECONDS = 2.0  # after a refusal, how long the rest of the input is read and dropped


class HttpConnection(asyncio.Protocol):
    """One client connection. The reader is the parser's callbacks; the writer is `_answer`, running
    (`answering`) while read requests are owed answers (`pending`), answering them in order."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.limits = server.limits
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.state = IDLE
        self.deadline = 0.0  # time.monotonic(); the server's sweep calls expire() once it has passed
        # read ahead, owed an answer: (request, keep-alive, request id, its bytes counted in pending_bytes)
        self.pending: collections.deque[tuple[HttpRequest, bool, str, int]] = collections.deque()
        self.pending_bytes = 0
        self.reading_paused = False
        self.answering = False  # the writer (_answer) runs: the requests read are being answered
        self.writable: asyncio.Future | None = None  # set while the client does not read its answers
        self._head_bytes = 0
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._fields = 0
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._size = 0

    # ---- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # kept: asyncio.get_running_loop() costs a getpid() system call per call on Python 3.11
        self.loop = asyncio.get_running_loop()
        self.server.connections.add(self)
        self.deadline = time.monotonic() + self.limits.header_timeout  # silent from the start

    def data_received(self, data: bytes) -> None:
        if self.state >= REFUSED:
            return
        if self.state != BODY:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(501, "protocol upgrades (websocket, h2c) are not supported")
            return
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed HTTP request: {exc}")  # unless a callback refused already
            return
        # A head still incomplete is buffered by the parser: bound it here.
        if self.state == HEAD and self._head_bytes > self.limits.max_request_line + self.limits.max_header_bytes:
            self._refuse(431, f"request headers larger than {self.limits.max_header_bytes} bytes")
        elif self.pending and not self.answering and self.state < REFUSED:  # what this read completed
            self._start_answering()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self.pending.clear()  # the request being answered finishes (its data plane accounting too)
        self.server.connections.discard(self)
        self.resume_writing()  # a writer waiting for the client to read goes on (and finds it gone)

    def pause_writing(self) -> None:
        if self.writable is None or self.writable.done():
            self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

    # ---- httptools callbacks (the reader) ---------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()
        self.state = HEAD
        self.deadline = time.monotonic() + self.limits.header_timeout

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_request_line:
            self._refuse(414, f"request target longer than {self.limits.max_request_line} bytes")
            raise httptools.HttpParserError("request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        self._header_bytes += len(name) + len(value) + 4
        if self._fields > self.limits.max_header_fields:
            self._refuse(431, f"more than {self.limits.max_header_fields} header fields")
            raise httptools.HttpParserError("too many headers")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        seen = self._headers.get(key)
        self._headers[key] = text if seen is None else f"{seen}, {text}"

    def on_headers_complete(self) -> None:
        self._head_bytes = 0
        if self._header_bytes > self.limits.max_header_bytes:
            self._refuse(431, f"request headers larger than {self.limits.max_header_bytes} bytes")
            raise httptools.HttpParserError("headers too large")
        length = self._headers.get("content-length", "").strip()
        if length.isdigit() and int(length) > self.limits.max_body_bytes:
            self._refuse(413, f"request body larger than {self.limits.max_body_bytes} bytes")
            raise httptools.HttpParserError("body too large")
        if self._headers.get("expect", "").strip().lower() == "100-continue":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]
        self.state = BODY
        self.deadline = time.monotonic() + self.limits.body_timeout

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.limits.max_body_bytes:  # chunked, or more than its Content-Length said
            self._refuse(413, f"request body larger than {self.limits.max_body_bytes} bytes")
            raise httptools.HttpParserError("body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.state = IDLE
        self.deadline = 0.0  # working: no client deadline until the answer is written
        parser = self.parser
        path, _, query = self._url.decode("latin-1").partition("?")
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        req = HttpRequest(parser.get_method().decode("latin-1"), path, query, self._headers, body, self)
        size = len(body) + len(self._url)
        self.pending.append((req, parser.should_keep_alive(), request_id(self._headers.get("x-request-id")), size))
        self.pending_bytes += size
        self._body = []
        if not self.reading_paused and (len(self.pending) >= MAX_PIPELINED
                                        or self.pending_bytes >= MAX_PIPELINED_BYTES):
            self.reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    # ---- the writer -------------------------------------------------------------------------
    def _start_answering(self) -> None:
        """Start the writer. A lone request (no other connection's writer running) is answered at once, in
        this callback, as far as it goes without waiting, as Python 3.12's eager tasks do: an answer that
        needs no wait (a request to a model run on the loop's thread, an error) is written before
        data_received returns, with no task and no turn of the loop (LAC at batch 1: ~5 us less of the
        replica's ~60 us in process); once it must wait, a task takes it over from the future it waits on.
        Among concurrent requests, which wait for their batch, that hand-over cost more than it saved
        (-5 % requests/s batched): they start as tasks, as with tracing on (spans live in a task's context)."""
        self.answering = True
        self.server.writers += 1
        if tracing.ON or self.server.writers > 1:
            self.loop.create_task(self._answer())
            return
        coro = self._answer()
        try:
            waiting = coro.send(None)
        except StopIteration:  # answered (the writer's own finally has run)
            return
        if waiting is None:  # a bare yield (asyncio.sleep(0)): go on at the next turn of the loop
            self.loop.call_soon(self.loop.create_task, coro)
            return
        # an asyncio future (what a coroutine's await yields): the task resumes the writer once it is done
        waiting._asyncio_future_blocking = False
        waiting.add_done_callback(lambda _: self.loop.create_task(coro))

    async def _answer(self) -> None:
        transport = self.transport
        assert transport is not None
        try:
            while self.pending and self.state < REFUSED:
                req, keep_alive, rid, size = self.pending.popleft()
                self.pending_bytes -= size
                try:
                    encoding = req.headers.get("content-encoding")
                    if encoding is not None:
                        req.body = decode_body(req.body, encoding, self.limits.max_body_bytes)
                    resp = await self.server.api(req, rid)
                except BodyError as exc:
                    resp = error_response(exc.status, str(exc))
                except Exception:  # the API answers its own errors: this is a bug
                    log.exception("request %s failed in the HTTP server", rid)
                    resp, keep_alive = error_response(500, "internal error (logged)"), False
                if self.state >= REFUSED:
                    return
                keep_alive = keep_alive and not self.server.closing
                transport.write(render(resp, rid, keep_alive, req.method == "HEAD"))
                if not keep_alive:
                    transport.close()
                    return
                if self.reading_paused and len(self.pending) < MAX_PIPELINED // 2 \
                        and self.pending_bytes < MAX_PIPELINED_BYTES // 2:
                    self.reading_paused = False
                    transport.resume_reading()
                if self.writable is not None:
                    # A client that does not read its answers gets no more; closed after the idle timeout
                    # (aborted: a close would wait for the unread bytes to be flushed, that is for ever).
                    try:
                        await asyncio.wait_for(self.writable, self.limits.idle_timeout)
                    except TimeoutError:
                        transport.abort()
                        return
                    self.writable = None
        finally:
            self.answering = False
            self.server.writers -= 1
            if self.state == IDLE and not self.pending:
                self.deadline = time.monotonic() + self.limits.idle_timeout
            if self.server.closing:  # close() waits for the writers that are left
                self.server.settled.set()

    def expire(self) -> None:
        """The deadline passed: a slow client gets 408; an idle or silent connection is closed."""
        self.deadline = 0.0
        if self.state == HEAD:
            self._refuse(408, f"request headers not received within {self.limits.header_timeout:g}s")
        elif self.state == BODY:
            self._refuse(408, f"request body not received within {self.limits.body_timeout:g}s")
        elif self.state == IDLE and not self.answering and self.transport is not None:
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer (instead of anything still queued) and close; read and drop the rest for a moment so
        the client sees the answer rather than a reset."""
        if self.state >= REFUSED:
            return
        self.state = REFUSED
        self.deadline = 0.0
        self.pending.clear()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        rid = request_id(self._headers.get("x-request-id"))
        transport.write(render(error_response(status, message), rid, False))
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)


class HttpServer:
    """Owns the listener and its connections; `api(request, request_id)` answers each request."""

    def __init__(self, api: Callable[[HttpRequest, str], Awaitable[HttpResponse]], limits: HttpLimits) -> None:
        self.api = api
        self.limits = limits
        self.connections: set[HttpConnection] = set()
        self.writers = 0  # connections whose writer runs (answering)
        self.closing = False  # answers carry `Connection: close` from now on
        self.settled = asyncio.Event()  # closing: a connection's writer ended
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task | None = None

    def protocol(self) -> HttpConnection:
        """A connection of this server (the listener's protocol factory)."""
        return HttpConnection(self)

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.protocol, host, port, reuse_address=True)
        self._sweeper = loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            self.expire_due(time.monotonic())

    def expire_due(self, now: float) -> None:
        for conn in [c for c in self.connections if 0.0 < c.deadline <= now]:
            conn.expire()

    async def close(self, timeout: float = 5.0) -> None:
        """Stop listening, close idle connections, let the ones owed an answer finish (at most
        `timeout` seconds), then close everything."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for conn in list(self.connections):
                if not conn.answering and not conn.pending and conn.transport is not None:
                    conn.transport.close()
            left = deadline - loop.time()
            if left <= 0 or not any(c.answering or c.pending for c in self.connections):
                break
            self.settled.clear()
            with contextlib.suppress(TimeoutError):  # past the deadline: the next round ends the wait
                await asyncio.wait_for(self.settled.wait(), left)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
