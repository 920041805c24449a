"""activator.upstream against replicas that stopped answering (their node died): a connect that does not
complete is NotSent within the connect timeout (retried elsewhere, never waited out to the deadline),
and every connection it opens asks the kernel to detect a vanished peer (keepalive, user timeout)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from activator import upstream
from activator.outcomes import NotSent
from activator.upstream import UpstreamPool

REQUEST = [b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"]


def _full_backlog() -> tuple[socket.socket, list[socket.socket], int]:
    """A listener that never accepts, its accept queue filled: the kernel drops further SYNs, as a
    dead node's address does (the connect neither completes nor fails)."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(s)
    return lsock, fillers, port


async def test_a_connect_that_hangs_is_not_sent_within_the_connect_timeout() -> None:
    lsock, fillers, port = _full_backlog()
    pool = UpstreamPool()
    try:
        t0 = time.monotonic()
        with pytest.raises(NotSent, match="no connection within"):
            await asyncio.wait_for(pool.exchange("127.0.0.1", port, REQUEST), 10)
        assert time.monotonic() - t0 < upstream.CONNECT_TIMEOUT + 1.0
    finally:
        pool.close()
        for s in fillers:
            s.close()
        lsock.close()


async def test_connections_to_replicas_detect_a_vanished_peer() -> None:
    seen: list[socket.socket] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool()
    original = upstream._detect_dead_peers
    upstream._detect_dead_peers = lambda s: (seen.append(s), original(s))  # type: ignore[assignment]
    try:
        answer_ = await pool.exchange("127.0.0.1", port, REQUEST)
        assert answer_.status == 200 and answer_.body == b"ok"
        assert len(seen) == 1
        sock = seen[0]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == upstream.USER_TIMEOUT_MS
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == upstream.KEEPALIVE_IDLE
    finally:
        upstream._detect_dead_peers = original  # type: ignore[assignment]
        pool.close()
        server.close()
        await server.wait_closed()


async def test_an_answer_arriving_as_its_request_is_cancelled_gives_its_bytes_back() -> None:
    """The answer completes in the same loop turn the client leaves (or the deadline fires): the task is
    cancelled with the answer's bytes charged to the budget, and they must come back."""
    budget = upstream.ByteBudget(1000)
    pool = UpstreamPool(budget)
    sent: asyncio.Future = asyncio.get_running_loop().create_future()

    class Conn:
        closed = False
        loop = asyncio.get_running_loop()

        def send(self, request, head_only, timeout, deliver):
            sent.set_result(deliver)
            return self

        def cancel(self, deliver=None) -> None:
            self.closed = True

        def close(self) -> None:
            self.closed = True

    pool.take_idle = lambda addr: Conn()  # type: ignore[method-assign]  # a pooled connection
    task = asyncio.create_task(pool.exchange("127.0.0.1", 1, [b"GET / HTTP/1.1\r\n\r\n"]))
    deliver = await sent  # the exchange awaits its answer
    assert budget.take(300)
    deliver(upstream.Answer(200, b"OK", body=b"x" * 300, charged=300))
    task.cancel()  # before the task runs again: the answer is in, the request is gone
    with pytest.raises(asyncio.CancelledError):
        await task
    assert budget.used == 0


async def test_an_answer_not_whole_in_time_is_a_timeout_and_its_connection_is_dropped() -> None:
    """The request's own deadline is the exchange's: a replica that reads the request and answers only
    half is a TimeoutError at the deadline; the half answer's bytes go back and the connection is not reused."""
    got: list[bytes] = []

    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 50)
        await writer.drain()
        await reader.read()  # until the activator closes its side

    server = await asyncio.start_server(half, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    budget = upstream.ByteBudget(10_000)
    pool = UpstreamPool(budget)
    try:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await pool.exchange("127.0.0.1", port, REQUEST, timeout=0.3)
        assert 0.3 <= time.monotonic() - t0 < 3.0 and len(got) == 1
        assert budget.used == 0 and not pool._idle.get(("127.0.0.1", port))
    finally:
        pool.close()
        server.close()
        await server.wait_closed()


async def test_a_deadline_shorter_than_the_connect_timeout_is_a_timeout_not_unsent() -> None:
    """A connect cut short by the request's deadline is that deadline (504), not an unreachable replica
    to resend to (NotSent)."""
    lsock, fillers, port = _full_backlog()
    pool = UpstreamPool()
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pool.exchange("127.0.0.1", port, REQUEST, timeout=0.1), 10)
    finally:
        pool.close()
        for s in fillers:
            s.close()
        lsock.close()
