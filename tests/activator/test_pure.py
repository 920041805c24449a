"""Pure parts of the activator: host normalization and lookup, the deterministic canary split, and
the per-replica slot accounting (breakers, FIFO hold, deadlines, released slots)."""

from __future__ import annotations

import asyncio

import pytest

from activator.routing import HostIndex, normalize_host
from activator.throttler import SideThrottler, Unavailable
from activator.traffic import CanarySplitter


def test_host_forms():
    idx = HostIndex([{"service": "ns/a", "hosts": ["a.ns.example.com", "a.ns", "a.ns.svc"]}])
    for h in ("a.ns.example.com", "A.NS.example.com:8080", "a.ns", "a.ns.svc", "a.ns.example.com."):
        assert idx.resolve(h)["service"] == "ns/a", h
    assert idx.resolve("b.ns.example.com") is None and idx.resolve(None) is None
    assert normalize_host("[::1]:8080") == "[::1]"


@pytest.mark.parametrize("p", [0, 1, 5, 20, 33, 50, 99, 100])
def test_canary_split_is_exact_over_100(p):
    s = CanarySplitter()
    picks = [s.pick(p) for _ in range(1000)]
    for i in range(0, 1000, 100):
        assert picks[i:i + 100].count("canary") == p


def route(n: int, error: str | None = None) -> dict:
    return {"ready": n > 0, "error": error, "desired": n,
            "endpoints": [{"id": f"r{i}", "host": "127.0.0.1", "http_port": 9000 + i, "grpc_port": None}
                          for i in range(n)]}


async def test_breaker_caps_and_least_loaded():
    t = SideThrottler("ns/a", "default")
    t.update(route(2), capacity=1)
    a = await t.acquire(1)
    b = await t.acquire(1)
    assert {a.id, b.id} == {"r0", "r1"} and a.inflight == b.inflight == 1
    waiter = asyncio.create_task(t.acquire(5))
    await asyncio.sleep(0.01)
    assert not waiter.done() and t.concurrency == 3
    t.release(a)
    c = await asyncio.wait_for(waiter, 1)
    assert c.id == a.id and c.inflight == 1


async def test_fifo_hold_from_zero_and_deadline():
    t = SideThrottler("ns/a", "default")
    t.update(route(0), capacity=0)
    order = []

    async def req(i):
        b = await t.acquire(5)
        order.append(i)
        t.release(b)

    tasks = [asyncio.create_task(req(i)) for i in range(5)]
    await asyncio.sleep(0.01)
    assert len(t.waiters) == 5
    t.update(route(1), capacity=1)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    t.update(route(0), capacity=0)
    with pytest.raises(Unavailable, match="within 0.05s"):
        await t.acquire(0.05)
    assert t.concurrency == 0


async def test_error_fails_held_requests_and_queue_limit():
    t = SideThrottler("ns/a", "default", queue_depth=2)
    t.update(route(0), capacity=0)
    w1 = asyncio.create_task(t.acquire(5))
    w2 = asyncio.create_task(t.acquire(5))
    await asyncio.sleep(0.01)
    with pytest.raises(Unavailable) as full:
        await t.acquire(5)
    assert full.value.retry_after == 1
    t.update(route(0, error="replica command exited (exit code 3)"), capacity=0)
    for w in (w1, w2):
        with pytest.raises(Unavailable, match="exit code 3"):
            await w


async def test_cancelled_waiter_releases_its_place_and_slot():
    t = SideThrottler("ns/a", "default")
    t.update(route(1), capacity=1)
    held = await t.acquire(1)
    w = asyncio.create_task(t.acquire(5))
    await asyncio.sleep(0.01)
    w.cancel()
    with pytest.raises(asyncio.CancelledError):
        await w
    assert len(t.waiters) == 0
    t.release(held)
    assert t.backends["r0"].inflight == 0
    stats = t.take_stats()
    assert stats["concurrency"] == 0 and stats["average_concurrency"] > 0
