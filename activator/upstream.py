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
from collections.abc import Callable, Iterable
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


Outcome = Answer | BaseException  # a whole answer, or why there is none (Broken, Failure, TimeoutError, cancelled)
Deliver = Callable[[Outcome], None]


class Exchange(asyncio.Protocol):
    """One keep-alive connection to a replica (to `addr`, pooled by `pool`), one exchange at a time.

    `send` writes a request; its outcome is handed over exactly once (`_hand_over`): the connection first
    goes back to the pool (a whole keep-alive answer) or is closed (anything else: never reused), the
    timer stops, then `deliver(outcome)` runs. A whole answer is handed over once the read that completed
    it has been parsed (its delivery may send the next request on this very connection); a failure at
    once, the connection closed."""

    def __init__(self, pool: UpstreamPool, addr: tuple[str, int], loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.addr = addr
        self.budget = pool.budget
        self.loop = loop  # kept: asyncio.get_running_loop() costs a getpid() system call per call on 3.11
        self.max_answer = pool.max_answer_bytes
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._deliver: Deliver | None = None  # the exchange in progress (None: idle)
        self._outcome: Outcome | None = None  # its outcome, not handed over yet
        self._timer: asyncio.TimerHandle | None = None
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
        if self._deliver is None:
            self.close()  # bytes nobody asked for: this connection cannot be trusted any more
            return
        try:
            self._parser.feed_data(data)  # type: ignore[union-attr]
        except httptools.HttpParserError as exc:
            self._fail(Broken(f"invalid HTTP from the replica: {exc}"))
            return
        if self._outcome is not None:
            self._hand_over()  # the answer is whole
        elif self._answer is None:  # all of it was head, and the head is not over yet
            self._head_bytes += len(data)
            if self._head_bytes > MAX_ANSWER_HEAD_BYTES:
                self._fail(Broken(f"its answer's head is larger than {MAX_ANSWER_HEAD_BYTES} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._deliver is None:
            return
        if self._answer is not None and not self._length_known:
            self._finish(keep_alive=False)  # read-until-close body: EOF ends it
        if self._outcome is not None:
            self._hand_over()
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
        """The answer is whole: its outcome, handed over by the caller once the parser is done with it."""
        answer = self._answer
        if self._deliver is None or self._outcome is not None or answer is None:
            return
        answer.body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        answer.keep_alive = keep_alive
        answer.charged, self._charged = self._charged, 0
        self._body = []
        self._outcome = answer

    def _fail(self, exc: BaseException) -> None:
        """No answer (or no more of this connection): closed, and `exc` handed over unless an outcome was
        already decided (a whole answer followed by bytes nobody asked for keeps its answer)."""
        if self._deliver is not None and self._outcome is None:
            self._outcome = exc
        self.close()
        self._hand_over()

    def _hand_over(self) -> None:
        """Between calls into this connection no outcome waits: each call that decides one hands it over."""
        deliver, outcome = self._deliver, self._outcome
        if deliver is None or outcome is None:
            return
        self._deliver = self._outcome = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if type(outcome) is Answer and outcome.keep_alive and not self.closed:
            self.pool.give_back(self)
        else:
            self.close()
        deliver(outcome)

    def expire(self) -> None:
        """No whole answer within the exchange's timeout."""
        self._timer = None
        self._fail(TimeoutError())

    def cancel(self, deliver: Deliver | None = None) -> None:
        """Abandon the exchange in progress (its client left; with `deliver`: only if it is still that
        exchange's): the connection is closed, the outcome is a CancelledError."""
        if self._deliver is not None and (deliver is None or deliver is self._deliver):
            self._fail(asyncio.CancelledError())

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def send(self, request: list[bytes], head_only: bool, timeout: float | None, deliver: Deliver) -> Exchange:
        """Write `request`; `deliver(outcome)` gets the whole answer, or Broken, or TimeoutError after
        `timeout` seconds, or a CancelledError (`cancel`). Returns this exchange (what `cancel` abandons)."""
        assert self.transport is not None and self._deliver is None
        self._deliver = deliver
        self._head_only = head_only
        self._answer, self._body, self._headers, self._hop, self._reason = None, [], [], frozenset(), b""
        self._size = self._charged = self._head_bytes = self._field_bytes = 0
        self._length_known = False
        if self._parser is None or head_only:  # a keep-alive connection's parser goes on to its next answer
            self._parser = httptools.HttpResponseParser(self)
        # A timer handle, not asyncio.timeout: nothing to undo in a task, and a quarter the cost.
        self._timer = None if timeout is None else self.loop.call_later(timeout, self.expire)
        self.transport.writelines(request)
        return self

    def close(self) -> None:
        self.closed = True
        # The bytes of an answer not handed over (cut by the deadline or the client leaving) go back.
        self.budget.give(self._charged)
        self._charged = 0
        self._body = []
        if self.transport is not None:
            self.transport.close()


def _resolve(fut: asyncio.Future[Answer], outcome: Outcome) -> None:
    """`exchange`'s way to be delivered an outcome: its awaited future (unless its task was cancelled)."""
    if fut.done():
        return
    if type(outcome) is Answer:
        fut.set_result(outcome)
    else:
        fut.set_exception(outcome)  # type: ignore[arg-type]


class UpstreamPool:
    """Idle keep-alive connections per replica address."""

    def __init__(self, budget: ByteBudget | None = None, max_answer_bytes: int = 64 * 1024 * 1024) -> None:
        self.budget = budget or ByteBudget(1 << 62)
        self.max_answer_bytes = max_answer_bytes
        self._idle: dict[tuple[str, int], collections.deque[Exchange]] = {}

    def take_idle(self, addr: tuple[str, int]) -> Exchange | None:
        """A pooled keep-alive connection to `addr` still open, or None."""
        q = self._idle.get(addr)
        while q:
            conn = q.pop()
            if conn.usable():
                return conn
            conn.close()  # found closed before writing: dropped quietly, the request is still unsent
        return None

    def give_back(self, conn: Exchange) -> None:
        q = self._idle.get(conn.addr)
        if q is None:
            q = self._idle[conn.addr] = collections.deque()
        if len(q) >= MAX_IDLE_PER_REPLICA:
            conn.close()
        else:
            q.append(conn)

    async def exchange(self, host: str, port: int, request: list[bytes], head_only: bool = False,
                       timeout: float | None = None) -> Answer:
        """Send one request, return the whole answer within `timeout` seconds (the caller gives
        `answer.charged` back to the budget once written). NotSent: nothing was written; Broken: written,
        and then it failed; TimeoutError: no whole answer in time (connecting included)."""
        addr = (host, port)
        conn = self.take_idle(addr) or await self._connect(addr, timeout)
        fut: asyncio.Future[Answer] = conn.loop.create_future()
        deliver = functools.partial(_resolve, fut)
        conn.send(request, head_only, timeout, deliver)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.budget.give(fut.result().charged)  # answered as we were cancelled
            conn.cancel(deliver)  # still in progress: the connection is closed, never reused
            raise

    async def _connect(self, addr: tuple[str, int], timeout: float | None) -> Exchange:
        loop = asyncio.get_running_loop()
        limit = CONNECT_TIMEOUT if timeout is None else min(CONNECT_TIMEOUT, timeout)
        try:
            async with asyncio.timeout(limit):
                transport, conn = await loop.create_connection(lambda: Exchange(self, addr, loop), *addr)
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
        self.prune(())
