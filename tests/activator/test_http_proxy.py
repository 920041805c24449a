"""The activator's HTTP/1.1 proxy (activator.http_proxy + activator.upstream) on loopback, with routes set
by hand and small raw replicas, some of them misbehaving: pipelining, 100-continue, Connection: close,
upgrades, broken and truncated answers, idle connections closed by the replica, retries."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest

from activator.http_proxy import HttpProxy
from activator.server import Activator, parse_args

HOST = b"svc.ns.example.com"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes] | None:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, v in (ln.split(b":", 1) for ln in lines[1:] if b":" in ln))
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return lines[0], headers, body


def ok_answer(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s" % (
        extra, len(body), body)


async def echo_replica(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Keep-alive replica answering each request with its request line, headers and body."""
    try:
        while True:
            line, headers, body = await read_request(reader)
            out = json.dumps({"line": line.decode(), "headers": {k.decode(): v.decode() for k, v in headers.items()},
                              "body": body.decode()}).encode()
            writer.write(ok_answer(out))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


class Setup:
    def __init__(self) -> None:
        self.servers: list[asyncio.base_events.Server] = []
        self.act = Activator(parse_args(["--request-timeout", "3", "--max-body-bytes", "1000"]))
        self.proxy = HttpProxy(self.act)
        self.port = 0

    async def start(self) -> None:
        server = await asyncio.get_running_loop().create_server(self.proxy.protocol, "127.0.0.1", 0)
        self.servers.append(server)
        self.port = server.sockets[0].getsockname()[1]

    async def replica(self, handler: Handler) -> int:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        self.servers.append(server)
        return server.sockets[0].getsockname()[1]

    def route(self, *ports: int) -> None:
        eps = [{"id": f"r{p}", "host": "127.0.0.1", "http_port": p} for p in ports]
        self.act.apply_routes([{"service": "ns/svc", "hosts": [HOST.decode()],
                                "sides": {"default": {"endpoints": eps, "desired": len(eps)}}}])

    async def raw(self, data: bytes, read_until_close: bool = True) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(data)
        await writer.drain()
        out = await asyncio.wait_for(reader.read(), 5) if read_until_close else b""
        writer.close()
        return out

    def close(self) -> None:
        self.proxy.close()
        for s in self.servers:
            s.close()


@pytest.fixture
async def setup():
    s = Setup()
    await s.start()
    yield s
    s.close()


def responses(raw: bytes) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Split a byte stream of HTTP/1.1 answers with Content-Length."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = dict((k.strip().lower(), v.strip()) for k, v in (ln.split(b":", 1) for ln in lines[1:]))
        n = int(headers.get(b"content-length", b"0"))
        out.append((int(lines[0].split()[1]), headers, rest[:n]))
        raw = rest[n:]
    return out


async def test_pipelined_requests_are_answered_in_order_with_forwarding_headers(setup):
    setup.route(await setup.replica(echo_replica))
    reqs = b"".join(b"POST /p/%d?q=1 HTTP/1.1\r\nHost: %s\r\nContent-Length: 1\r\nX-Trace: t%d\r\n\r\n%d"
                    % (i, HOST, i, i) for i in range(5))
    answers = responses(await setup.raw(reqs + b"GET /last HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % HOST))
    assert [a[0] for a in answers] == [200] * 6
    bodies = [json.loads(a[2]) for a in answers]
    assert [b["line"] for b in bodies] == [f"POST /p/{i}?q=1 HTTP/1.1" for i in range(5)] + ["GET /last HTTP/1.1"]
    assert [b["body"] for b in bodies[:5]] == [str(i) for i in range(5)]
    assert bodies[0]["headers"]["x-trace"] == "t0"
    assert bodies[0]["headers"]["x-forwarded-host"] == HOST.decode()
    assert bodies[0]["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert "connection" not in bodies[5]["headers"]  # hop-by-hop headers stay on their hop
    assert answers[0][1][b"x-paddleservice-side"] == b"default"
    assert answers[-1][1][b"connection"] == b"close"


async def test_expect_100_continue_and_http_1_0(setup):
    setup.route(await setup.replica(echo_replica))
    reader, writer = await asyncio.open_connection("127.0.0.1", setup.port)
    writer.write(b"POST /x HTTP/1.1\r\nHost: %s\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n" % HOST)
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hi")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    writer.close()
    (answer,) = responses(await setup.raw(b"GET /old HTTP/1.0\r\nHost: %s\r\n\r\n" % HOST))  # closed after it
    assert answer[0] == 200 and json.loads(answer[2])["line"] == "GET /old HTTP/1.1"


async def test_bad_input_gets_json_errors(setup):
    setup.route(await setup.replica(echo_replica))
    (a,) = responses(await setup.raw(b"GET / HTTP/1.1\r\nHost: nobody.example.com\r\nConnection: close\r\n\r\n"))
    assert a[0] == 404 and "nobody.example.com" in json.loads(a[2])["error"]
    (a,) = responses(await setup.raw(b"NOT HTTP\r\n\r\n"))
    assert a[0] == 400 and "malformed" in json.loads(a[2])["error"]
    (a,) = responses(await setup.raw(b"POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: 5000\r\n\r\n" % HOST))
    assert a[0] == 413
    (a,) = responses(await setup.raw(b"POST / HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
                                     b"400\r\n%s\r\n400\r\n%s\r\n0\r\n\r\n" % (HOST, b"x" * 1024, b"x" * 1024)))
    assert a[0] == 413  # chunked bodies are counted too
    (a,) = responses(await setup.raw(b"GET /ws HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                                     % HOST))
    assert a[0] == 501
    (a,) = responses(await setup.raw(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"))
    assert a[0] == 200 and b"elasticserving_activator_requests_total" in a[2]


async def test_a_truncated_answer_is_a_clear_502_not_retried(setup):
    calls = []

    async def truncating(reader, writer):
        await read_request(reader)
        calls.append(1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial")
        await writer.drain()
        writer.close()

    setup.route(await setup.replica(truncating), await setup.replica(truncating))
    (a,) = responses(await setup.raw(b"POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                                     % HOST))
    assert a[0] == 502 and "while answering" in json.loads(a[2])["error"]
    assert calls == [1]  # the answer had started: not sent to another replica


async def test_refused_connection_is_retried_once_on_another_replica(setup):
    ok = await setup.replica(echo_replica)
    dead = await setup.replica(echo_replica)
    setup.servers[-1].close()
    await setup.servers[-1].wait_closed()
    setup.route(dead, ok)
    for _ in range(4):
        (a,) = responses(await setup.raw(b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % HOST))
        assert a[0] == 200
    backends = setup.act.throttler("ns/svc", "default").backends
    assert not backends[f"r{dead}"].healthy and backends[f"r{ok}"].healthy


async def test_idle_connection_closed_by_the_replica_is_replaced_quietly(setup):
    async def one_shot(reader, writer):  # answers with keep-alive, then closes the idle connection
        await read_request(reader)
        writer.write(ok_answer(b"{}"))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()

    port = await setup.replica(one_shot)
    setup.route(port)
    for _ in range(3):
        (a,) = responses(await setup.raw(b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % HOST))
        assert a[0] == 200
        await asyncio.sleep(0.1)  # the replica has closed the pooled connection by now
    assert setup.act.throttler("ns/svc", "default").backends[f"r{port}"].healthy


async def test_slow_replica_is_504_and_a_gone_client_frees_its_slot(setup):
    started = asyncio.Event()

    async def slow(reader, writer):
        await read_request(reader)
        started.set()
        await asyncio.sleep(10)

    setup.route(await setup.replica(slow))
    t = setup.act.throttler("ns/svc", "default")
    reader, writer = await asyncio.open_connection("127.0.0.1", setup.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % HOST)
    await asyncio.wait_for(started.wait(), 5)
    assert t.inflight == 1
    writer.close()  # the client gives up
    for _ in range(100):
        if t.inflight == 0:
            break
        await asyncio.sleep(0.01)
    assert t.inflight == 0
    (a,) = responses(await setup.raw(b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % HOST))
    assert a[0] == 504 and "did not answer" in json.loads(a[2])["error"]
