"""Mutated HTTP requests against the activator's front door (seeded, so a failure replays): every input
gets an HTTP answer with a known status and the connection ends — no hang, no crash, no leaked budget
or slot — and a normal request is served afterwards."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from activator.limits import FrontLimits
from tests.activator.harness import HOST, echo_replica, responses
from tests.helpers import mutate

VALID = [
    b"POST /v2/models/m/infer?x=1 HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 13\r\n"
    b"X-Request-Id: abc\r\n\r\n{\"inputs\": []}" % HOST,
    b"GET /ready HTTP/1.1\r\nHost: %s\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n\r\n" % HOST,
    b"POST / HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" % HOST,
]
TOKENS = [b"\r\n", b"\r\n\r\n", b":", b" ", b"\x00", b"\xff", b"HTTP/1.1", b"Content-Length: 99999999999\r\n",
          b"Transfer-Encoding: chunked\r\n", b"Host: other\r\n", b"http://a:99999/", b"%", b"\t", b"0\r\n\r\n"]
STATUSES = {200, 400, 404, 408, 413, 414, 431, 501, 503}


@pytest.fixture
def front_limits() -> FrontLimits:
    return FrontLimits(max_body_bytes=1000, header_timeout=0.5, body_timeout=0.5, idle_timeout=0.5)


async def test_mutated_requests_always_get_an_answer_and_the_front_survives(setup):
    setup.route(await setup.replica(echo_replica))
    rng = random.Random(20261125)
    cases = [mutate(rng, rng.choice(VALID), TOKENS, 8) for _ in range(300)]
    sem = asyncio.Semaphore(20)

    async def one(data: bytes) -> tuple[bytes, bytes]:
        async with sem:
            return data, await setup.raw(data, timeout=10)

    seen: dict[int, int] = {}
    for data, raw in await asyncio.gather(*(one(c) for c in cases)):
        if not raw:  # nothing at all: only allowed for input with no request line yet (closed when idle)
            assert b"\r\n" not in data or not data.strip(), data
            continue
        assert raw.startswith(b"HTTP/1.1 "), (data, raw[:100])
        status = int(raw[9:12])
        assert status in STATUSES, (data, raw[:300])
        seen[status] = seen.get(status, 0) + 1
        if status >= 400:
            head, _, rest = raw.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            assert "error" in json.loads(rest[:length]), raw[:300]
    assert seen.get(200) and seen.get(400)  # the mutations reach both sides of the parser
    assert setup.front.budget.used == 0 and setup.throttler().inflight == 0
    (a,) = responses(await setup.raw(b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % HOST))
    assert a[0] == 200
