"""The HTTP/1.1 front door: an asyncio protocol that parses requests with httptools within the limits of
activator.limits, turns each into a dispatcher `Call` plus a "send to this replica" callable (over
activator.upstream), and writes the answers back in order per connection.

Errors are JSON `{"error": ...}`: 400 malformed HTTP, 404 unknown host, 408 slow client, 413 body too
large, 414/431 request line/headers too large, 503 no replica in time / queue full / overloaded
(Retry-After), 502 replica failed, 504 replica too slow. Public: serves PaddleServices only (the admin
endpoints are on activator.admin's own listener).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import json
import logging
from collections.abc import Awaitable, Callable

import httptools

import runtime.tracing as otel
from activator.access_log import request_id
from activator.dispatcher import Call, Dispatcher, Started
from activator.limits import ByteBudget, FrontLimits
from activator.outcomes import Broken, Failure
from activator.throttler import Backend
from activator.upstream import Answer, Exchange, Outcome, UpstreamPool, connection_tokens
from runtime.errors import HTTP_STATUS
from runtime.protocols.http_server import REASONS

log = logging.getLogger("elasticserving.activator")

CANARY_HEADER = b"x-paddleservice-canary"
SIDE_HEADER = b"x-paddleservice-side"  # lower-case, as clients have always read it
REQUEST_ID = b"x-request-id"
# Not forwarded either way: connection-level headers, and the ones the proxy sets itself.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
                        b"trailer", b"trailers", b"transfer-encoding", b"upgrade", b"host", b"content-length",
                        b"expect", b"proxy-connection"})
# Set from the socket, never taken from the client.
SET_BY_PROXY = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", REQUEST_ID})
DROP_FORWARD = HOP_BY_HOP | SET_BY_PROXY
DROP_ANSWER = HOP_BY_HOP | {REQUEST_ID}  # the activator sets the request id of its answer
# With tracing on, the caller's trace context is replaced by the activator's own (its proxy span).
TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
DROP_FORWARD_TRACED = DROP_FORWARD | TRACE_HEADERS
DROP_ANSWER_TRACED = DROP_ANSWER | TRACE_HEADERS
MAX_PIPELINED = 32  # requests read ahead on one connection before reading pauses (also bounded by bytes)
LINGER_SECONDS = 2.0  # after refusing input, how long its remaining bytes are read and dropped
SWEEP_SECONDS = 0.5  # how often connection deadlines are checked
ABSOLUTE_FORM = (b"http://", b"https://")  # request targets that name a host (`origin_form` keeps the path)


class Request:
    __slots__ = ("method", "target", "headers", "body", "keep_alive", "peer", "host", "pin", "rid", "hop",
                 "charged")

    def __init__(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes, bytes]], body: bytes,
                 keep_alive: bool, peer: str, host: bytes, pin: bytes, rid: str, hop: frozenset[bytes],
                 charged: int) -> None:
        self.method, self.target, self.headers, self.body = method, target, headers, body
        self.keep_alive, self.peer, self.host, self.pin, self.rid = keep_alive, peer, host, pin, rid
        self.hop = hop  # header names listed in this request's Connection header
        self.charged = charged  # body bytes held in the budget until the answer is written


class Reply:
    __slots__ = ("status", "headers", "body", "reason", "charged")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, reason: bytes = b"",
                 charged: int = 0) -> None:
        self.status, self.headers, self.body, self.reason, self.charged = status, headers, body, reason, charged

    def render(self, keep_alive: bool, rid: bytes) -> list[bytes]:
        head = [b"HTTP/1.1 %d %s\r\n" % (self.status, self.reason or REASONS.get(self.status, b"Unknown"))]
        head += [b"%s: %s\r\n" % kv for kv in self.headers]
        head.append(b"X-Request-Id: %s\r\nContent-Length: %d\r\n%s\r\n"
                    % (rid, len(self.body), b"" if keep_alive else b"Connection: close\r\n"))
        return [b"".join(head), self.body]


def error(status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> Reply:
    body = json.dumps({"error": message}, ensure_ascii=False).encode()
    return Reply(status, [(b"Content-Type", b"application/json; charset=utf-8"), *(headers or [])], body)


def origin_form(target: bytes) -> bytes:
    """The path and query of a request target; an absolute-form target (`http://a/x`) keeps its path.
    Raises ValueError when it is not a valid URL."""
    if not target.startswith(ABSOLUTE_FORM):
        return target
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError as exc:
        raise ValueError(f"invalid request target: {exc}") from None
    return (url.path or b"/") + (b"?" + url.query if url.query else b"")


def _label(outcome: Answer | Failure) -> str:
    if isinstance(outcome, Failure):
        return str(HTTP_STATUS[outcome.code])
    return str(outcome.status)


class State(enum.IntEnum):
    """Where a client connection is. Ordered: from REFUSED on it answers nothing more."""

    IDLE = 0  # between requests: nothing of the next one read (deadline: header if fresh, idle once answered)
    HEAD = 1  # reading a request's line and headers (deadline: header, then 408)
    BODY = 2  # reading a request's body (deadline: body, then 408)
    REFUSED = 3  # an error answer is out: the rest of the input is dropped until the linger closes it
    CLOSED = 4  # the transport is gone


IDLE, HEAD, BODY, REFUSED, CLOSED = State


class FrontConnection(asyncio.Protocol):
    """One client connection: parse requests within the limits, answer them in order, release
    everything on disconnect.

    The reader is the parser callbacks (`state`: see State). The writer answers the read requests
    (`pending`) in order, one at a time: `worker` is the one being served, sent with no task (the upstream
    exchange itself: HttpFront.serve_now) or by the worker task (`_answer`); every answer is written by
    `_write`, and the writer settles in `_settle`.

    Buffer memory: request bytes are taken from the process budget in one place (`on_body`) and given
    back in one place (`_give_back`). What the connection holds is one ledger, `held`: the bytes of the
    body being read, of the requests read and not yet answered, and of the answer being written (an
    answer's bytes, taken by the upstream pool, join the ledger as the worker receives it). Each answer
    gives its request's and its own bytes back once written; leaving IDLE/HEAD/BODY for REFUSED or CLOSED
    gives back the whole ledger, so nothing a connection took outlives its answering.
    """

    __slots__ = ("front", "limits", "loop", "transport", "parser", "state", "peer", "requests", "deadline", "pending",
                 "pending_bytes", "paused", "worker", "write_paused", "held", "_head_bytes", "_target",
                 "_headers", "_host", "_pin", "_rid", "_hop", "_header_bytes", "_too_large", "_continue", "_body",
                 "_size")

    def __init__(self, front: HttpFront) -> None:
        self.front = front
        self.limits = front.limits
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.state = IDLE
        self.peer = ""
        self.requests = 0  # complete requests read on this connection
        self.deadline = 0.0  # front.clock; checked by HttpFront's sweep (what passing it means: `expire`)
        # read ahead, owed an answer (bounded by MAX_PIPELINED and max_pipelined_bytes: reading pauses)
        self.pending: collections.deque[Request] = collections.deque()
        self.pending_bytes = 0
        self.paused = False  # reading paused for the read-ahead bound (not for a drain: see finish)
        self.worker: asyncio.Task | Exchange | None = None  # the answering in progress: a task, or an exchange
        self.write_paused: asyncio.Future | None = None  # the client does not read its answers
        self.held = 0  # bytes of the process budget this connection holds
        self._head_bytes = 0
        self._reset()

    def _reset(self) -> None:
        self._target = b""
        self._headers: list[tuple[bytes, bytes, bytes]] = []
        self._host = self._pin = self._rid = b""
        self._hop: frozenset[bytes] = frozenset()
        self._header_bytes = 0
        self._too_large = self._continue = False
        self._body: list[bytes] = []
        self._size = 0

    def _give_back(self, n: int) -> None:
        """The one place this connection returns bytes to the process budget (n <= held)."""
        self.held -= n
        self.front.budget.give(n)

    def _stop(self, state: State) -> None:
        """IDLE/HEAD/BODY -> REFUSED or CLOSED: no more answers, so nothing read is owed one and every byte
        held goes back; the worker is cancelled (the client left or was refused: free its replica slot or
        its place in the queue)."""
        self.state = state
        self.deadline = 0.0
        self.pending.clear()
        self.pending_bytes = 0
        self._give_back(self.held)
        if self.worker is not None:  # (a worker cancelled before its first step never runs its finally)
            self.worker.cancel()
            self.worker = None
        self.resume_writing()

    # ---- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # kept: asyncio.get_running_loop() costs a getpid() system call per call on Python 3.11
        self.loop = asyncio.get_running_loop()
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        # A connection that sends nothing at all gets the header timeout, not the (longer) idle one.
        self.deadline = self.front.clock() + self.limits.header_timeout
        if not self.front.admit(self):
            self._refuse(error(503, f"too many open connections (limit {self.limits.max_connections}); retry",
                               [(b"Retry-After", b"1")]))

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state >= REFUSED:
            return
        if state is not BODY:  # bytes of a head (possibly starting in this very chunk)
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(error(501, "protocol upgrades (websocket, h2c) are not supported"))
            return
        except httptools.HttpParserError as exc:
            self._refuse(error(400, f"malformed HTTP request: {exc}"))  # unless a callback refused already
            return
        # Bytes of a head still incomplete: the parser buffers them, so bound them here.
        if self.state is HEAD and self._head_bytes > self.limits.max_request_line + self.limits.max_header_bytes:
            self._refuse(error(431, f"request headers larger than {self.limits.max_header_bytes} bytes"))

    # EOF from the client closes the connection (asyncio's default eof_received): a client that leaves
    # and one that only half-closes look the same, and a leaving client must free its slot at once.
    def connection_lost(self, exc: Exception | None) -> None:
        self._stop(CLOSED)
        self.front.forget(self)

    def pause_writing(self) -> None:
        if self.write_paused is None or self.write_paused.done():
            self.write_paused = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.write_paused is not None and not self.write_paused.done():
            self.write_paused.set_result(None)

    # ---- httptools callbacks (the reader) ---------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()
        self.state = HEAD
        self.deadline = self.front.clock() + self.limits.header_timeout

    def on_url(self, url: bytes) -> None:
        self._target += url
        if len(self._target) > self.limits.max_request_line:
            self._refuse(error(414, f"request target longer than {self.limits.max_request_line} bytes"))
            raise httptools.HttpParserError("request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        self._headers.append((lname, name, value))
        self._header_bytes += len(name) + len(value) + 4
        if len(self._headers) > self.limits.max_header_fields:
            self._refuse(error(431, f"more than {self.limits.max_header_fields} header fields"))
            raise httptools.HttpParserError("too many headers")
        if lname == b"host":
            self._host = value
        elif lname == CANARY_HEADER:
            self._pin = value
        elif lname == REQUEST_ID:
            self._rid = value
        elif lname == b"connection":
            self._hop = self._hop | connection_tokens(value)
        elif lname == b"content-length":
            v = value.strip()
            if v.isdigit() and int(v) > self.limits.max_body_bytes:
                self._too_large = True
        elif lname == b"expect":
            self._continue = value.strip().lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        self._head_bytes = 0
        if self._header_bytes > self.limits.max_header_bytes:
            self._refuse(error(431, f"request headers larger than {self.limits.max_header_bytes} bytes"))
            raise httptools.HttpParserError("headers too large")
        if self._too_large:
            self._refuse(error(413, f"request body larger than {self.limits.max_body_bytes} bytes"))
            raise httptools.HttpParserError("body too large")
        if self._continue:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]
        self.state = BODY
        self.deadline = self.front.clock() + self.limits.body_timeout

    def on_body(self, body: bytes) -> None:
        n = len(body)
        if self._size + n > self.limits.max_body_bytes:
            self._refuse(error(413, f"request body larger than {self.limits.max_body_bytes} bytes"))
            raise httptools.HttpParserError("body too large")
        if not self.front.budget.take(n):  # the one place this connection takes from the budget
            self._refuse(error(503, "the activator is out of buffer memory for requests; retry",
                               [(b"Retry-After", b"1")]))
            raise httptools.HttpParserError("out of budget")
        self.held += n
        self._size += n
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.state = IDLE
        self.deadline = 0.0  # working: no client deadline until the answer is written
        body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        req = Request(self.parser.get_method(), self._target, self._headers, body, self.parser.should_keep_alive(),
                      self.peer, self._host, self._pin, request_id(self._rid), self._hop, self._size)
        self._body = []
        self.requests += 1
        self.pending.append(req)
        self.pending_bytes += len(body) + len(self._target)
        if self.worker is None:
            self._answer_next()
        if (len(self.pending) >= MAX_PIPELINED or self.pending_bytes >= self.limits.max_pipelined_bytes) \
                and not self.paused:
            self.paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    # ---- the writer -------------------------------------------------------------------------
    def _answer_next(self) -> None:
        """Answer the oldest read request: sent at once with no task when the front door can
        (`HttpFront.serve_now`: a free slot and a pooled connection), else by the worker task, which also
        waits out a client that does not read its answers."""
        if self.write_paused is None:
            sent = self.front.serve_now(self.pending[0], self._delivered)
            if sent is not None:
                self._take_pending()
                self.worker = sent  # cancelled like the task when the connection stops
                return
        self.worker = self.loop.create_task(self._answer())

    def _take_pending(self) -> Request:
        req = self.pending.popleft()
        self.pending_bytes -= len(req.body) + len(req.target)
        return req

    def _delivered(self, req: Request, reply: Reply) -> None:
        """The answer of a request sent with no task."""
        self.worker = None
        if self._write(req, reply) and (self.pending or self.write_paused is not None):
            self._answer_next()
        else:
            self._settle()

    async def _answer(self) -> None:
        """Answer the read requests in order, one at a time, until none is left or the connection stops."""
        try:
            while self.state < REFUSED:
                if self.write_paused is not None:
                    # A client that does not read its answers gets no more, and is closed after the idle
                    # timeout (aborted: a close would wait for the unread bytes to be flushed, that is for ever).
                    try:
                        await asyncio.wait_for(self.write_paused, self.limits.idle_timeout)
                    except TimeoutError:
                        self.transport.abort()  # type: ignore[union-attr]
                        return
                    self.write_paused = None
                if not self.pending:
                    return
                req = self._take_pending()
                try:
                    reply = await self.front.serve(req)
                except Exception:
                    log.exception("request %s failed inside the activator", req.rid)
                    reply = error(500, "internal error in the activator (logged)")
                    req.keep_alive = False
                if not self._write(req, reply):
                    return
        finally:
            self._settle()

    def _write(self, req: Request, reply: Reply) -> bool:
        """The one place an answer is written; False when the connection answers no more (it stopped
        while the request was served, or this answer closes it)."""
        self.held += reply.charged  # the answer's bytes (taken by the upstream pool) are ours now
        if self.state >= REFUSED:
            return False  # `_settle` gives its bytes back
        transport = self.transport
        assert transport is not None
        keep = req.keep_alive and not self.front.draining
        transport.writelines(reply.render(keep, req.rid.encode()))
        # The transport holds the bytes now (bounded by pause_writing).
        self._give_back(req.charged + reply.charged)
        if not keep:
            transport.close()
            return False
        if self.paused and len(self.pending) < MAX_PIPELINED // 2 \
                and self.pending_bytes < self.limits.max_pipelined_bytes // 2:
            self.paused = False
            transport.resume_reading()
        return True

    def _settle(self) -> None:
        """The writer stopped with nothing left to answer now (or the connection stopped)."""
        self.worker = None
        self.front.changed.set()
        if self.state >= REFUSED:
            self._give_back(self.held)  # whatever joined the ledger after the stop
        elif self.state is IDLE and not self.pending:
            self.deadline = self.front.clock() + self.limits.idle_timeout

    def expire(self) -> None:
        """The deadline passed: a slow client gets 408; an idle or silent connection is closed."""
        self.deadline = 0.0
        if self.state is HEAD:
            self._refuse(error(408, f"request headers not received within {self.limits.header_timeout:g}s"))
        elif self.state is BODY:
            self._refuse(error(408, f"request body not received within {self.limits.body_timeout:g}s"))
        elif self.state is IDLE:
            self.transport.close()  # type: ignore[union-attr]

    def _refuse(self, reply: Reply) -> None:
        """Answer (instead of anything still queued) and close; read and drop the rest for a moment so
        the client sees the answer rather than a reset."""
        if self.state >= REFUSED:
            return
        self._stop(REFUSED)
        self.front.changed.set()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.writelines(reply.render(False, request_id(self._rid).encode()))
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)


class HttpFront:
    """Translates HTTP into dispatcher calls; owns the client connections and the upstream pool."""

    def __init__(self, dispatcher: Dispatcher, limits: FrontLimits, budget: ByteBudget | None = None) -> None:
        self.dispatcher = dispatcher
        self.clock = dispatcher.clock
        self.changed = dispatcher.changed  # set here too as connections settle (see finish)
        self.limits = limits
        self.budget = budget or ByteBudget(limits.max_buffered_bytes)
        self.pool = UpstreamPool(self.budget, limits.max_answer_bytes)
        self.connections: set[FrontConnection] = set()
        self.draining = False
        self._sweeper: asyncio.Task | None = None

    def protocol(self) -> FrontConnection:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return FrontConnection(self)

    def admit(self, conn: FrontConnection) -> bool:
        if len(self.connections) >= self.limits.max_connections:
            return False
        self.connections.add(conn)
        return True

    def forget(self, conn: FrontConnection) -> None:
        self.connections.discard(conn)
        self.changed.set()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            self.expire_due()

    def expire_due(self) -> None:
        """Every connection whose deadline has passed: 408, or closed (FrontConnection.expire)."""
        now = self.clock()
        for conn in [c for c in self.connections if 0.0 < c.deadline <= now]:
            conn.expire()

    async def serve(self, req: Request) -> Reply:
        try:
            target = origin_form(req.target)
        except ValueError as exc:
            req.keep_alive = False
            return error(400, str(exc))
        host = req.host.decode("latin-1")
        call = Call(host, req.pin.decode("latin-1"), req.rid, "http")
        if otel.ON:
            call.carrier = {ln.decode("latin-1"): v.decode("latin-1") for ln, _, v in req.headers
                            if ln in TRACE_HEADERS}
        head_only = req.method == b"HEAD"

        def send(backend: Backend, timeout: float) -> Awaitable[Answer]:  # the exchange itself: one frame less
            upstream = _upstream_request(req, target, host, backend, call.outgoing)
            return self.pool.exchange(backend.host, backend.http_port, upstream, head_only, timeout)

        try:
            answer = await self.dispatcher.dispatch(call, send, _label)
        except Failure as f:
            return _refusal(f, call)
        return _reply(answer, call)

    def serve_now(self, req: Request, deliver: Callable[[Request, Reply], None]) -> Exchange | None:
        """`serve` with no task, for a request the dispatcher can start at once on a pooled connection
        (Dispatcher.try_start): `deliver(req, reply)` gets its answer, unless the returned exchange is
        cancelled first (the client left). None: nothing was done; `serve` it."""
        if req.target.startswith(ABSOLUTE_FORM):  # rewritten (or refused) by `serve`
            return None
        host = req.host.decode("latin-1")
        call = Call(host, req.pin.decode("latin-1"), req.rid, "http")
        began = self.dispatcher.try_start(call, lambda b: self.pool.take_idle((b.host, b.http_port)))
        if began is None:
            return None
        started, conn = began
        timeout = self.dispatcher.request_timeout

        def answered(outcome: Outcome) -> None:  # the exchange's outcome, at once (no future, no task)
            self._answered(req, call, started, timeout, deliver, outcome)

        return conn.send(_upstream_request(req, req.target, host, started.backend), req.method == b"HEAD",
                         timeout, answered)

    def _answered(self, req: Request, call: Call, started: Started, timeout: float,
                  deliver: Callable[[Request, Reply], None], outcome: Outcome) -> None:
        if type(outcome) is Answer:
            deliver(req, _reply(outcome, call))
            self.dispatcher.finish(started, call, outcome, _label)
            return
        if isinstance(outcome, asyncio.CancelledError):  # the client left (the exchange gave its bytes back)
            self.dispatcher.finish(started, call, Failure("cancelled", "the client went away"), _label)
            return
        if isinstance(outcome, (Broken, TimeoutError)):
            outcome = self.dispatcher.failure(started.throttler, started.backend, outcome, timeout)
        if isinstance(outcome, Failure):
            deliver(req, _refusal(outcome, call))
            self.dispatcher.finish(started, call, outcome, _label)
            return
        log.error("request %s failed inside the activator", req.rid, exc_info=outcome)
        req.keep_alive = False
        deliver(req, error(500, "internal error in the activator (logged)"))
        self.dispatcher.finish(started, call, None, _label)

    def live_upstreams(self) -> list[tuple[str, int]]:
        return [(b.host, b.http_port) for t in self.dispatcher.sides() for b in t.backends.values()]

    async def finish(self, timeout: float) -> None:
        """The end of a drain (the listener is closed): every request already read is answered, and so is
        the first request of a connection accepted but not read yet (its client has sent it or is about
        to: it cannot tell an accepted connection from a served one); a keep-alive connection that has
        been answered and is idle is closed now (HTTP lets a server close those). Bounded by `timeout`;
        each connection closes after its answer (draining answers carry `Connection: close`)."""
        deadline = self.clock() + timeout
        for conn in list(self.connections):
            transport = conn.transport
            if transport is None or transport.is_closing() or conn.requests == 0:
                continue
            transport.pause_reading()  # what it sends next is not read: the close tells the client
            if not conn.pending and conn.worker is None:
                transport.close()

        def owed(c: FrontConnection) -> bool:
            return bool(c.pending or c.worker or (c.requests == 0 and c.state < REFUSED))

        # Woken by what settles a connection: its worker ending, a refusal, the connection gone.
        while any(owed(c) for c in self.connections) and (left := deadline - self.clock()) > 0:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        self.pool.close()


def _refusal(f: Failure, call: Call) -> Reply:
    headers = [(b"Retry-After", str(f.retry_after).encode())] if f.retry_after else []
    if call.traceparent:
        headers.append((b"traceparent", call.traceparent.encode()))
    return error(HTTP_STATUS[f.code], f.reason, headers)


def _reply(answer: Answer, call: Call) -> Reply:
    drop = DROP_ANSWER_TRACED if call.traceparent else DROP_ANSWER
    if answer.hop:  # names the answer's own Connection header lists
        drop = drop | answer.hop
    headers = [(n, v) for ln, n, v in answer.headers if ln not in drop]
    headers.append((SIDE_HEADER, call.side.encode()))
    if call.traceparent:  # the activator's span, not the replica's: the caller's view of the request
        headers.append((b"traceparent", call.traceparent.encode()))
    return Reply(answer.status, headers, answer.body, answer.reason, answer.charged)


def _upstream_request(req: Request, target: bytes, host: str, backend: Backend,
                      trace: dict[str, str] | None = None) -> list[bytes]:
    head = [b"%s %s HTTP/1.1\r\nHost: %s:%d\r\n" % (req.method, target, backend.host.encode(), backend.http_port)]
    hop = req.hop
    drop = DROP_FORWARD if trace is None else DROP_FORWARD_TRACED
    if hop:
        head += [b"%s: %s\r\n" % (n, v) for ln, n, v in req.headers if ln not in drop and ln not in hop]
    else:
        head += [b"%s: %s\r\n" % (n, v) for ln, n, v in req.headers if ln not in drop]
    if trace:
        head += [b"%s: %s\r\n" % (k.encode(), v.encode("latin-1")) for k, v in trace.items()]
    head.append(b"X-Forwarded-Host: %s\r\nX-Forwarded-For: %s\r\nX-Forwarded-Proto: http\r\nX-Request-Id: %s\r\n"
                b"Content-Length: %d\r\n\r\n" % (host.encode("latin-1"), req.peer.encode(), req.rid.encode(),
                                                   len(req.body)))
    return [b"".join(head), req.body]
