"""The replica's HTTP/1.1 server (runtime.protocols.http_server) on loopback with a small API, and the
routes of runtime.protocols.http_api: keep-alive and pipelining in order, 100-continue, HTTP/1.0 and
Connection: close, HEAD, chunked bodies, and every limit as a clear status that closes the connection
(413, 414, 431, 400, 501, 408), idle connections closed, a shutdown that answers what it has read."""

from __future__ import annotations

import asyncio
import json
import time
import zlib

import pytest

from runtime.dataplane import DataPlane
from runtime.metrics import RuntimeMetrics
from runtime.protocols.http_api import HttpApi
from runtime.protocols.http_server import (
    BodyError,
    HttpLimits,
    HttpRequest,
    HttpResponse,
    HttpServer,
    decode_body,
)
from tests.activator.harness import responses
from tests.helpers import free_port

LIMITS = HttpLimits(max_body_bytes=1000, max_request_line=200, max_header_bytes=1000, max_header_fields=10)


class Echo:
    """An API answering each request with what the server parsed; `hold` keeps answers until set."""

    def __init__(self) -> None:
        self.seen: list[HttpRequest] = []
        self.hold = asyncio.Event()
        self.hold.set()

    async def __call__(self, req: HttpRequest, rid: str) -> HttpResponse:
        self.seen.append(req)
        await self.hold.wait()
        body = json.dumps({"method": req.method, "path": req.path, "query": req.query, "rid": rid,
                           "body": req.body.decode("latin-1"), "headers": req.headers}).encode()
        return HttpResponse(200, body)


@pytest.fixture
async def served():
    api = Echo()
    server = HttpServer(api, LIMITS)
    port = free_port()
    await server.start("127.0.0.1", port)
    yield server, api, port
    await server.close(timeout=1)


async def exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send `data`, read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def test_pipelined_requests_are_answered_in_order_with_their_request_ids(served):
    _, _, port = served
    reqs = b"".join(b"POST /p/%d?q=%d HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nX-Request-Id: id-%d\r\n\r\n%d"
                    % (i, i, i, i) for i in range(5))
    out = responses(await exchange(port, reqs + b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    assert [a[0] for a in out] == [200] * 6
    bodies = [json.loads(a[2]) for a in out]
    assert [(b["path"], b["query"], b["body"], b["rid"]) for b in bodies[:5]] == [
        (f"/p/{i}", f"q={i}", str(i), f"id-{i}") for i in range(5)]
    assert [a[1][b"x-request-id"] for a in out[:5]] == [b"id-%d" % i for i in range(5)]
    assert len(bodies[5]["rid"]) == 32  # none given: a new one
    assert out[-1][1][b"connection"] == b"close" and b"connection" not in out[0][1]


async def test_the_read_ahead_count_returns_to_zero_once_answered(served):
    """What pipelined requests count against the read-ahead bound (body and target, queries too) is given
    back exactly as they are answered: a drift would pause a long-lived connection's reading for good."""
    server, _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(b"POST /p?q=%d HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab" % i for i in range(8)))
    for _ in range(8):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
    (conn,) = server.connections
    await until(lambda: not conn.answering, "the writer done")
    assert conn.pending_bytes == 0 and not conn.pending
    writer.close()


class Wire:
    """A transport that keeps what is written (no socket: what happens within one callback shows)."""

    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


async def test_an_answer_that_needs_no_wait_is_written_within_the_read_and_one_that_waits_after_it():
    """The writer starts in the read's own callback (as an eager task): an answer that waits for nothing is
    on the wire when data_received returns, with no task and no turn of the loop; one that waits is
    finished by a task once its future is done, and a request pipelined meanwhile is answered after it.
    While a writer runs, another connection's request starts as a task (concurrent requests wait anyway)."""
    answers: dict[str, asyncio.Future] = {}

    async def api(req: HttpRequest, rid: str) -> HttpResponse:
        if req.path == "/wait":
            answers[req.path] = asyncio.get_running_loop().create_future()
            await answers[req.path]
        return HttpResponse(200, req.path.encode())

    server = HttpServer(api, LIMITS)
    conn, other = server.protocol(), server.protocol()
    wire, other_wire = Wire(), Wire()
    conn.connection_made(wire)  # type: ignore[arg-type]
    other.connection_made(other_wire)  # type: ignore[arg-type]
    tasks = len(asyncio.all_tasks())
    conn.data_received(b"GET /now HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wire.out.endswith(b"\r\n\r\n/now") and not conn.answering and len(asyncio.all_tasks()) == tasks
    conn.data_received(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\nGET /then HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wire.out.endswith(b"/now") and conn.answering and len(conn.pending) == 1  # /then waits its turn
    # not a lone request while another is being answered: a task, as concurrent requests to a batcher are
    other.data_received(b"GET /also HTTP/1.1\r\nHost: x\r\n\r\n")
    assert other_wire.out == b"" and other.answering
    await until(lambda: not other.answering, "the other connection's answer written")
    answers["/wait"].set_result(None)
    await until(lambda: not conn.answering, "the waiting answer written")
    assert [a[2] for a in responses(bytes(wire.out))] == [b"/now", b"/wait", b"/then"]
    assert [a[2] for a in responses(bytes(other_wire.out))] == [b"/also"] and server.writers == 0


async def test_repeated_headers_are_joined_and_names_lower_case(served):
    _, api, port = served
    await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\nConnection: close\r\n\r\n")
    assert api.seen[0].headers["x-a"] == "1, 2" and api.seen[0].headers["host"] == "x"


async def test_expect_100_continue_chunked_bodies_and_http_1_0(served):
    _, _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hi")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    writer.close()
    chunked = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" \
              b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    (answer,) = responses(await exchange(port, chunked))
    assert json.loads(answer[2])["body"] == "abcde"
    (answer,) = responses(await exchange(port, b"GET /old HTTP/1.0\r\n\r\n"))  # closed after it
    assert answer[0] == 200 and answer[1][b"connection"] == b"close"


def _deflate(data: bytes, wbits: int) -> bytes:
    c = zlib.compressobj(wbits=wbits)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize(("encoding", "wbits"), [("gzip", 31), ("x-gzip", 31), ("deflate", 15), ("deflate", -15)])
def test_compressed_bodies_are_decoded_within_the_limit(encoding, wbits):
    assert decode_body(_deflate(b"abc" * 100, wbits), encoding, 300) == b"abc" * 100
    with pytest.raises(BodyError, match="larger than 299 bytes once decompressed") as e:
        decode_body(_deflate(b"a" * 10_000_000, wbits), encoding, 299)  # a bomb stops at the limit
    assert e.value.status == 413
    with pytest.raises(BodyError, match="truncated") as e:
        decode_body(_deflate(b"abc" * 100, wbits)[:-4], encoding, 300)
    assert e.value.status == 400


@pytest.mark.parametrize(("body", "encoding", "status"), [
    (b"not gzip", "gzip", 400), (b"x", "br", 415), (b"x", "identity", 200), (b"x", "", 200)])
def test_bad_or_unknown_encodings(body, encoding, status):
    if status == 200:
        assert decode_body(body, encoding, 10) == body
    else:
        with pytest.raises(BodyError) as e:
            decode_body(body, encoding, 10)
        assert e.value.status == status


async def test_a_gzip_body_reaches_the_api_decoded(served):
    _, _, port = served
    body = _deflate(b'{"a": 1}', 31)
    (answer,) = responses(await exchange(port, b"POST /g HTTP/1.1\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n"
                                               b"Connection: close\r\n\r\n%s" % (len(body), body)))
    assert answer[0] == 200 and json.loads(answer[2])["body"] == '{"a": 1}'
    (answer,) = responses(await exchange(port, b"POST /g HTTP/1.1\r\nContent-Encoding: br\r\nContent-Length: 1\r\n"
                                               b"Connection: close\r\n\r\nx"))
    assert answer[0] == 415


async def test_head_has_the_length_and_no_body(served):
    _, _, port = served
    raw = await exchange(port, b"HEAD /h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) > 0
    assert rest == b""


@pytest.mark.parametrize(("data", "status", "reason"), [
    (b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n", 413, "larger than 1000 bytes"),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n" + b"a" * 1001 + b"\r\n0\r\n\r\n",
     413, "larger than 1000 bytes"),
    (b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "longer than 200 bytes"),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(11)) + b"\r\n", 431, "more than 10"),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 1200 + b"\r\n\r\n", 431, "larger than 1000 bytes"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000, 431, "larger than 1000 bytes"),  # never ends
    (b"NOT HTTP AT ALL\r\n\r\n", 400, "malformed HTTP request"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 501, "not supported"),
])
async def test_limits_answer_a_clear_status_and_close(served, data, status, reason):
    _, api, port = served
    (answer,) = responses(await exchange(port, data))
    assert answer[0] == status and reason in json.loads(answer[2])["error"], answer
    assert answer[1][b"connection"] == b"close" and answer[1][b"x-request-id"]
    assert not api.seen
    (answer,) = responses(await exchange(port, b"GET /still HTTP/1.1\r\nConnection: close\r\n\r\n"))
    assert answer[0] == 200  # and the server goes on


async def until(predicate, what: str, timeout: float = 5.0) -> None:
    """Poll `predicate` on the loop until it holds, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.01)


async def test_slow_clients_get_408_and_idle_connections_are_closed(served):
    server, _, port = served
    slow_head = await asyncio.open_connection("127.0.0.1", port)
    slow_head[1].write(b"POST /x HTTP/1.1\r\nHost: x\r\n")
    slow_body = await asyncio.open_connection("127.0.0.1", port)
    slow_body[1].write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
    idle = await asyncio.open_connection("127.0.0.1", port)
    idle[1].write(b"GET /once HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(idle[0].readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    await idle[0].readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
    states = lambda: sorted(c.state for c in server.connections)  # noqa: E731
    await until(lambda: states() == [0, 1, 2], "one idle, one reading a head, one a body")  # IDLE, HEAD, BODY
    server.expire_due(time.monotonic() + 1000)  # the sweep, its clock far ahead
    head_answer = responses(await asyncio.wait_for(slow_head[0].read(), 5))
    body_answer = responses(await asyncio.wait_for(slow_body[0].read(), 5))
    assert head_answer[0][0] == 408 and "headers not received within 10s" in json.loads(head_answer[0][2])["error"]
    assert body_answer[0][0] == 408 and "body not received within 60s" in json.loads(body_answer[0][2])["error"]
    assert await asyncio.wait_for(idle[0].read(), 5) == b""  # closed
    for _, writer in (slow_head, slow_body, idle):
        writer.close()


async def test_close_answers_what_it_has_read_then_closes(served):
    server, api, port = served
    api.hold.clear()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /busy HTTP/1.1\r\nHost: x\r\n\r\n")
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    await until(lambda: api.seen, "the request reached the API")
    closing = asyncio.create_task(server.close(timeout=5))
    await asyncio.sleep(0)
    api.hold.set()
    (answer,) = responses(await asyncio.wait_for(reader.read(), 5))
    assert answer[0] == 200 and answer[1][b"connection"] == b"close"
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""
    await closing
    writer.close()
    idle_writer.close()


# ---- the API's routes (no model loaded: inference is 503, the rest answers) ----------------------

@pytest.mark.parametrize(("method", "path", "status", "allow"), [
    ("GET", "/healthz", 200, None), ("HEAD", "/v2/health/live", 200, None), ("GET", "/v2", 200, None),
    ("GET", "/ready", 503, None), ("GET", "/metrics", 200, None),
    ("POST", "/v2/models/m/infer", 503, None), ("POST", "/m/prediction", 503, None),
    ("POST", "/v2/models/other/infer", 404, None), ("POST", "/v2/models/m%20x/infer", 404, None),
    ("GET", "/v2/models/m/infer", 405, "POST"), ("PUT", "/m/prediction", 405, "POST"),
    ("POST", "/healthz", 405, "GET, HEAD"), ("GET", "/v2/models/other", 404, None),
    ("GET", "/v2/models/m/ready", 503, None), ("GET", "/nothing/here", 404, None), ("GET", "/v2/models/", 404, None),
])
async def test_routes(method, path, status, allow):
    api = HttpApi(DataPlane("m", RuntimeMetrics()), RuntimeMetrics())
    resp = await api(HttpRequest(method, path, "", {}, b"{}"), "rid")
    assert resp.status == status, resp.body
    assert (resp.headers or {}).get("Allow") == allow
    if status >= 400:
        assert json.loads(resp.body)["error"]


async def test_a_percent_encoded_model_name_is_decoded():
    api = HttpApi(DataPlane("my model", RuntimeMetrics()), RuntimeMetrics())
    resp = await api(HttpRequest("POST", "/v2/models/my%20model/infer", "", {}, b"{}"), "rid")
    assert resp.status == 503 and "my model is not ready" in json.loads(resp.body)["error"]
