"""benchmarks.floor_server, the hot path's machine floor: it frames keep-alive requests (bodies included),
busy-waits what it is asked to, and refuses malformed or oversized requests with a 400 and a reason."""

from __future__ import annotations

import asyncio
import socket
import time
from urllib.parse import urlsplit

import pytest

from benchmarks.floor_server import MAX_BUSY_US, FloorProtocol, parse_head


@pytest.mark.parametrize("head,expected", [
    (b"POST /?us=250 HTTP/1.1\r\nHost: x\r\nContent-Length: 12", (250e-6, 12, False)),
    (b"GET / HTTP/1.1\r\nHost: x", (0.0, 0, False)),
    (b"POST /lac/prediction?us=0&lac=1 HTTP/1.0\r\ncontent-length:3", (0.0, 3, True)),
])
def test_parse_head(head: bytes, expected: tuple[float, int, bool]) -> None:
    busy, length, lac = parse_head(head)
    assert (busy, length, lac) == (pytest.approx(expected[0]), expected[1], expected[2])


@pytest.mark.parametrize("head,reason", [
    (b"garbage", "malformed request line"),
    (f"POST /?us={MAX_BUSY_US + 1} HTTP/1.1".encode(), "us must be"),
    (b"POST / HTTP/1.1\r\nContent-Length: 99999999999", "body must be at most"),
])
def test_parse_head_refuses(head: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_head(head)


async def _exchange(payload: bytes, answers: int, lac=None) -> bytes:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FloorProtocol(lac), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        await writer.drain()
        got = b""
        while got.count(b"HTTP/1.1 ") < answers:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                break
            got += chunk
        writer.close()
        return got
    finally:
        server.close()
        await server.wait_closed()


def test_keep_alive_requests_with_bodies_are_each_answered_after_their_busy_wait() -> None:
    one = b'POST /?us=20000 HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n{"feed":[]}'
    t0 = time.perf_counter()
    got = asyncio.run(_exchange(one * 3, 3))
    assert got.count(b"HTTP/1.1 200 OK") == 3
    assert time.perf_counter() - t0 >= 0.06  # three 20 ms busy-waits, one after the other


def test_lac_requests_each_run_the_call_and_need_it_loaded() -> None:
    calls = []
    one = b"POST /?lac=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    got = asyncio.run(_exchange(one * 2, 2, lambda: calls.append(1)))
    assert got.count(b"HTTP/1.1 200 OK") == 2 and len(calls) == 2
    got = asyncio.run(_exchange(one, 1))
    assert got.startswith(b"HTTP/1.1 400 Bad Request") and got.endswith(b"lac=1 needs the server started with --lac")


def test_malformed_request_gets_400_with_reason_and_close() -> None:
    got = asyncio.run(_exchange(b"NOT HTTP\r\n\r\n", 1))
    assert got.startswith(b"HTTP/1.1 400 Bad Request") and got.endswith(b"malformed request line")


def test_oversized_head_is_refused() -> None:
    got = asyncio.run(_exchange(b"POST / HTTP/1.1\r\nX: " + b"a" * 20000, 1))
    assert b"400 Bad Request" in got and b"request head too large" in got


def test_module_runs_as_a_server() -> None:
    """`python -m benchmarks.floor_server --port P --lac` (how runtime_bench starts it) answers on P, LAC
    requests too."""
    from benchmarks.runtime_bench import _stop, start_floor_server

    p, url = start_floor_server()
    try:
        where = urlsplit(url)
        with socket.create_connection((where.hostname, where.port), timeout=5) as s:
            for query in (b"us=0", b"lac=1"):
                s.sendall(b"GET /?" + query + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                assert s.recv(1024).startswith(b"HTTP/1.1 200 OK")
    finally:
        _stop(p)
