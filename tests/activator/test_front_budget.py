"""Property tests of the HTTP front door's buffer budget (activator/http_front.py): whatever the order of
pipelined requests, answers, refusals (oversize, malformed, out of budget, too many connections), client
closes mid-request and mid-response, header/body/idle timeouts and write back-pressure, every byte a
connection took from the process budget is given back, no answering task is left and no connection is.

Two levels: the connection driven step by step over a scripted transport and a scripted `serve` (the
ledger checked after every step), and a real front door on loopback with a replica that answers, holds or
sends a large answer. Examples are derandomized (a failure replays) and nothing is stored on disk."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from activator import http_front
from activator.http_front import REFUSED, FrontConnection, HttpFront, Reply, State
from activator.limits import FrontLimits
from tests.activator.harness import HOST, Setup, ok_answer, read_request

# ---- request streams ---------------------------------------------------------------------------------


def _get(path: bytes = b"/", close: bool = False) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (path, HOST, b"Connection: close\r\n" if close else b"")


def _post(size: int, path: bytes = b"/", close: bool = False, expect: bool = False) -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n%s%s\r\n%s" % (
        path, HOST, size, b"Connection: close\r\n" if close else b"", b"Expect: 100-continue\r\n" if expect else b"",
        b"b" * size)


def _chunked(sizes: list[int]) -> bytes:
    chunks = b"".join(b"%x\r\n%s\r\n" % (n, b"c" * n) for n in sizes)
    return b"POST / HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n" % (HOST, chunks)


def request_items(max_body: int) -> st.SearchStrategy[bytes]:
    """One request (or a burst, or garbage) of a connection's input; bodies up to past the body limit."""
    sizes = st.integers(0, max_body + max_body // 3)
    good = st.one_of(
        st.builds(_get, close=st.booleans()),
        st.builds(_post, sizes, close=st.booleans(), expect=st.booleans()),
        st.builds(_chunked, st.lists(st.integers(1, max_body // 2), min_size=1, max_size=4)),
        st.just(b"GET / HTTP/1.0\r\nHost: %s\r\n\r\n" % HOST),
        st.just(_get() * 40),  # past MAX_PIPELINED: reading pauses on the count
    )
    bad = st.one_of(
        st.just(b"GET /%s HTTP/1.1\r\nHost: %s\r\n\r\n" % (b"u" * 300, HOST)),  # 414
        st.just(b"GET / HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (HOST, b"X-H: v\r\n" * 20)),  # 431
        st.just(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"),  # 501
        st.binary(min_size=1, max_size=12),  # garbage: 400, or a head that never ends
    )
    return st.one_of(good, good, good, good, bad)  # (a branch listed n times is drawn n times as often)


# ---- the connection over a scripted transport ----------------------------------------------------------

MODEL_LIMITS = FrontLimits(max_request_line=64, max_header_bytes=256, max_header_fields=8, max_body_bytes=300,
                      max_pipelined_bytes=400, max_buffered_bytes=1200, max_connections=2,
                      header_timeout=1.0, body_timeout=2.0, idle_timeout=0.05)


class Transport(asyncio.Transport):
    """What asyncio's socket transport does, by hand: input delivered in the chunks the client sent,
    none while reading is paused or once closing; close -> connection_lost on the next loop turn."""

    def __init__(self, conn: FrontConnection) -> None:
        super().__init__()
        self.conn = conn
        self.inbox: collections.deque[bytes] = collections.deque()
        self.out = bytearray()
        self.closing = self.paused = self.eof = False

    def get_extra_info(self, name, default=None):
        return ("10.0.0.1", 4321) if name == "peername" else default

    def write(self, data) -> None:
        if not self.closing:
            self.out += data

    def writelines(self, chunks) -> None:
        for c in chunks:
            self.write(c)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.conn.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        asyncio.get_running_loop().call_soon(self.deliver)

    def deliver(self) -> None:
        while self.inbox and not self.paused and not self.closing:
            self.conn.data_received(self.inbox.popleft())


class ScriptedFront(HttpFront):
    """The front door with `serve` and `serve_now` answered by the test (every other request is sent with
    no task, as on a pooled connection). An answer's bytes are taken from the budget as the upstream pool
    takes them, and are `in_transit` until the connection's writer has received them (given back if it is
    cancelled first, as an exchange must)."""

    def __init__(self, limits: FrontLimits) -> None:
        self.now = 0.0
        super().__init__(SimpleNamespace(clock=lambda: self.now, changed=asyncio.Event()), limits)  # type: ignore[arg-type]
        self.calls: collections.deque[asyncio.Future[Reply]] = collections.deque()
        self.in_transit = 0
        self.turns = 0

    def serve_now(self, req, deliver) -> asyncio.Future | None:
        self.turns += 1
        if self.turns % 2:
            return None
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.calls.append(fut)

        def answered(f: asyncio.Future[Reply]) -> None:  # as HttpFront._answered
            if f.cancelled():
                return
            if f.exception() is not None:
                req.keep_alive = False
                deliver(req, http_front.error(500, "internal error in the activator (logged)"))
                return
            self.in_transit -= f.result().charged
            deliver(req, f.result())

        fut.add_done_callback(answered)
        return fut

    async def serve(self, req) -> Reply:
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.calls.append(fut)
        try:
            reply = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.in_transit -= fut.result().charged
                self.budget.give(fut.result().charged)
            raise
        self.in_transit -= reply.charged
        return reply

    def answer(self, size: int) -> None:
        fut = next((f for f in self.calls if not f.done()), None)
        if fut is None:
            return
        if size < 0:
            fut.set_exception(RuntimeError("a bug in serve"))  # -> 500 and close
        elif self.budget.take(size):
            self.in_transit += size
            fut.set_result(Reply(200, [], b"a" * size, charged=size))
        else:
            fut.set_result(http_front.error(503, "out of buffer memory for answers"))


def answering_tasks() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "FrontConnection._answer"]


def check_ledger(front: ScriptedFront, conns: list[FrontConnection]) -> None:
    assert front.budget.used == sum(c.held for c in conns) + front.in_transit, \
        (front.budget.used, [c.held for c in conns], front.in_transit)
    for c in conns:
        assert c.held >= 0
        if c.state >= REFUSED:  # answers nothing more: holds nothing, owes nothing
            assert c.held == 0 and not c.pending and c.deadline == 0.0
        elif c.worker is None and not c.pending:  # not answering: holds only the body being read
            assert c.held == (c._size if c.state is State.BODY else 0), (c.state, c.held, c._size)
        if c.state is State.CLOSED:
            assert c not in front.connections


conn_index = st.integers(0, 2)
STEP_ARGS = {
    "send": st.tuples(conn_index, st.integers(1, 400)),  # the next n bytes of that connection's input
    "answer": st.tuples(st.integers(-1, 500)),  # the oldest open serve gets an answer of n bytes (-1: raises)
    "pause_writing": st.tuples(conn_index), "resume_writing": st.tuples(conn_index),
    "stall": st.tuples(conn_index),  # writing stays paused past the idle timeout
    "close": st.tuples(conn_index),  # the client leaves (EOF or reset)
    "tick": st.tuples(st.sampled_from([0.06, 1.01, 2.01])),  # the clock passes the idle, header, body deadline
    "drain": st.tuples(st.just(0)),
}
# Each kind drawn as often as it is listed: mostly input and answers, now and then a timeout or a close.
KINDS = ["send"] * 10 + ["answer"] * 6 + ["pause_writing", "resume_writing", "stall", "close", "tick", "drain"]
steps = st.sampled_from(KINDS).flatmap(lambda kind: STEP_ARGS[kind].map(lambda args: (kind, *args)))


async def _turns(n: int = 4) -> None:
    for _ in range(n):  # loop turns, not time: call_soon chains and the workers' steps run
        await asyncio.sleep(0)


async def drive(streams: list[bytes], script: list[tuple]) -> None:
    front = ScriptedFront(MODEL_LIMITS)
    conns, transports, sent = [], [], []
    for _ in streams:
        conn = FrontConnection(front)
        transport = Transport(conn)
        conn.connection_made(transport)  # the third is over max_connections: 503
        conns.append(conn)
        transports.append(transport)
        sent.append(0)
    for step in script:
        kind, arg = step[0], step[1]
        i = int(arg) % len(conns)
        conn, transport = conns[i], transports[i]
        if kind == "send":
            chunk = streams[i][sent[i]:sent[i] + step[2]]
            sent[i] += len(chunk)
            if chunk and not transport.closing:
                transport.inbox.append(chunk)
                transport.deliver()
        elif kind == "answer":
            front.answer(arg)
        elif kind == "pause_writing" and not transport.closing:
            conn.pause_writing()
        elif kind == "resume_writing" and not transport.closing:
            conn.resume_writing()
        elif kind == "stall" and conn.worker is not None and conn.write_paused is not None \
                and all(f.done() for f in front.calls):  # answered: the worker waits on the paused write
            await asyncio.wait([conn.worker], timeout=5)  # ends after idle_timeout: closed
            assert conn.worker is None
        elif kind == "tick":
            front.now += arg
            front.expire_due()
        elif kind == "close":
            transport.close()
        elif kind == "drain":
            front.draining = True
        await _turns()
        check_ledger(front, conns)
    for transport in transports:  # everyone leaves
        transport.close()
    await _turns()
    left = answering_tasks()
    if left:
        await asyncio.wait(left, timeout=5)
    check_ledger(front, conns)
    assert front.budget.used == 0 and front.in_transit == 0
    assert all(c.held == 0 and c.worker is None and c.state is State.CLOSED for c in conns)
    assert not answering_tasks() and not front.connections
    assert all(f.done() for f in front.calls)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(st.lists(st.lists(request_items(MODEL_LIMITS.max_body_bytes), min_size=1, max_size=8).map(b"".join),
                min_size=1, max_size=3),
       st.lists(steps, min_size=5, max_size=60))
def test_any_order_of_requests_answers_closes_and_timeouts_returns_every_byte(streams, script):
    asyncio.run(drive(streams, script))


def test_a_client_gone_mid_request_gives_its_body_back():
    """The case the old per-method bookkeeping leaked: the worker cancelled while the request was served."""

    async def run() -> None:
        front = ScriptedFront(MODEL_LIMITS)
        conn = FrontConnection(front)
        transport = Transport(conn)
        conn.connection_made(transport)
        transport.inbox.append(_post(200))
        transport.deliver()
        await _turns()
        assert front.budget.used == conn.held == 200 and len(front.calls) == 1 and conn.worker is not None
        transport.close()
        await _turns()
        assert front.budget.used == conn.held == 0 and conn.worker is None and front.calls[0].cancelled()

    asyncio.run(run())


# ---- a real front door on loopback -------------------------------------------------------------------

LOOP_LIMITS = FrontLimits(max_body_bytes=1000, max_answer_bytes=8_000_000, max_pipelined_bytes=2000,
                     max_buffered_bytes=20_000_000, max_connections=3, header_timeout=0.2, body_timeout=0.2,
                     idle_timeout=0.3)
BIG = 6_000_000  # past the kernel buffers of a small-window client (tcp_wmem max 4 MiB) and the high-water mark


async def replica(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """/hold: never answers (until the front door hangs up); /big: a large answer; else a small echo."""
    try:
        while True:
            line, _, body = await read_request(reader)
            path = line.split()[1]
            if path.startswith(b"/hold"):
                await reader.read()
                return
            writer.write(ok_answer(b"y" * BIG if path.startswith(b"/big") else body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


REQUESTS = {"get": _get(), "post": _post(600), "hold": _post(300, b"/hold"), "big": _get(b"/big"),
            "oversize": _post(1200), "chunked_over": _chunked([600, 600]), "garbage": b"\x00GET\r\n\r\n",
            "close": _get(close=True)}
TAILS = {"none": b"", "head": b"GET / HTTP/1.1\r\nHost: %s\r\n" % HOST,
         "body": b"POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: 500\r\n\r\nxx" % HOST}
client = st.fixed_dictionaries({
    "requests": st.lists(st.sampled_from(sorted(REQUESTS)), max_size=6),
    "tail": st.sampled_from(sorted(TAILS)),  # an unfinished request last: 408 after its timeout
    # read to the end (the front door closes: Connection: close, an error, a timeout or idle); leave at
    # once (mid-request); read a little of the answers, then leave (mid-response); or read nothing until
    # the front door has given up on this client (a big answer unread: writing pauses, then it is cut)
    "end": st.sampled_from(["read_to_close", "leave", "leave_mid_answer", "stall"]),
})


async def until(front: HttpFront, predicate, timeout: float, what) -> None:
    """Woken by what settles a connection (a refusal, a connection gone, a worker or a dispatch ending)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        left = deadline - asyncio.get_running_loop().time()
        assert left > 0, what()
        front.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(front.changed.wait(), left)


async def play(front: HttpFront, port: int, plan: dict) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: big answers back up
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"".join(REQUESTS[r] for r in plan["requests"]) + TAILS[plan["tail"]])
    try:
        if plan["end"] == "stall":
            me = writer.get_extra_info("sockname")

            def answering() -> bool:
                return any(c.state < REFUSED for c in front.connections
                           if c.transport is not None and c.transport.get_extra_info("peername") == me)

            await until(front, lambda: not answering(), 10, lambda: f"never given up on: {plan}")
        if plan["end"] in ("read_to_close", "stall"):
            with contextlib.suppress(ConnectionError):  # (reset, when cut off with answers unread)
                await asyncio.wait_for(reader.read(-1), 10)  # the front door ends every connection by itself
        elif plan["end"] == "leave_mid_answer":
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(reader.read(100), 1)
    finally:
        writer.close()


async def settled(setup: Setup, timeout: float) -> None:
    front = setup.front
    await until(front, lambda: (not front.connections and not answering_tasks() and front.budget.used == 0
                                and setup.throttler().inflight == 0),
                timeout, lambda: (f"not settled: {len(front.connections)} connections, {len(answering_tasks())} "
                                  f"answering, {front.budget.used} bytes held, {setup.throttler().inflight} in flight"))


async def loopback(plans: list[dict]) -> None:
    setup = Setup(LOOP_LIMITS, request_timeout=0.5)
    await setup.start()
    try:
        setup.route(await setup.replica(replica))
        await asyncio.gather(*(play(setup.front, setup.port, p) for p in plans))
        await settled(setup, 10)
        assert (await setup.raw(_get(close=True))).startswith(b"HTTP/1.1 200")  # and it still serves
        await settled(setup, 10)
    finally:
        setup.close()


@pytest.fixture
def quick_sweep(monkeypatch):
    monkeypatch.setattr(http_front, "SWEEP_SECONDS", 0.02)  # deadlines are checked this often


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(client, min_size=1, max_size=4))
@example([{"requests": ["hold", "post"], "tail": "none", "end": "leave"}])  # gone mid-request, one queued
@example([{"requests": ["big", "post"], "tail": "none", "end": "leave_mid_answer"}])  # gone mid-answer
@example([{"requests": ["big"], "tail": "none", "end": "stall"}])  # never reads: writing pauses, then cut
@example([{"requests": ["post"], "tail": "body", "end": "stall"}] * 4)  # 408s, and one over the connection cap
def test_on_loopback_every_byte_and_slot_comes_back(quick_sweep, plans):
    asyncio.run(loopback(plans))
