"""The activator's HTTP/1.1 front door: an asyncio protocol that parses requests with httptools,
resolves the service by Host, takes a replica slot (waiting while the side scales from zero) and
forwards the buffered request over activator.upstream; answers go back in order per connection.

Errors are JSON `{"error": ...}`: 400 malformed HTTP, 404 unknown host, 413 body too large,
503 no replica in time / queue full (Retry-After), 502 replica failed, 504 replica too slow.
"""

from __future__ import annotations

import asyncio
import collections
import http
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httptools

from activator.routing import normalize_host
from activator.throttler import Unavailable
from activator.upstream import AnswerBroken, ConnectFailed, UpstreamPool

if TYPE_CHECKING:
    from activator.server import Activator

log = logging.getLogger("elasticserving.activator")

CANARY_HEADER = "x-paddleservice-canary"
SIDE_HEADER = b"x-paddleservice-side"
# Not forwarded either way: connection-level headers, and the ones the proxy sets itself.
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
              b"trailers", b"transfer-encoding", b"upgrade", b"host", b"content-length", b"expect",
              b"proxy-connection"}
MAX_PIPELINED = 32  # requests read ahead on one connection before reading pauses
LINGER_SECONDS = 2.0  # after refusing a body, how long its remaining bytes are read and dropped


@dataclass
class Request:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    keep_alive: bool
    peer: str

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


@dataclass
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    reason: bytes = b""

    def render(self, keep_alive: bool) -> list[bytes]:
        reason = self.reason or _reason(self.status)
        out = [b"HTTP/1.1 %d %s\r\n" % (self.status, reason)]
        out += [b"%s: %s\r\n" % kv for kv in self.headers]
        out.append(b"Content-Length: %d\r\n" % len(self.body))
        if not keep_alive:
            out.append(b"Connection: close\r\n")
        out.append(b"\r\n")
        out.append(self.body)
        return out


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


def error(status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> Reply:
    body = json.dumps({"error": message}, ensure_ascii=False).encode()
    return Reply(status, [(b"Content-Type", b"application/json; charset=utf-8"), *(headers or [])], body)


class FrontConnection(asyncio.Protocol):
    """One client connection: parse requests, answer them in order, release everything on disconnect."""

    def __init__(self, proxy: HttpProxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: collections.deque[Request] = collections.deque()
        self.worker: asyncio.Task | None = None
        self.closed = False
        self.refusing = False  # a 413 was sent: drop the rest of the input, then close
        self.paused = False
        self.peer = ""
        self._reset()

    def _reset(self) -> None:
        self._target = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0

    # ---- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""

    def data_received(self, data: bytes) -> None:
        if self.refusing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(error(501, "protocol upgrades (websocket, h2c) are not supported"))
        except httptools.HttpParserError as exc:
            self._refuse(error(400, f"malformed HTTP request: {exc}"))

    # EOF from the client closes the connection (asyncio's default eof_received): a client that leaves
    # and one that only half-closes look the same, and a leaving client must free its slot at once.
    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.worker is not None:
            self.worker.cancel()  # the client left: free its replica slot or its place in the queue

    # ---- httptools callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self._target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        limit = self.proxy.max_body_bytes
        for k, v in self._headers:
            lk = k.lower()
            if lk == b"content-length" and v.strip().isdigit() and int(v) > limit:
                self._refuse(error(413, f"request body larger than {limit} bytes"))
                return
            if lk == b"expect" and v.strip().lower() == b"100-continue" and self.transport is not None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.refusing:
            return
        self._size += len(body)
        if self._size > self.proxy.max_body_bytes:
            self._refuse(error(413, f"request body larger than {self.proxy.max_body_bytes} bytes"))
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self.refusing:
            return
        self.pending.append(Request(self.parser.get_method(), self._target, self._headers, b"".join(self._body),
                                    self.parser.should_keep_alive(), self.peer))
        self._reset()
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._work())
        if len(self.pending) >= MAX_PIPELINED and self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    # ---- answering --------------------------------------------------------------------------
    async def _work(self) -> None:
        try:
            while self.pending and not self.closed:
                req = self.pending.popleft()
                reply = await self.proxy.serve(req)
                if self.closed or self.transport is None:
                    return
                self.transport.writelines(reply.render(req.keep_alive))
                if not req.keep_alive:
                    self.transport.close()
                    return
                if self.paused and len(self.pending) < MAX_PIPELINED // 2:
                    self.paused = False
                    self.transport.resume_reading()
        finally:
            self.worker = None

    def _refuse(self, reply: Reply) -> None:
        """Answer (after what is already queued) and close; read and drop the rest for a moment so the
        client sees the answer rather than a reset."""
        if self.refusing or self.transport is None:
            return
        self.refusing = True
        self.pending.clear()
        if self.worker is not None:
            self.worker.cancel()
        self.transport.writelines(reply.render(keep_alive=False))
        transport = self.transport
        if hasattr(transport, "write_eof") and transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)


class HttpProxy:
    """The request path: route, pick a side, acquire a replica, forward (retry once), account."""

    def __init__(self, act: Activator) -> None:
        self.act = act
        self.max_body_bytes: int = act.args.max_body_bytes
        self.pool = UpstreamPool()

    def protocol(self) -> FrontConnection:
        return FrontConnection(self)

    async def serve(self, req: Request) -> Reply:
        act = self.act
        target = req.target
        if target.startswith((b"http://", b"https://")):  # absolute-form: keep the path only
            url = httptools.parse_url(target)
            target = (url.path or b"/") + (b"?" + url.query if url.query else b"")
        host = (req.header(b"host") or b"").decode("latin-1")
        route = act.hosts.resolve(host)
        if route is None:
            path = target.split(b"?", 1)[0]
            if path == b"/metrics":
                body, ctype = act.metrics_body()
                return Reply(200, [(b"Content-Type", ctype.encode())], body)
            if path == b"/healthz":
                return Reply(200, [(b"Content-Type", b"application/json")],
                             json.dumps(act.health()).encode())
            return error(404, f"no PaddleService serves host {normalize_host(host)!r}")
        key = route["service"]
        pin = (req.header(CANARY_HEADER.encode()) or b"").decode("latin-1")
        side = act.pick_side(route, pin)
        if side is None:
            return error(400, f"{CANARY_HEADER}: true needs a canary, and {key} has none")
        m = act.metrics.side(key, side)
        t0 = time.monotonic()
        code = 500
        try:
            reply = await self._forward(req, target, host, key, side, t0, m)
            code = reply.status
            return reply
        except Unavailable as exc:
            code = 503
            headers = [(b"Retry-After", str(exc.retry_after).encode())] if exc.retry_after else None
            act.metrics.rejections.labels(key, side, "queue_full" if exc.retry_after else "unavailable").inc()
            return error(503, exc.reason, headers)
        except asyncio.CancelledError:
            code = 499  # client went away
            raise
        finally:
            m.count(code)
            m.latency.observe(time.monotonic() - t0)

    def _upstream_request(self, req: Request, target: bytes, host: str, backend_addr: bytes) -> list[bytes]:
        head = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (req.method, target, backend_addr)]
        head += [b"%s: %s\r\n" % (k, v) for k, v in req.headers if k.lower() not in HOP_BY_HOP]
        head.append(b"X-Forwarded-Host: %s\r\nX-Forwarded-For: %s\r\nContent-Length: %d\r\n\r\n"
                    % (host.encode("latin-1"), req.peer.encode(), len(req.body)))
        return [b"".join(head), req.body]

    async def _forward(self, req: Request, target: bytes, host: str, key: str, side: str, t0: float,
                       m: Any) -> Reply:
        act = self.act
        t = act.throttler(key, side)
        t.requests += 1
        deadline = t0 + act.args.request_timeout
        tried: set[str] = set()
        head_only = req.method == b"HEAD"
        for attempt in (1, 2):
            waited_from = time.monotonic()
            if not t.backends or not any(b.healthy for b in t.backends.values()):
                act.ensure_poking(t)
            backend = await t.acquire(max(0.0, deadline - time.monotonic()), frozenset(tried))
            waited = time.monotonic() - waited_from
            if waited > 0.005:
                m.cold_start.observe(waited)
            try:
                sent = time.monotonic()
                addr = b"%s:%d" % (backend.host.encode(), backend.http_port)
                answer = await asyncio.wait_for(
                    self.pool.exchange(backend.host, backend.http_port,
                                       self._upstream_request(req, target, host, addr), head_only),
                    max(0.001, deadline - time.monotonic()))
                m.proxy_latency.observe(time.monotonic() - sent)
                headers = [(k, v) for k, v in answer.headers if k.lower() not in HOP_BY_HOP]
                headers.append((SIDE_HEADER, side.encode()))
                return Reply(answer.status, headers, answer.body, answer.reason)
            except ConnectFailed as exc:
                t.mark(backend, False)
                tried.add(backend.id)
                if attempt == 2 or time.monotonic() >= deadline:
                    return error(502, f"replica {backend.id} of {key} ({side}) failed before answering: {exc}")
                m.retries.inc()
            except AnswerBroken as exc:
                return error(502, f"replica {backend.id} of {key} ({side}) failed while answering: {exc}")
            except TimeoutError:
                return error(504, f"replica {backend.id} of {key} ({side}) did not answer within "
                                  f"{act.args.request_timeout:g}s")
            finally:
                t.release(backend)
        return error(502, f"no replica of {key} ({side}) could answer")

    def close(self) -> None:
        self.pool.close()
