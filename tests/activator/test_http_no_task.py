"""The HTTP front door's requests sent with no task (HttpFront.serve_now: a free slot and a pooled
connection to the replica): answered as the worker task answers them, pipelined ones in order, the
deadline and a client that leaves handled, every slot and byte given back, each counted and logged once."""

from __future__ import annotations

import asyncio
import json

from activator.http_front import SIDE_HEADER
from tests.activator.harness import HOST, Setup, echo_replica, ok_answer, read_request, responses

GET = b"GET /%s HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n"


def watch_no_task(setup: Setup) -> list[bool]:
    """Record, per request the connection starts, whether it was sent with no task."""
    seen: list[bool] = []
    serve_now = setup.front.serve_now

    def spy(req, deliver):
        sent = serve_now(req, deliver)
        seen.append(sent is not None)
        return sent

    setup.front.serve_now = spy  # type: ignore[method-assign]
    return seen


def sample(setup: Setup, name: str, **labels: str) -> float | None:
    setup.dispatcher.flush()
    return setup.metrics.registry.get_sample_value(f"elasticserving_activator_{name}",
                                                  {"service": "ns/svc", "side": "default", **labels})


async def test_pipelined_requests_on_a_pooled_connection_go_with_no_task_in_order(setup):
    setup.route(await setup.replica(echo_replica))
    seen = watch_no_task(setup)
    (warm,) = responses(await setup.raw(b"GET /warm HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % HOST))
    assert warm[0] == 200 and seen == [False]  # no pooled connection yet: the task connects
    raw = await setup.raw(GET % b"a" + GET % b"b" + b"GET /c HTTP/1.1\r\nHost: %s\r\nX-Request-Id: rid-c\r\n"
                          b"Connection: keep-alive, X-Drop\r\nX-Drop: 1\r\nConnection: close\r\n\r\n" % HOST)
    answers = responses(raw)
    assert [a[0] for a in answers] == [200, 200, 200] and seen == [False, True, True, True]
    got = [json.loads(a[2]) for a in answers]
    assert [g["line"] for g in got] == ["GET /a HTTP/1.1", "GET /b HTTP/1.1", "GET /c HTTP/1.1"]
    # what the worker task's path forwards and answers, the same with no task
    forwarded = got[2]["headers"]
    assert forwarded["x-request-id"] == "rid-c" and forwarded["x-forwarded-host"] == HOST.decode()
    assert "x-drop" not in forwarded and "connection" not in forwarded
    assert answers[2][1][b"x-request-id"] == b"rid-c"
    assert all(a[1][SIDE_HEADER] == b"default" for a in answers) and answers[2][1][b"connection"] == b"close"
    assert sample(setup, "requests_total", code="200") == 4 and sample(setup, "proxy_duration_seconds_count") == 4
    assert [line["status"] for line in setup.log_lines()] == ["200"] * 4
    assert setup.throttler().inflight == 0 and setup.front.budget.used == 0


async def test_the_deadline_and_a_broken_replica_answer_504_and_502_with_no_task():
    setup = Setup(request_timeout=0.5)
    await setup.start()
    stall, hung_up = asyncio.Event(), asyncio.Event()

    async def replica(reader, writer):
        try:
            while True:
                line, _, _ = await read_request(reader)
                if b"/stall" in line:
                    stall.set()
                    await reader.read()  # until the activator closes it
                    hung_up.set()
                    return
                if b"/break" in line:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
                    await writer.drain()
                    writer.close()
                    return
                writer.write(ok_answer(b"{}"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    try:
        setup.route(await setup.replica(replica))
        seen = watch_no_task(setup)
        reader, writer = await asyncio.open_connection("127.0.0.1", setup.port)

        async def ask(path: bytes) -> tuple[int, dict, bytes]:
            writer.write(GET % path)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(next(v for k, v in (ln.split(b":", 1) for ln in head.split(b"\r\n")[1:-2])
                              if k.lower() == b"content-length"))
            (answer,) = responses(head + await reader.readexactly(length))
            return answer

        assert (await ask(b"warm"))[0] == 200
        assert (await ask(b"warm"))[0] == 200
        timed_out = await ask(b"stall")
        assert timed_out[0] == 504 and "did not answer within 0.5s" in json.loads(timed_out[2])["error"]
        await asyncio.wait_for(stall.wait(), 5)
        await asyncio.wait_for(hung_up.wait(), 5)  # the timed-out exchange's connection is closed, not reused:
        assert (await ask(b"warm"))[0] == 200  # the task connects again
        assert (await ask(b"warm"))[0] == 200
        failed = await ask(b"break")
        assert failed[0] == 502 and "failed after the request was sent" in json.loads(failed[2])["error"]
        assert seen == [False, True, True, False, True, True]
        assert sample(setup, "requests_total", code="504") == 1 and sample(setup, "requests_total", code="502") == 1
        assert setup.throttler().inflight == 0 and setup.front.budget.used == 0
        writer.close()
    finally:
        setup.close()


async def test_a_client_that_leaves_frees_its_slot_and_the_replica_connection_with_no_task(setup):
    got, closed = asyncio.Event(), asyncio.Event()

    async def replica(reader, writer):
        line, _, _ = await read_request(reader)
        writer.write(ok_answer(b"{}"))
        await writer.drain()
        await read_request(reader)
        got.set()
        await reader.read()  # until the activator closes it
        closed.set()

    setup.route(await setup.replica(replica))
    seen = watch_no_task(setup)
    reader, writer = await asyncio.open_connection("127.0.0.1", setup.port)
    writer.write(GET % b"warm")
    await asyncio.wait_for(reader.readuntil(b"{}"), 5)
    writer.write(GET % b"slow")
    await asyncio.wait_for(got.wait(), 5)
    assert seen == [False, True] and setup.throttler().inflight == 1
    writer.close()  # the client gives up
    await asyncio.wait_for(closed.wait(), 5)  # the exchange was cancelled: its connection closed
    assert setup.throttler().inflight == 0 and setup.front.budget.used == 0
    assert [line["status"] for line in setup.log_lines()] == ["200", "499"]


async def test_one_pooled_connection_reads_answers_of_every_framing_in_turn(setup):
    """A keep-alive connection's parser goes on from one answer to the next (activator.upstream): chunked,
    sized, 204 and sized again on one replica connection, each answered whole to its own request."""
    connections = 0
    framed = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n0\r\n\r\n",
              ok_answer(b"two"), b"HTTP/1.1 204 No Content\r\nX-N: 3\r\n\r\n", ok_answer(b"four")]

    async def replica(reader, writer):
        nonlocal connections
        connections += 1
        try:
            for answer in framed:
                await read_request(reader)
                writer.write(answer)
                await writer.drain()
            await reader.read()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    setup.route(await setup.replica(replica))
    raw = await setup.raw(GET % b"1" + GET % b"2" + GET % b"3"
                          + b"GET /4 HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % HOST)
    answers = responses(raw)
    assert [(a[0], a[2]) for a in answers] == [(200, b"one"), (200, b"two"), (204, b""), (200, b"four")]
    assert answers[2][1][b"x-n"] == b"3" and connections == 1  # the one pooled connection, four answers
    assert setup.throttler().inflight == 0 and setup.front.budget.used == 0
