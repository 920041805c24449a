"""HTTP/1.1 client side of the HTTP front door: keep-alive connections to replicas, one exchange at a
time per connection, answers parsed with httptools and buffered whole (so a failure is still a clean
502), bounded by the answer size limit, a head's size and field count, and the process-wide byte
budget.

Retry safety lives in the exception types: `NotSent` only when nothing was written (connect failed, or
the pooled connection was found closed before writing); anything after the write is `Broken`.
A replica whose node died is found by the connect timeout (nothing sent: retried elsewhere) and, for an
exchange already sent, by TCP keepalive (a clear 502 within seconds, never a wait for the deadline).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

import httptools

from activator.limits import ByteBudget
from activator.outcomes import Broken, Failure, NotSent

MAX_IDLE_PER_REPLICA = 256
# Replicas are one network hop away: a connect that takes a second is a dead node or a lost SYN, and
# either way is better retried on another replica (nothing was sent) than waited for.
CONNECT_TIMEOUT = 1.0
# A sent request on a connection whose peer vanished (node powered off, network cut) sees no RST: the
# kernel ends it after ~3 s of unanswered keepalive probes or unacknowledged data.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 1, 1, 2
USER_TIMEOUT_MS = 3000


def _detect_dead_peers(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                       ("TCP_KEEPCNT", KEEPALIVE_COUNT), ("TCP_USER_TIMEOUT", USER_TIMEOUT_MS)):
        if hasattr(socket, opt):  # Linux; elsewhere the request deadline still bounds the wait
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)


FRAMING = (b"content-length", b"transfer-encoding")  # headers that say where an answer's body ends
# An answer's head (status line and headers): replicas run users' images, and the parser keeps a head's
# pieces in memory until it is complete, so it is bounded as a client's is (as Envoy: 60 KiB, 100 fields).
MAX_ANSWER_HEAD_BYTES = 64 * 1024
MAX_ANSWER_HEADER_FIELDS = 100


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """The header names a Connection header lists (lower-case): hop-by-hop, never forwarded."""
    return frozenset(t.strip().lower() for t in value.split(b",") if t.strip())


@dataclass(slots=True)
class Answer:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes, bytes]] = field(default_factory=list)  # (lower-case name, name, value)
    hop: frozenset[bytes] = frozenset()  # the header names its Connection header lists
    body: bytes = b""
    keep_alive: bool = True
    charged: int = 0  # bytes of the budget this answer holds until the front door has written it


class _Exchange(asyncio.Protocol):
    """One keep-alive connection to a replica."""

    def __init__(self, budget: ByteBudget, max_answer: int, loop: asyncio.AbstractEventLoop) -> None:
        self.budget = budget
        self.loop = loop  # kept: asyncio.get_running_loop() costs a getpid() system call per call on 3.11
        self.max_answer = max_answer
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._fut: asyncio.Future[Answer] | None = None
        self._head_only = False
        self._answer: Answer | None = None
        self._body: list[bytes] = []
        self._size = 0  # body bytes of the answer
        self._head_bytes = 0  # bytes of a head not complete yet
        self._field_bytes = 0  # bytes of its complete header fields
        self._charged = 0
        self._parser: httptools.HttpResponseParser | None = None
        self._headers: list[tuple[bytes, bytes, bytes]] = []
        self._hop: frozenset[bytes] = frozenset()
        self._reason = b""
        self._length_known = False  # a framing header seen, or an answer that has no body

    # ---- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._fut is None or self._fut.done():
            self.close()  # bytes nobody asked for: this connection cannot be trusted any more
            return
        try:
            self._parser.feed_data(data)  # type: ignore[union-attr]
        except httptools.HttpParserError as exc:
            self._fail(Broken(f"invalid HTTP from the replica: {exc}"))
            return
        if self._answer is None:  # all of it was head, and the head is not over yet
            self._head_bytes += len(data)
            if self._head_bytes > MAX_ANSWER_HEAD_BYTES:
                self._fail(Broken(f"its answer's head is larger than {MAX_ANSWER_HEAD_BYTES} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._fut is None or self._fut.done():
            return
        if self._answer is not None and not self._length_known:
            self._finish(keep_alive=False)  # read-until-close body: EOF ends it
        elif self._answer is not None:
            self._fail(Broken("the replica closed the connection in the middle of its answer"))
        else:
            self._fail(Broken(f"the replica closed the connection before answering ({exc or 'EOF'})"))

    # ---- httptools callbacks ----------------------------------------------------------------
    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        # Counted field by field too: one read may hold a whole head (data_received counts after parsing it).
        self._field_bytes += len(name) + len(value) + 4
        if self._field_bytes > MAX_ANSWER_HEAD_BYTES:
            self._fail(Broken(f"its answer's head is larger than {MAX_ANSWER_HEAD_BYTES} bytes"))
            raise httptools.HttpParserError("head too large")  # stop parsing this connection
        if len(self._headers) >= MAX_ANSWER_HEADER_FIELDS:
            self._fail(Broken(f"its answer has more than {MAX_ANSWER_HEADER_FIELDS} header fields"))
            raise httptools.HttpParserError("too many header fields")
        lname = name.lower()
        self._headers.append((lname, name, value))
        if lname in FRAMING:
            self._length_known = True
        elif lname == b"connection":
            self._hop = self._hop | connection_tokens(value)

    def on_headers_complete(self) -> None:
        p = self._parser
        assert p is not None
        self._answer = Answer(p.get_status_code(), self._reason, self._headers, self._hop)
        status = self._answer.status
        self._length_known = self._length_known or status in (204, 304) or 100 <= status < 200
        if self._head_only:
            self._length_known = True
            self._finish(keep_alive=False)  # the parser would wait for a body: do not reuse

    def on_body(self, body: bytes) -> None:
        n = len(body)
        self._size += n
        if self._size > self.max_answer:
            self._fail(Broken(f"its answer is larger than {self.max_answer} bytes"))
            raise httptools.HttpParserError("answer too large")  # stop parsing this connection
        if not self.budget.take(n):
            self._fail(Failure("unavailable", "the activator is out of buffer memory for answers; retry"))
            raise httptools.HttpParserError("out of budget")
        self._charged += n
        self._body.append(body)

    def on_message_complete(self) -> None:
        p = self._parser
        self._finish(keep_alive=bool(p and p.should_keep_alive()))

    # ---- use --------------------------------------------------------------------------------
    def _finish(self, keep_alive: bool) -> None:
        if self._fut is None or self._fut.done() or self._answer is None:
            return
        self._answer.body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        self._answer.keep_alive = keep_alive
        self._answer.charged, self._charged = self._charged, 0
        self._body = []
        self._fut.set_result(self._answer)

    def _fail(self, exc: Exception) -> None:
        self.budget.give(self._charged)
        self._charged = 0
        self._body = []
        if self._fut is not None and not self._fut.done():
            self._fut.set_exception(exc)
        self.close()

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def send(self, request: list[bytes], head_only: bool) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self._fut = self.loop.create_future()
        self._head_only = head_only
        self._answer, self._body, self._headers, self._hop, self._reason = None, [], [], frozenset(), b""
        self._size = self._charged = self._head_bytes = self._field_bytes = 0
        self._length_known = False
        if self._parser is None or head_only:  # a keep-alive connection's parser goes on to its next answer
            self._parser = httptools.HttpResponseParser(self)
        self.transport.writelines(request)
        return self._fut

    def close(self) -> None:
        self.closed = True
        # The bytes of an answer not handed over (cut by the deadline or the client leaving) go back.
        self.budget.give(self._charged)
        self._charged = 0
        self._body = []
        if self.transport is not None:
            self.transport.close()


def _expire(pending: asyncio.Future) -> None:
    if not pending.done():
        pending.set_exception(TimeoutError())


class UpstreamPool:
    """Idle keep-alive connections per replica address."""

    def __init__(self, budget: ByteBudget | None = None, max_answer_bytes: int = 64 * 1024 * 1024) -> None:
        self.budget = budget or ByteBudget(1 << 62)
        self.max_answer_bytes = max_answer_bytes
        self._idle: dict[tuple[str, int], collections.deque[_Exchange]] = {}

    def take_idle(self, addr: tuple[str, int]) -> _Exchange | None:
        """A pooled keep-alive connection to `addr` still open, or None."""
        q = self._idle.get(addr)
        while q:
            conn = q.pop()
            if conn.usable():
                return conn
            conn.close()  # found closed before writing: dropped quietly, the request is still unsent
        return None

    def _give_back(self, addr: tuple[str, int], conn: _Exchange) -> None:
        q = self._idle.setdefault(addr, collections.deque())
        if len(q) >= MAX_IDLE_PER_REPLICA:
            conn.close()
        else:
            q.append(conn)

    def start(self, conn: _Exchange, addr: tuple[str, int], request: list[bytes], head_only: bool,
              timeout: float | None) -> asyncio.Future[Answer]:
        """Write `request` on `conn` (pooled, or just connected to `addr`); the future is the whole answer,
        or Broken, or TimeoutError after `timeout` seconds. Once it is done the connection goes back to the
        pool (a whole keep-alive answer) or is closed (failed, timed out, cancelled: never reused)."""
        pending = conn.send(request, head_only)
        # A timer handle, not asyncio.timeout: nothing to undo in a task, and a quarter the cost.
        timer = None if timeout is None else conn.loop.call_later(timeout, _expire, pending)
        pending.add_done_callback(functools.partial(self._settle, addr, conn, timer))
        return pending

    def _settle(self, addr: tuple[str, int], conn: _Exchange, timer: asyncio.TimerHandle | None,
                pending: asyncio.Future[Answer]) -> None:
        if timer is not None:
            timer.cancel()
        if not pending.cancelled() and pending.exception() is None and pending.result().keep_alive \
                and not conn.closed:
            self._give_back(addr, conn)
        else:
            conn.close()

    async def exchange(self, host: str, port: int, request: list[bytes], head_only: bool = False,
                       timeout: float | None = None) -> Answer:
        """Send one request, return the whole answer within `timeout` seconds (the caller gives
        `answer.charged` back to the budget once written). NotSent: nothing was written; Broken: written,
        and then it failed; TimeoutError: no whole answer in time (connecting included)."""
        addr = (host, port)
        conn = self.take_idle(addr) or await self._connect(addr, timeout)
        pending = self.start(conn, addr, request, head_only, timeout)
        try:
            return await pending
        except asyncio.CancelledError:
            if pending.done() and not pending.cancelled() and pending.exception() is None:
                self.budget.give(pending.result().charged)  # answered as we were cancelled
            raise

    async def _connect(self, addr: tuple[str, int], timeout: float | None) -> _Exchange:
        loop = asyncio.get_running_loop()
        limit = CONNECT_TIMEOUT if timeout is None else min(CONNECT_TIMEOUT, timeout)
        try:
            async with asyncio.timeout(limit):
                transport, conn = await loop.create_connection(
                    lambda: _Exchange(self.budget, self.max_answer_bytes, loop), *addr)
        except TimeoutError:
            if limit < CONNECT_TIMEOUT:
                raise  # the request's own deadline, not a replica that cannot be reached
            raise NotSent(f"no connection within {CONNECT_TIMEOUT:g}s") from None
        except OSError as exc:
            raise NotSent(str(exc) or type(exc).__name__) from exc
        sock = transport.get_extra_info("socket")
        if sock is not None:
            _detect_dead_peers(sock)
        return conn

    def prune(self, live: Iterable[tuple[str, int]]) -> None:
        """Close idle connections to replicas that are no longer routed."""
        keep = set(live)
        for addr in [a for a in self._idle if a not in keep]:
            for conn in self._idle.pop(addr):
                conn.close()

    def close(self) -> None:
        for q in self._idle.values():
            for conn in q:
                conn.close()
        self._idle.clear()
