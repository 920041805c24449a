"""The HTTP front door (activator.http_front + dispatcher + upstream) on loopback, with routes set by
hand and small raw replicas, some misbehaving: pipelining, 100-continue, Connection: close, upgrades,
broken and truncated answers, idle connections closed by the replica, retries only when never sent."""

from __future__ import annotations

import asyncio
import json

from activator.prober import Prober
from tests.activator.harness import HOST, Setup, echo_replica, ok_answer, poll, read_request, responses


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
    # an absolute-form target with an invalid port: a 400, not a connection left hanging
    (a,) = responses(await setup.raw(b"GET http://a:99999/ HTTP/1.1\r\nHost: %s\r\n\r\n" % HOST))
    assert a[0] == 400 and a[1][b"connection"] == b"close"


async def test_admin_paths_are_not_served_on_the_public_port(setup):
    for path in (b"/metrics", b"/healthz", b"/ready"):
        (a,) = responses(await setup.raw(b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % path))
        assert a[0] == 404, path


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
    assert a[0] == 502 and "after the request was sent" in json.loads(a[2])["error"]
    assert calls == [1]  # the answer had started: not sent to another replica


async def test_a_connection_broken_after_the_request_was_written_is_not_resent(setup):
    calls = []

    async def vanishing(reader, writer):  # reads the whole request, then closes without a byte
        await read_request(reader)
        calls.append(1)
        writer.close()

    setup.route(await setup.replica(vanishing), await setup.replica(vanishing))
    (a,) = responses(await setup.raw(b"POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                                     % HOST))
    assert a[0] == 502 and "before answering" in json.loads(a[2])["error"]
    assert calls == [1]  # the replica may have acted on it: never a second time
    assert setup.metrics.retries.labels("ns/svc", "default").value == 0


async def test_refused_connection_is_retried_once_on_another_replica(setup):
    ok = await setup.replica(echo_replica)
    dead = await setup.replica(echo_replica)
    setup.servers[-1].close()
    await setup.servers[-1].wait_closed()
    setup.route(dead, ok)
    for _ in range(4):
        (a,) = responses(await setup.raw(b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % HOST))
        assert a[0] == 200
    backends = setup.throttler().backends
    assert not backends[f"r{dead}"].healthy and backends[f"r{ok}"].healthy
    assert setup.metrics.retries.labels("ns/svc", "default").value >= 1


async def test_idle_connection_closed_by_the_replica_is_replaced_quietly(setup):
    closed = asyncio.Event()

    async def one_shot(reader, writer):  # answers with keep-alive, then closes the idle connection
        await read_request(reader)
        writer.write(ok_answer(b"{}"))
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        closed.set()

    port = await setup.replica(one_shot)
    setup.route(port)
    for _ in range(3):
        closed.clear()
        (a,) = responses(await setup.raw(b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % HOST))
        assert a[0] == 200
        await asyncio.wait_for(closed.wait(), 5)
        await asyncio.sleep(0.05)  # let the pooled connection see the EOF (event-driven above; this is the read)
    assert setup.throttler().backends[f"r{port}"].healthy


async def test_slow_replica_is_504_and_a_gone_client_frees_its_slot(setup):
    started = asyncio.Event()

    async def slow(reader, writer):
        await read_request(reader)
        started.set()
        await asyncio.sleep(10)

    setup.route(await setup.replica(slow))
    t = setup.throttler()
    reader, writer = await asyncio.open_connection("127.0.0.1", setup.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % HOST)
    await asyncio.wait_for(started.wait(), 5)
    assert t.inflight == 1
    writer.close()  # the client gives up
    for _ in range(500):
        if t.inflight == 0:
            break
        await asyncio.sleep(0.01)
    assert t.inflight == 0
    (a,) = responses(await setup.raw(b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % HOST))
    assert a[0] == 504 and "did not answer" in json.loads(a[2])["error"]


async def test_request_id_is_kept_or_made_forwarded_returned_and_logged(setup):
    setup.route(await setup.replica(echo_replica))
    raw = await setup.raw(b"GET /a HTTP/1.1\r\nHost: %s\r\nX-Request-Id: abc-123\r\n\r\n"
                          b"GET /b HTTP/1.1\r\nHost: %s\r\nX-Request-Id: bad id\r\nConnection: close\r\n\r\n"
                          % (HOST, HOST))
    a, b = responses(raw)
    assert a[1][b"x-request-id"] == b"abc-123" and json.loads(a[2])["headers"]["x-request-id"] == "abc-123"
    made = b[1][b"x-request-id"].decode()
    assert made != "bad id" and len(made) == 32 and json.loads(b[2])["headers"]["x-request-id"] == made
    lines = setup.log_lines()
    assert [(ln["request_id"], ln["service"], ln["side"], ln["status"]) for ln in lines] == [
        ("abc-123", "ns/svc", "default", "200"), (made, "ns/svc", "default", "200")]
    assert all(ln["replica"].startswith("r") and ln["duration_ms"] >= 0 for ln in lines)


async def test_a_lone_replica_refusing_at_first_answers_once_the_prober_hears_it():
    """The only replica refuses the first connect (a lost SYN or a port not yet open, fresh from zero):
    the request is held until the real prober hears that replica answer again, then answered by it,
    not held until the deadline for a second replica that never comes."""
    s = Setup(request_timeout=30.0)
    await s.start()
    gone = await asyncio.start_server(echo_replica, "127.0.0.1", 0)
    port = gone.sockets[0].getsockname()[1]
    gone.close()
    await gone.wait_closed()
    s.route(port)
    request = asyncio.create_task(s.raw(b"GET /late HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % HOST,
                                        timeout=30))
    retries = s.metrics.retries.labels("ns/svc", "default")

    async def refused() -> bool:
        return retries.value == 1

    await poll(refused, 10, "the refused connect, the replica out of rotation")
    assert not s.throttler().backends[f"r{port}"].healthy and not request.done()
    prober = asyncio.create_task(Prober(s.dispatcher.sides).run())
    back = await asyncio.start_server(echo_replica, "127.0.0.1", port)
    try:
        (answer,) = responses(await request)
        assert answer[0] == 200 and json.loads(answer[2])["line"] == "GET /late HTTP/1.1"
        assert retries.value == 1
    finally:
        prober.cancel()
        back.close()
        s.close()


async def test_the_answers_own_hop_by_hop_headers_stay_on_its_hop(setup):
    async def replica(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()
                return
            writer.write(ok_answer(b"{}", b"Connection: keep-alive, X-Hop-Only\r\nX-Hop-Only: 1\r\nKeep-Alive: "
                                          b"timeout=5\r\nX-Request-Id: the-replicas\r\nX-Kept: yes\r\n"))

    setup.route(await setup.replica(replica))
    raw = await setup.raw(b"GET /a HTTP/1.1\r\nHost: %s\r\nX-Request-Id: mine\r\n\r\n"
                          b"GET /b HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (HOST, HOST))
    for status, headers, _ in responses(raw):
        assert status == 200 and headers[b"x-kept"] == b"yes"
        assert not {b"x-hop-only", b"keep-alive"} & set(headers)
        assert headers[b"x-request-id"] != b"the-replicas"  # the activator's id of this request
    assert responses(raw)[0][1][b"x-request-id"] == b"mine"


async def test_a_replica_sending_an_endless_or_crowded_head_gets_a_clear_502(setup):
    async def endless(reader, writer):  # a head that never ends, sent until the activator hangs up
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        try:
            while True:
                writer.write(b"X-Filler: " + b"f" * 1000 + b"\r\n")
                await writer.drain()
        except ConnectionError:
            writer.close()

    async def crowded(reader, writer):  # a complete head of 150 fields in one write
        await read_request(reader)
        writer.write(ok_answer(b"{}", b"".join(b"X-F%d: v\r\n" % i for i in range(150))))
        await writer.drain()

    for replica, reason in ((endless, f"head is larger than {64 * 1024} bytes"),
                            (crowded, "more than 100 header fields")):
        setup.route(await setup.replica(replica))
        (a,) = responses(await setup.raw(b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % HOST,
                                         timeout=10))
        assert a[0] == 502 and reason in json.loads(a[2])["error"], a
    assert setup.front.budget.used == 0
