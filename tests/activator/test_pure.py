"""Pure parts of the activator: host normalization and lookup, routes applied as full tables and
deltas, the deterministic canary split, the per-replica slot accounting (breakers, FIFO hold,
deadlines, released slots), each activator's share of a replica, which route updates to accept, and
the status and metric labels of each refusal."""

from __future__ import annotations

import asyncio

import pytest

from activator import grpc_front, http_front
from activator.autoscaler_link import accept
from activator.dispatcher import REJECTED
from activator.main import index_source, stable_index
from activator.outcomes import Failure
from activator.routing import CanarySplitter, RouteTable, normalize_host
from activator.throttler import SideThrottler, shares
from autoscaler.wire import Endpoint, RoutesUpdate, SideRoute
from runtime.errors import HTTP_STATUS
from tests.activator.harness import route


def test_host_forms():
    table = RouteTable([route("ns/a")])
    for h in ("a.ns.example.com", "A.NS.example.com:8080", "a.ns", "a.ns.example.com."):
        assert table.resolve(h).service == "ns/a", h
    assert table.resolve("b.ns.example.com") is None and table.resolve(None) is None
    assert normalize_host("[::1]:8080") == "[::1]"


def test_full_tables_replace_and_deltas_touch_only_named_services():
    table = RouteTable()
    assert table.apply(RoutesUpdate(epoch="e", version=1, full=True, services=(route("ns/a"), route("ns/b")))) == []
    gone = table.apply(RoutesUpdate(epoch="e", version=2, full=False, services=(route("ns/c", canary_percent=5),),
                                    removed=("ns/a", "ns/never")))
    assert gone == ["ns/a"] and sorted(table.routes) == ["ns/b", "ns/c"]
    assert table.resolve("c.ns").canary_percent == 5 and table.resolve("a.ns") is None
    assert table.apply(RoutesUpdate(epoch="f", version=1, full=True, services=(route("ns/c"),))) == ["ns/b"]
    assert sorted(table.routes) == ["ns/c"]


@pytest.mark.parametrize("p", [0, 1, 5, 20, 33, 50, 99, 100])
def test_canary_split_is_exact_over_100(p):
    s = CanarySplitter()
    picks = [s.pick(p) for _ in range(1000)]
    for i in range(0, 1000, 100):
        assert picks[i:i + 100].count("canary") == p


def test_side_pinning():
    table = RouteTable([route("ns/a", canary=(), canary_percent=0), route("ns/b")])
    a, b = table.resolve("a.ns"), table.resolve("b.ns")
    assert [table.pick_side(a, pin) for pin in ("true", "YES", "false", "")] == ["canary", "canary", "default",
                                                                                  "default"]
    assert table.pick_side(b, "true") is None and table.pick_side(b, "") == "default"


@pytest.mark.parametrize(("name", "pods", "cc", "activators", "index", "expected"), [
    ("unlimited: every pod, no cap", 3, 0, 2, 1, [None, None, None]),
    ("one activator: full cc everywhere", 3, 4, 1, 0, [4, 4, 4]),
    ("pods == N: one pod each", 2, 1, 2, 0, [1, 0]),
    ("pods == N, the other one", 2, 1, 2, 1, [0, 1]),
    ("pods > N: j % N", 5, 3, 2, 1, [0, 3, 0, 3, 0]),
    ("pods > N, index 0", 5, 3, 2, 0, [3, 0, 3, 0, 3]),
    ("pods < N: shared pod, floor(cc / sharers)", 1, 10, 3, 2, [3]),
    ("pods < N: cc too small to share -> none", 1, 1, 2, 0, [0]),
    ("pods < N: uneven sharers", 2, 5, 3, 0, [2, 0]),  # activators 0 and 2 share pod 0
    ("pods < N: alone on its pod", 2, 5, 3, 1, [0, 5]),
    ("no pods", 0, 4, 2, 0, []),
    ("index beyond N wraps", 2, 1, 2, 3, [0, 1]),
])
def test_capacity_shares(name, pods, cc, activators, index, expected):
    ids = [f"p{j}" for j in range(pods)]
    got = shares(list(reversed(ids)), cc, activators, index)  # input order does not matter: sorted by id
    assert [got[p] for p in ids] == expected, name


@pytest.mark.parametrize(("pods", "cc", "activators"), [(p, c, n) for p in range(0, 6) for c in range(0, 5)
                                                          for n in range(1, 5)])
def test_activators_together_never_exceed_a_pods_concurrency(pods, cc, activators):
    ids = [f"p{j}" for j in range(pods)]
    per_pod = {p: 0 for p in ids}
    for a in range(activators):
        for p, slots in shares(ids, cc, activators, a).items():
            if slots is None:
                assert cc == 0
            else:
                per_pod[p] += slots
    if cc:
        assert all(v <= cc for v in per_pod.values())
        if pods >= activators:
            assert all(v == cc for v in per_pod.values())  # nothing wasted once every activator has pods


def test_stable_index_is_stable_and_in_range():
    assert stable_index("act-1", 3) == stable_index("act-1", 3)
    assert {stable_index(f"a{i}", 4) for i in range(50)} == {0, 1, 2, 3}


U = RoutesUpdate


@pytest.mark.parametrize(("held", "update", "ok"), [
    (None, U(epoch="e", version=3, full=True), True),
    (None, U(epoch="e", version=3, full=False), False),  # a delta needs a base
    (("e", 3), U(epoch="e", version=4, full=False), True),
    (("e", 3), U(epoch="e", version=3, full=False), False),  # not newer
    (("e", 3), U(epoch="e", version=2, full=True), False),  # an older table never replaces a newer one
    (("e", 3), U(epoch="f", version=1, full=True), True),  # a new leader: full table only
    (("e", 3), U(epoch="f", version=9, full=False), False),
])
def test_which_route_updates_are_accepted(held, update, ok):
    assert accept(held, update) is ok


def side_route(n: int, error: str | None = None) -> SideRoute:
    return SideRoute(ready=n > 0, error=error, desired=n,
                     endpoints=tuple(Endpoint(id=f"r{i}", host="127.0.0.1", http_port=9000 + i) for i in range(n)))


async def test_breaker_caps_and_least_loaded():
    t = SideThrottler("ns/a", "default")
    t.update(side_route(2), 1)
    a = await t.acquire(1)
    b = await t.acquire(1)
    assert {a.id, b.id} == {"r0", "r1"} and a.inflight == b.inflight == 1
    waiter = asyncio.create_task(t.acquire(5))
    await asyncio.sleep(0.01)
    assert not waiter.done() and t.concurrency == 3
    t.release(a)
    c = await asyncio.wait_for(waiter, 1)
    assert c.id == a.id and c.inflight == 1


def test_requests_on_replicas_that_left_the_route_count_until_released():
    t = SideThrottler("ns/a", "default")
    t.update(side_route(2), 1)
    gone, moved = t.try_acquire(), t.try_acquire()
    assert gone is not None and moved is not None and t.inflight == 2
    # r0 leaves the route, r1 comes back at another address (a new replica under the same id)
    t.update(SideRoute(ready=True, desired=1, endpoints=(Endpoint(id=moved.id, host="127.0.0.2",
                                                                  http_port=9100),)), 1)
    assert t.concurrency == 2 and t.backends[moved.id] is not moved  # still load for the autoscaler
    fresh = t.try_acquire()
    assert fresh is not None and fresh.host == "127.0.0.2" and t.inflight == 3
    t.release(gone)
    t.release(moved)  # the old replica's release leaves the new one's count alone
    assert t.inflight == 1 and fresh.inflight == 1 and t.concurrency == 1
    t.release(fresh)
    assert t.inflight == 0 and fresh.inflight == 0


async def test_shares_are_enforced_by_the_throttler():
    t = SideThrottler("ns/a", "default")
    t.update(side_route(1), 1, activators=2, index=0)  # one pod, cc 1, two activators: none for either
    assert not t.has_ready()
    w = asyncio.create_task(t.acquire(5))
    await asyncio.sleep(0.01)
    assert not w.done() and t.concurrency == 1  # held, and counted as load
    t.update(side_route(2), 1, activators=2, index=0)  # a second pod: r0 is ours at full cc
    b = await asyncio.wait_for(w, 1)
    assert b.id == "r0" and t.backends["r1"].slots == 0


async def test_fifo_hold_from_zero_and_deadline():
    t = SideThrottler("ns/a", "default")
    t.update(side_route(0), 0)
    order = []

    async def req(i):
        b = await t.acquire(5)
        order.append(i)
        t.release(b)

    tasks = [asyncio.create_task(req(i)) for i in range(5)]
    await asyncio.sleep(0.01)
    assert len(t.waiters) == 5
    t.update(side_route(1), 1)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    t.update(side_route(0), 0)
    with pytest.raises(Failure, match="within 0.05s"):
        await t.acquire(0.05)
    assert t.concurrency == 0


async def test_error_fails_held_requests_and_queue_limit():
    t = SideThrottler("ns/a", "default", queue_depth=2)
    t.update(side_route(0), 0)
    w1 = asyncio.create_task(t.acquire(5))
    w2 = asyncio.create_task(t.acquire(5))
    await asyncio.sleep(0.01)
    with pytest.raises(Failure) as full:
        await t.acquire(5)
    assert full.value.retry_after == 1 and full.value.code == "overloaded"
    t.update(side_route(0, error="replica command exited (exit code 3)"), 0)
    for w in (w1, w2):
        with pytest.raises(Failure, match="exit code 3"):
            await w


async def test_cancelled_waiter_releases_its_place_and_slot():
    t = SideThrottler("ns/a", "default")
    t.update(side_route(1), 1)
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
    assert stats.concurrency == 0 and stats.average_concurrency > 0 and stats.service == "ns/a"


@pytest.mark.parametrize(("fixed", "sent", "activators", "want"), [
    pytest.param(1, 0, 2, 1, id="the flag wins"),
    pytest.param(None, 1, 2, 1, id="the autoscaler's index"),
    pytest.param(None, None, 1, 0, id="alone: index 0"),
])
def test_index_source(fixed, sent, activators, want):
    update = RoutesUpdate(epoch="e", version=1, full=True, activators=activators, activator_index=sent)
    assert index_source("act-1", fixed)(update) == want


def test_index_source_falls_back_to_a_stable_hash_of_the_id():
    update = RoutesUpdate(epoch="e", version=1, full=True, activators=4)
    assert index_source("act-1", None)(update) == stable_index("act-1", 4) == index_source("act-1", None)(update)


# ---- releases: tag hosts, the split with an outgoing version ------------------------------------------
@pytest.mark.parametrize(("host", "service", "tag"), [
    ("canary-a.ns.example.com", "ns/a", "canary"),
    ("CANARY-A.ns.example.com:8080", "ns/a", "canary"),
    ("canary-a.ns", "ns/a", "canary"),
    ("default-a.ns.example.com", "ns/default-a", None),  # a service's own name wins over a tag of another
    ("default-a.ns", "ns/default-a", None),
    ("a.ns.example.com", "ns/a", None),
    ("default-b.ns.example.com", "ns/b", "default"),
    ("canary-b.ns.example.com", None, None),  # b has no canary: no canary tag
])
def test_tag_hosts(host, service, tag):
    table = RouteTable([route("ns/a", canary=(), tags=True), route("ns/default-a", tags=True),
                        route("ns/b", tags=True)])
    found = table.target(host)
    assert (found.route.service, found.tag) == (service, tag) if service else found is None


@pytest.mark.parametrize(("canary", "previous"), [(0, 99), (10, 56), (33, 33), (1, 1), (0, 0), (50, 50), (0, 100)])
def test_three_way_split_is_exact_over_100(canary, previous):
    s = CanarySplitter()
    picks = [s.pick(canary, previous) for _ in range(500)]
    for i in range(0, 500, 100):
        window = picks[i:i + 100]
        assert (window.count("canary"), window.count("previous")) == (canary, previous)
        assert window.count("default") == 100 - canary - previous


def test_the_split_goes_smoothly_when_shares_move():
    s = CanarySplitter()
    picks = [s.pick(0, 100 - pct) for pct in (1, 34, 67, 100) for _ in range(100)]
    windows = [picks[i:i + 100].count("default") for i in range(0, 400, 100)]
    assert windows == [1, 34, 67, 100]
    assert all(picks[i:i + 10].count("default") <= 7 for i in range(100, 200, 10))  # spread, not a burst


def test_a_side_without_a_share_is_never_picked_whatever_credit_it_had():
    """A canary at 50 %, then promoted (no canary), then a version change ramping: found on a real node,
    where a request went to the gone canary on credit left from the 50 % split."""
    s = CanarySplitter()
    for _ in range(37):  # stop mid-cycle: credits are left over
        s.pick(50, 0)
    picks = [s.pick(0, previous) for previous in (99, 94, 89, 50, 0) for _ in range(100)]
    assert "canary" not in picks
    assert [picks[i:i + 100].count("previous") for i in range(0, 500, 100)] == [99, 94, 89, 50, 0]


def test_pick_side_uses_the_previous_share_and_pins():
    table = RouteTable([route("ns/a", canary=(), canary_percent=20, previous=(), previous_percent=30)])
    r = table.resolve("a.ns")
    picks = [table.pick_side(r, "") for _ in range(100)]
    assert (picks.count("canary"), picks.count("previous"), picks.count("default")) == (20, 30, 50)
    assert table.pick_side(r, "false") == "default" and table.pick_side(r, "true") == "canary"


# Each refusal's wire answers and metric labels as before the shared vocabulary (runtime.errors):
# its old `kind`, its code, HTTP status, gRPC code, `reason` label of breaker_rejections (if counted there).
REFUSALS = [
    ("no_route", "not_found", 404, "NOT_FOUND", None),
    ("no_canary", "bad_input", 400, "INVALID_ARGUMENT", None),
    ("unavailable", "unavailable", 503, "UNAVAILABLE", "unavailable"),
    ("queue_full", "overloaded", 503, "UNAVAILABLE", "queue_full"),  # the runtime: RESOURCE_EXHAUSTED
    ("broken", "upstream_failed", 502, "UNAVAILABLE", None),
    ("timeout", "timeout", 504, "DEADLINE_EXCEEDED", None),
    ("cancelled", "cancelled", 499, "CANCELLED", None),
]


@pytest.mark.parametrize(("kind", "code", "http", "grpc_code", "rejected"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_each_refusal_keeps_its_statuses_and_labels(kind, code, http, grpc_code, rejected):
    f = Failure(code, "why")
    assert HTTP_STATUS[code] == http and http_front._label(f) == str(http)
    assert grpc_front.STATUS[code].name == grpc_code and grpc_front._label(f) == f"grpc_{grpc_code}"
    assert REJECTED.get(code) == rejected
