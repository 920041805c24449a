"""The controller against a fake platform: pokes scale from zero at once, ticks follow the KPA,
routes and status follow the platform; no servers, time passed in."""

from __future__ import annotations

import asyncio

import pytest

from autoscaler.controller import Controller, VersionedRoutes
from autoscaler.platform import SideState
from autoscaler.spec import SpecError
from autoscaler.wire import Route, SideRoute, SideStats, StatsReport
from tests.fakes import Clock, FakePlatform, svc


def report(activator: str, concurrency: float, key: str = "ns/s", side: str = "default") -> StatsReport:
    return StatsReport(activator=activator, stats=[SideStats(service=key, side=side,
                                                             average_concurrency=concurrency,
                                                             requests=int(concurrency))])


@pytest.fixture
def env():
    p = FakePlatform()
    clock = Clock()
    c = Controller(p, domain="example.com", defaults={"scale-to-zero-grace-period": "4s"}, clock=clock)
    return p, c, clock


async def test_apply_publishes_routes_and_min_scale(env):
    p, c, _ = env
    await c.apply(svc(min_scale=2))
    assert p.applied == ["ns/s"]
    assert ("ns/s", "default", 2) in p.scales
    (route,) = c.routes.all()
    assert route.hosts[0] == "s.ns.example.com"
    assert route.sides["default"].ready is False
    assert c.routes.version >= 1


async def test_poke_scales_from_zero_at_once(env):
    p, c, _ = env
    await c.apply(svc(min_scale=0))
    assert all(n == 0 for _, _, n in p.scales)
    assert await c.poke("ns/s", "default")
    assert p.scales[-1] == ("ns/s", "default", 1)
    assert not await c.poke("ns/other", "default")


async def test_tick_scales_to_load_and_back_to_zero(env):
    p, c, clock = env
    await c.apply(svc(min_scale=0, target=10))
    p.set_ready("ns/s", "default", 1)
    for _ in range(6):  # 30 concurrent requests for 6 seconds, target 10 per pod
        clock.t += 1
        c.record_stats(report("act-1", 30))
    await c.tick()
    assert p.scales[-1] == ("ns/s", "default", 3)
    p.set_ready("ns/s", "default", 3)
    # idle: after the 6s window the stable average drops to 0; after the 4s grace, 0 replicas
    for _ in range(30):
        clock.t += 1
        await c.tick()
        p.set_ready("ns/s", "default", p.scales[-1][2])  # the platform follows the decision
    assert p.scales[-1] == ("ns/s", "default", 0)
    assert [n for _, _, n in p.scales][-3:] == [3, 1, 0]  # halving rate limit, then zero after grace


async def test_ha_reports_are_summed(env):
    p, c, clock = env
    await c.apply(svc(min_scale=0, target=10))
    p.set_ready("ns/s", "default", 1)
    for _ in range(6):
        clock.t += 1
        for a in ("act-1", "act-2"):
            c.record_stats(report(a, 15))
    await c.tick()
    assert p.scales[-1] == ("ns/s", "default", 3)


async def test_max_scale_caps(env):
    p, c, clock = env
    await c.apply(svc(min_scale=0, target=1, max_scale=2))
    p.set_ready("ns/s", "default", 1)
    for _ in range(6):
        clock.t += 1
        c.record_stats(report("a", 50))
    await c.tick()
    assert p.scales[-1] == ("ns/s", "default", 2)


async def test_status_conditions(env):
    p, c, _ = env
    await c.apply(svc(min_scale=0, canary=True, percent=30))
    st = c.describe("ns/s")["status"]
    types = {x["type"]: x for x in st["conditions"]}
    assert set(types) == {"Ready", "DefaultPaddleServiceReady", "CanaryPaddleServiceReady", "RoutesReady",
                          "Released"}
    assert types["DefaultPaddleServiceReady"]["reason"] == "ScaledToZero"
    # A new canary with a share starts one replica to prove itself before it takes traffic.
    assert types["CanaryPaddleServiceReady"]["reason"] == "ReplicasStarting" and ("ns/s", "canary", 1) in p.scales
    assert types["Released"]["reason"] == "CanaryNotReady"
    assert st["url"] == "http://s.ns.example.com" and st["canary"]["name"] == "s-canary"
    p.set_ready("ns/s", "canary", 0, error="replica command exited before it was ready (exit code 3)")
    st = c.describe("ns/s")["status"]
    ready = next(x for x in st["conditions"] if x["type"] == "Ready")
    assert ready["status"] == "False" and "exit code 3" in ready["message"]
    p.set_ready("ns/s", "default", 2)
    assert c.describe("ns/s")["status"]["replicas"] == 2
    assert c.routes.all()[0].canary_percent == 0  # a failing canary's share stays on default
    p.set_ready("ns/s", "canary", 1)
    assert c.routes.all()[0].canary_percent == 30
    assert next(x for x in c.describe("ns/s")["status"]["conditions"] if x["type"] == "Ready")["status"] == "True"


async def test_removing_canary_and_delete(env):
    p, c, _ = env
    await c.apply(svc(canary=True, percent=50))
    await c.apply(svc())
    assert list(c.routes.all()[0].sides) == ["default"]
    assert await c.delete("ns/s")
    assert c.routes.all() == [] and p.deleted == ["ns/s"]
    assert not await c.delete("ns/s")


async def test_routes_long_poll_wakes_on_change(env):
    p, c, _ = env
    await c.apply(svc())
    v = c.routes.version
    waiter = asyncio.create_task(c.routes.wait_news(c.routes.epoch, v, 10))
    await asyncio.sleep(0)
    assert not waiter.done()
    p.set_ready("ns/s", "default", 1)
    await asyncio.wait_for(waiter, 1)
    assert c.routes.version == v + 1


async def test_invalid_autoscaling_values_refused(env):
    _, c, _ = env
    with pytest.raises(SpecError):
        await c.apply(svc(window="1s"))


# ---- routes as versioned deltas (wire.RoutesUpdate) ------------------------------------------------
def _route(key: str, desired: int = 0) -> Route:
    ns, name = key.split("/")
    return Route(service=key, name=name, namespace=ns, hosts=(f"{name}.{ns}",),
                 sides={"default": SideRoute(desired=desired)})


def _table() -> VersionedRoutes:
    """Version 1: a, b created; 2: a changed; 3: b deleted; 4: c created."""
    t = VersionedRoutes(history=3, epoch="e1")
    t.publish({"ns/a": _route("ns/a"), "ns/b": _route("ns/b")})
    t.publish({"ns/a": _route("ns/a", desired=1)})
    t.publish({"ns/b": None})
    t.publish({"ns/c": _route("ns/c")})
    return t


@pytest.mark.parametrize(("epoch", "since", "full", "services", "removed"), [
    pytest.param(None, -1, True, ["ns/a", "ns/c"], [], id="first connect: full"),
    pytest.param("other", 4, True, ["ns/a", "ns/c"], [], id="another epoch (a new leader): full"),
    pytest.param("e1", 0, True, ["ns/a", "ns/c"], [], id="history too old (3 versions kept): full"),
    pytest.param("e1", 1, False, ["ns/a", "ns/c"], ["ns/b"], id="delta over three versions"),
    pytest.param("e1", 3, False, ["ns/c"], [], id="delta of one version"),
    pytest.param("e1", 4, False, [], [], id="up to date: empty delta"),
    pytest.param("e1", 9, True, ["ns/a", "ns/c"], [], id="a version from the future: full"),
])
def test_route_table_answers_delta_or_full(epoch, since, full, services, removed):
    u = _table().update(epoch, since)
    assert (u.full, [r.service for r in u.services], list(u.removed)) == (full, services, removed)
    assert u.epoch == "e1" and u.version == 4


def test_route_table_same_route_is_no_new_version():
    t = _table()
    assert not t.publish({"ns/a": _route("ns/a", desired=1)})
    assert t.version == 4
    assert t.publish({}, activators=["b", "a"]) and t.version == 5 and t.update("e1", 4).activators == 2
    assert not t.publish({}, activators=["a", "b"])  # the same set: no new version


@pytest.mark.parametrize(("live", "asking", "count", "index"), [
    pytest.param(["a"], "a", 1, 0, id="alone"),
    pytest.param(["b", "a"], "b", 2, 1, id="position among the sorted ids"),
    pytest.param(["b", "a"], "c", 2, None, id="not a live activator: no index"),
    pytest.param(["b", "a"], None, 2, None, id="did not name itself"),
    pytest.param([], "a", 1, None, id="none heard of yet: one share"),
])
def test_route_table_gives_each_activator_its_index(live, asking, count, index):
    t = _table()
    t.publish({}, activators=live)
    for since in (t.version, -1):  # the same in a delta and in a full table
        u = t.update("e1", since, asking)
        assert (u.activators, u.activator_index) == (count, index)


def test_replacing_one_activator_with_another_is_a_new_version():
    # Same count, but the indexes move: the activators must hear of it.
    t = _table()
    t.publish({}, activators=["a", "c"])
    v = t.version
    assert t.publish({}, activators=["b", "c"]) and t.version == v + 1
    assert t.update("e1", v, "c").activator_index == 1


@pytest.mark.parametrize(("epoch", "since", "news"), [
    ("e1", 4, False), (None, 4, False), ("e1", 3, True), (None, -1, True), ("e2", 4, True), ("e1", 9, True),
])
def test_route_table_news_for_a_long_poll(epoch, since, news):
    assert _table().has_news(epoch, since) is news


def test_route_table_epochs_differ_per_instance():
    assert VersionedRoutes().epoch != VersionedRoutes().epoch


async def test_one_service_change_among_1000_is_a_small_delta(env):
    p, c, _ = env
    for i in range(1000):
        await c.apply(svc(name=f"s{i}"))
    v = c.routes.version
    p.set_ready("ns/s500", "default", 2)  # the platform names the one service that changed
    u = c.routes.update(c.routes.epoch, v)
    assert not u.full and [r.service for r in u.services] == ["ns/s500"]
    assert len(u.model_dump_json()) < 2048
    assert len(c.routes.update(None, -1).model_dump_json()) > 100_000  # the full table, for comparison


async def test_activators_count_those_heard_in_the_last_10s(env):
    p, c, clock = env
    await c.apply(svc())
    assert c.routes.activators == 1
    v = c.routes.version
    c.record_stats(report("act-1", 1))
    c.seen_activator("act-2")  # a poll with ?activator=act-2
    assert c.routes.activators == 2 and c.routes.version > v
    clock.t += 5
    c.seen_activator("act-1")
    clock.t += 6  # act-2 silent for 11s
    await c.tick()
    assert c.routes.activators == 1
    assert c.routes.update(c.routes.epoch, v).activators == 1


async def test_a_failing_service_does_not_stop_the_tick_for_the_others(env, caplog):
    p, c, clock = env
    await c.apply(svc(name="bad", target=10))
    await c.apply(svc(name="good", target=10))
    for key in ("ns/bad", "ns/good"):
        p.set_ready(key, "default", 1)
    real_state = p.state

    def state(key: str, side: str) -> SideState:
        if key == "ns/bad":
            raise RuntimeError("platform cache broken for ns/bad")
        return real_state(key, side)

    p.state = state  # type: ignore[method-assign]
    for _ in range(6):
        clock.t += 1
        for key in ("ns/bad", "ns/good"):
            c.record_stats(report("a", 30, key=key))
    await c.tick()
    assert ("ns/good", "default", 3) in p.scales
    assert "ns/bad" in caplog.text and "platform cache broken" in caplog.text


async def test_idle_services_at_zero_are_not_visited_by_the_tick(env):
    p, c, clock = env
    for i in range(50):
        await c.apply(svc(name=f"s{i}"))
    await c.tick()  # the first tick after apply decides once for each: zero, idle
    assert c.active == set()
    visited: list[str] = []
    real_state = p.state
    p.state = lambda key, side: visited.append(key) or real_state(key, side)  # type: ignore[method-assign]
    clock.t += 2
    await c.tick()
    assert visited == []
    # load on one service wakes only that one; a zero report of an idle one does not
    c.record_stats(StatsReport(activator="a", stats=[SideStats(service="ns/s7", average_concurrency=4),
                                                     SideStats(service="ns/s8")]))
    assert c.active == {("ns/s7", "default")}
    await c.tick()
    assert set(visited) == {"ns/s7"} and p.scales[-1] == ("ns/s7", "default", 1)


async def test_poke_wakes_an_idle_side_and_scale_down_still_follows(env):
    p, c, clock = env
    await c.apply(svc())
    await c.tick()
    assert c.active == set()
    assert await c.poke("ns/s", "default")
    p.set_ready("ns/s", "default", 1)
    for _ in range(40):  # no load: back to zero after the window and the grace period
        clock.t += 1
        await c.tick()
        p.set_ready("ns/s", "default", p.scales[-1][2])
    assert p.scales[-1] == ("ns/s", "default", 0)
    await c.tick()  # the platform's last change (replica gone) is looked at once, then nothing
    assert c.active == set()


async def test_exported_target_is_the_one_the_decider_uses(env):
    """containerConcurrency 4 caps target 10: the decider divides by min(10, 4) x 100% = 4."""
    from prometheus_client import generate_latest

    from autoscaler.metrics_exporter import ControllerCollector, new_registry

    p, c, _ = env
    s = svc(target=10)
    s.metadata.annotations["elasticserving.paddlepaddle.org/container-concurrency"] = "4"
    await c.apply(s)
    registry = new_registry()
    registry.register(ControllerCollector(c))
    text = generate_latest(registry).decode()
    line = next(x for x in text.splitlines() if x.startswith("elasticserving_autoscaler_target_concurrency_per_pod{"))
    assert float(line.split()[-1]) == c.services["ns/s"].sides["default"].decider.spec.target_value == 4.0
