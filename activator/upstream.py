"""HTTP/1.1 client side of the activator's proxy: keep-alive connections to replicas, one exchange at a
time per connection, responses parsed with httptools and buffered whole (so a failure is still a clean
502). Used by activator.http_proxy; replicas come from the throttler."""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

import httptools

MAX_IDLE_PER_REPLICA = 256


class ConnectFailed(Exception):
    """The replica refused or reset the connection before sending a byte: safe to retry elsewhere."""


class AnswerBroken(Exception):
    """The replica's answer started but did not complete (it died, or sent bad HTTP)."""


@dataclass
class Answer:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    keep_alive: bool = True


class _Exchange(asyncio.Protocol):
    """One keep-alive connection to a replica."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._fut: asyncio.Future[Answer] | None = None
        self._head_only = False
        self._got_bytes = False
        self._answer: Answer | None = None
        self._body: list[bytes] = []
        self._parser: httptools.HttpResponseParser | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._length_known = False

    # ---- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._fut is None or self._fut.done():
            self.close()  # bytes nobody asked for: this connection cannot be trusted any more
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)  # type: ignore[union-attr]
        except httptools.HttpParserError as exc:
            self._fail(AnswerBroken(f"invalid HTTP from the replica: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._fut is None or self._fut.done():
            return
        if self._answer is not None and not self._length_known:
            self._finish(keep_alive=False)  # read-until-close body: EOF ends it
        elif self._got_bytes:
            self._fail(AnswerBroken("the replica closed the connection in the middle of its answer"))
        else:
            self._fail(ConnectFailed(f"connection closed before any answer ({exc or 'EOF'})"))

    # ---- httptools callbacks ----------------------------------------------------------------
    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        p = self._parser
        assert p is not None
        self._answer = Answer(p.get_status_code(), self._reason, self._headers)
        names = {n.lower() for n, _ in self._headers}
        self._length_known = b"content-length" in names or b"transfer-encoding" in names or \
            self._answer.status in (204, 304) or 100 <= self._answer.status < 200
        if self._head_only:
            self._length_known = True
            self._finish(keep_alive=False)  # the parser would wait for a body: do not reuse

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        p = self._parser
        self._finish(keep_alive=bool(p and p.should_keep_alive()))

    # ---- use --------------------------------------------------------------------------------
    def _finish(self, keep_alive: bool) -> None:
        if self._fut is None or self._fut.done() or self._answer is None:
            return
        self._answer.body = b"".join(self._body)
        self._answer.keep_alive = keep_alive
        self._fut.set_result(self._answer)

    def _fail(self, exc: Exception) -> None:
        if self._fut is not None and not self._fut.done():
            self._fut.set_exception(exc)
        self.close()

    def send(self, request: list[bytes], head_only: bool) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self._fut = asyncio.get_running_loop().create_future()
        self._head_only = head_only
        self._got_bytes = False
        self._answer, self._body, self._headers, self._reason = None, [], [], b""
        self._length_known = False
        self._parser = httptools.HttpResponseParser(self)
        self.transport.writelines(request)
        return self._fut

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UpstreamPool:
    """Idle keep-alive connections per replica address."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], collections.deque[_Exchange]] = {}

    def _take(self, addr: tuple[str, int]) -> _Exchange | None:
        q = self._idle.get(addr)
        while q:
            conn = q.pop()
            if not conn.closed:
                return conn
        return None

    def _give_back(self, addr: tuple[str, int], conn: _Exchange) -> None:
        q = self._idle.setdefault(addr, collections.deque())
        if len(q) >= MAX_IDLE_PER_REPLICA:
            conn.close()
        else:
            q.append(conn)

    async def exchange(self, host: str, port: int, request: list[bytes], head_only: bool = False) -> Answer:
        """Send one request, return the whole answer. ConnectFailed: nothing reached the replica's
        answer (connection refused/reset); AnswerBroken: it started answering and failed."""
        addr = (host, port)
        conn = self._take(addr)
        if conn is not None:
            try:
                return await self._use(addr, conn, request, head_only)
            except ConnectFailed:
                pass  # an idle connection the replica had closed: try a new one once
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(_Exchange, host, port)
        except OSError as exc:
            raise ConnectFailed(str(exc) or type(exc).__name__) from exc
        return await self._use(addr, conn, request, head_only)

    async def _use(self, addr: tuple[str, int], conn: _Exchange, request: list[bytes], head_only: bool) -> Answer:
        ok = False
        try:
            answer = await conn.send(request, head_only)
            ok = True
        finally:
            if not ok:
                conn.close()  # cancelled (client gone, deadline) or failed: never reuse
        if answer.keep_alive and not conn.closed:
            self._give_back(addr, conn)
        else:
            conn.close()
        return answer

    def close(self) -> None:
        for q in self._idle.values():
            for conn in q:
                conn.close()
        self._idle.clear()
