"""Every bound of the activator's HTTP front door answers with a clear error instead of a hang or a
crash: request line 414, headers 431, body 413, slow headers/bodies 408, idle keep-alive closed,
connection cap 503, process byte budget 503, oversized replica answers 502, parser errors 400 + close;
pipelined input beyond the byte bound pauses reading and is still answered."""

from __future__ import annotations

import asyncio
import json

import pytest

from activator.limits import FrontLimits
from tests.activator.harness import HOST, Setup, echo_replica, ok_answer, read_request, responses

LIMITS = FrontLimits(max_request_line=200, max_header_bytes=1000, max_header_fields=10, max_body_bytes=1000,
                max_answer_bytes=500, max_pipelined_bytes=300, max_buffered_bytes=5000, max_connections=4,
                header_timeout=0.5, body_timeout=0.5, idle_timeout=0.5)


@pytest.fixture
def front_limits() -> FrontLimits:
    return LIMITS


@pytest.fixture(autouse=True)
async def echo(setup: Setup) -> None:  # each test's front (tests/conftest.py) routes to an echo replica
    setup.route(await setup.replica(echo_replica))


def one(raw: bytes) -> tuple[int, dict[bytes, bytes], dict]:
    (a,) = responses(raw)
    return a[0], a[1], json.loads(a[2]) if a[2] else {}


async def test_request_line_and_headers(setup):
    status, headers, body = one(await setup.raw(b"GET /%s HTTP/1.1\r\nHost: %s\r\n\r\n" % (b"a" * 300, HOST)))
    assert status == 414 and "200 bytes" in body["error"] and headers[b"connection"] == b"close"
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(11))
    status, _, body = one(await setup.raw(b"GET / HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (HOST, many)))
    assert status == 431 and "10 header fields" in body["error"]
    status, _, body = one(await setup.raw(b"GET / HTTP/1.1\r\nHost: %s\r\nX-Big: %s\r\n\r\n" % (HOST, b"v" * 1100)))
    assert status == 431 and "1000 bytes" in body["error"]
    # a header that never ends: refused once it passes the bound, not buffered forever
    status, _, _ = one(await setup.raw(b"GET / HTTP/1.1\r\nHost: %s\r\nX-Endless: %s" % (HOST, b"v" * 5000)))
    assert status == 431


async def test_slow_clients_get_408_and_idle_connections_close(setup):
    status, _, body = one(await setup.raw(b"GET / HTTP/1.1\r\nHost: %s\r\n" % HOST))  # headers never end
    assert status == 408 and "headers" in body["error"]
    status, _, body = one(await setup.raw(b"POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: 10\r\n\r\nabc" % HOST))
    assert status == 408 and "body" in body["error"]
    reader, writer = await asyncio.open_connection("127.0.0.1", setup.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % HOST)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # then idle: the activator closes it
    writer.close()
    assert await setup.raw(b"") == b""  # connected and silent: closed without an answer


async def test_connection_cap(setup):
    held = [await asyncio.open_connection("127.0.0.1", setup.port) for _ in range(4)]
    try:
        status, headers, body = one(await setup.raw(b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % HOST))
        assert status == 503 and "too many open connections" in body["error"] and headers[b"retry-after"] == b"1"
    finally:
        for _, w in held:
            w.close()


async def test_process_byte_budget_and_oversized_answers(setup):
    setup.front.budget.used = 4500  # as if other connections held most of the budget
    status, headers, body = one(await setup.raw(b"POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: 800\r\n\r\n%s"
                                                % (HOST, b"x" * 800)))
    assert status == 503 and "buffer memory" in body["error"] and headers[b"retry-after"] == b"1"
    setup.front.budget.used = 0

    async def big(reader, writer):
        await read_request(reader)
        writer.write(ok_answer(b"y" * 600))
        await writer.drain()

    setup.route(await setup.replica(big), version=2)
    status, _, body = one(await setup.raw(b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % HOST))
    assert status == 502 and "larger than 500 bytes" in body["error"]
    assert setup.front.budget.used == 0  # nothing leaked


async def test_pipelined_bytes_beyond_the_bound_pause_reading_and_are_answered(setup):
    reqs = b"".join(b"POST /%d HTTP/1.1\r\nHost: %s\r\nContent-Length: 100\r\n\r\n%s" % (i, HOST, b"z" * 100)
                    for i in range(20))
    answers = responses(await setup.raw(reqs + b"GET /end HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % HOST,
                                        timeout=10))
    assert [a[0] for a in answers] == [200] * 21
    assert [json.loads(a[2])["line"].split()[1] for a in answers] == [f"/{i}" for i in range(20)] + ["/end"]
    assert setup.front.budget.used == 0


@pytest.mark.parametrize("garbage", [b"\x00\x01\x02\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                                     b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
                                     b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
                                     b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"])
async def test_parser_errors_are_400_and_close(setup, garbage):
    status, headers, body = one(await setup.raw(garbage))
    assert status == 400 and "malformed" in body["error"] and headers[b"connection"] == b"close"
