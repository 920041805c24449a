"""The controller against a fake platform: pokes scale from zero at once, ticks follow the KPA,
routes and status follow the platform; no servers, time passed in."""

from __future__ import annotations

import asyncio

import pytest

from autoscaler.controller import Controller
from autoscaler.platform import Endpoint, Platform, SideState
from autoscaler.spec import PaddleService, SpecError


class FakePlatform(Platform):
    def __init__(self) -> None:
        super().__init__()
        self.applied: list[str] = []
        self.deleted: list[str] = []
        self.scales: list[tuple[str, str, int]] = []
        self.states: dict[tuple[str, str], SideState] = {}

    async def apply(self, svc: PaddleService) -> None:
        self.applied.append(svc.key)

    async def delete(self, key: str) -> None:
        self.deleted.append(key)

    async def scale(self, key: str, side: str, replicas: int) -> None:
        self.scales.append((key, side, replicas))

    def state(self, key: str, side: str) -> SideState:
        return self.states.get((key, side), SideState())

    def set_ready(self, key: str, side: str, n: int, error: str | None = None) -> None:
        eps = [Endpoint(f"{side}-{i}", "127.0.0.1", 9000 + i, 9500 + i) for i in range(n)]
        self.states[(key, side)] = SideState(desired=n, ready=eps, error=error)
        self.on_change(key)


def svc(min_scale=0, canary=False, percent=None, target=10, max_scale=None, window="6s") -> PaddleService:
    spec = {"default": {"containerImage": "img", "tag": "v1", "port": 9292, "arg": "x"},
            "service": {"minScale": min_scale, "target": target, "targetUtilization": "100", "window": window}}
    if max_scale is not None:
        spec["service"]["maxScale"] = max_scale
    if canary:
        spec["canary"] = {"containerImage": "img", "tag": "v2", "port": 9292, "arg": "y"}
    if percent is not None:
        spec["canaryTrafficPercent"] = percent
    return PaddleService.from_dict({"apiVersion": "elasticserving.paddlepaddle.org/v1", "kind": "PaddleService",
                                    "metadata": {"name": "s", "namespace": "ns"}, "spec": spec})


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


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
    (route,) = c.routes.routes
    assert route["hosts"][0] == "s.ns.example.com"
    assert route["sides"]["default"]["ready"] is False
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
        c.record_stats("act-1", [{"service": "ns/s", "side": "default", "average_concurrency": 30, "requests": 30}])
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
            c.record_stats(a, [{"service": "ns/s", "side": "default", "average_concurrency": 15, "requests": 15}])
    await c.tick()
    assert p.scales[-1] == ("ns/s", "default", 3)


async def test_max_scale_caps(env):
    p, c, clock = env
    await c.apply(svc(min_scale=0, target=1, max_scale=2))
    p.set_ready("ns/s", "default", 1)
    for _ in range(6):
        clock.t += 1
        c.record_stats("a", [{"service": "ns/s", "side": "default", "average_concurrency": 50, "requests": 50}])
    await c.tick()
    assert p.scales[-1] == ("ns/s", "default", 2)


async def test_status_conditions(env):
    p, c, _ = env
    await c.apply(svc(min_scale=0, canary=True, percent=30))
    st = c.describe("ns/s")["status"]
    types = {x["type"]: x for x in st["conditions"]}
    assert set(types) == {"Ready", "DefaultPaddleServiceReady", "CanaryPaddleServiceReady", "RoutesReady"}
    assert types["DefaultPaddleServiceReady"]["reason"] == "ScaledToZero"
    assert types["Ready"]["status"] == "True"
    assert st["url"] == "http://s.ns.example.com" and st["canary"]["name"] == "s-canary"
    p.set_ready("ns/s", "canary", 0, error="replica command exited before it was ready (exit code 3)")
    st = c.describe("ns/s")["status"]
    ready = next(x for x in st["conditions"] if x["type"] == "Ready")
    assert ready["status"] == "False" and "exit code 3" in ready["message"]
    p.set_ready("ns/s", "default", 2)
    assert c.describe("ns/s")["status"]["replicas"] == 2
    assert c.routes.routes[0]["canary_percent"] == 30


async def test_removing_canary_and_delete(env):
    p, c, _ = env
    await c.apply(svc(canary=True, percent=50))
    await c.apply(svc())
    assert list(c.routes.routes[0]["sides"]) == ["default"]
    assert await c.delete("ns/s")
    assert c.routes.routes == [] and p.deleted == ["ns/s"]
    assert not await c.delete("ns/s")


async def test_routes_long_poll_wakes_on_change(env):
    p, c, _ = env
    await c.apply(svc())
    v = c.routes.version
    waiter = asyncio.create_task(c.routes.wait_newer(v, 10))
    await asyncio.sleep(0)
    assert not waiter.done()
    p.set_ready("ns/s", "default", 1)
    await asyncio.wait_for(waiter, 1)
    assert c.routes.version == v + 1


async def test_invalid_autoscaling_values_refused(env):
    _, c, _ = env
    with pytest.raises(SpecError):
        await c.apply(svc(window="1s"))
