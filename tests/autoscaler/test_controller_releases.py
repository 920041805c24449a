"""Releases through the controller, against fake platforms and injected clocks: tag routes, the split
gated by readiness, gradual rollouts stepping in routes and status, sides sized for their next share,
the outgoing default version kept and dropped, promotion, and a new leader going on from status."""

from __future__ import annotations

import asyncio
import time

import pytest

from autoscaler.controller import Controller, PromoteRefused
from autoscaler.platform import SideState
from autoscaler.spec import PaddleService
from autoscaler.wire import SideStats, StatsReport
from tests.fakes import Clock, FakePlatform

KEY = "ns/s"


class MovingPlatform(FakePlatform):
    """A fake platform that, like the local one, keeps replicas running when they change sides."""

    moves_sides = True

    def __init__(self) -> None:
        super().__init__()
        self.moves: list[tuple[str, str]] = []
        self.dropped: list[str] = []

    async def move(self, key: str, from_side: str, to_side: str) -> None:
        self.moves.append((from_side, to_side))
        self.states[(key, to_side)] = self.states.pop((key, from_side), SideState())
        self.on_change(key)

    async def drop(self, key: str, side: str) -> None:
        self.dropped.append(side)
        self.states.pop((key, side), None)


def release_svc(default_tag="v1", canary_tag: str | None = None, percent: int | None = None,
                duration: str | None = None, status: dict | None = None) -> PaddleService:
    spec: dict = {"default": {"containerImage": "img", "tag": default_tag, "port": 9292, "arg": f"serve {default_tag}"},
                  "service": {"minScale": 0, "target": 10, "targetUtilization": "100", "window": "6s"}}
    if canary_tag:
        spec["canary"] = {"containerImage": "img", "tag": canary_tag, "port": 9292, "arg": f"serve {canary_tag}"}
    if percent is not None:
        spec["canaryTrafficPercent"] = percent
    if duration:
        spec["rolloutDuration"] = duration
    return PaddleService.from_dict({"apiVersion": "elasticserving.paddlepaddle.org/v1", "kind": "PaddleService",
                                    "metadata": {"name": "s", "namespace": "ns"}, "spec": spec,
                                    **({"status": status} if status else {})})


def controller(platform: FakePlatform, clock: Clock) -> Controller:
    return Controller(platform, domain="example.com", defaults={"scale-to-zero-grace-period": "4s"}, clock=clock,
                      wall_clock=clock)


@pytest.fixture
def env():
    p, clock = FakePlatform(), Clock()
    return p, controller(p, clock), clock


def released(c: Controller) -> dict:
    return next(x for x in c.describe(KEY)["status"]["conditions"] if x["type"] == "Released")


def split(c: Controller) -> tuple[int, int]:
    """(canary %, previous %) as the activators get them."""
    (route,) = c.routes.all()
    return route.canary_percent, route.previous_percent


async def settle(c: Controller) -> None:
    """Let the tasks the controller spawned (floors, drops) finish."""
    while c._tasks:
        await asyncio.gather(*list(c._tasks))


async def test_tag_routes_reach_each_side_and_a_canary_at_zero_percent_waits_for_its_tag(env):
    p, c, _ = env
    await c.apply(release_svc(canary_tag="v2", percent=0))
    (route,) = c.routes.all()
    assert route.tags == {"default": ("default-s.ns.example.com", "default-s.ns", "default-s.ns.svc"),
                          "canary": ("canary-s.ns.example.com", "canary-s.ns", "canary-s.ns.svc")}
    st = c.describe(KEY)["status"]
    assert st["default"]["url"] == "http://default-s.ns.example.com"
    assert st["canary"]["url"] == "http://canary-s.ns.example.com"
    assert (st["default"]["image"], st["canary"]["image"]) == ("img:v1", "img:v2")
    assert st["canary"]["argHash"] and st["canary"]["argHash"] != st["default"]["argHash"]
    assert (st["default"]["percent"], st["canary"]["percent"]) == (100, 0)
    assert ("ns/s", "canary", 1) not in p.scales  # a 0 % canary is not started ...
    assert await c.poke(KEY, "canary")  # ... until its tag route holds a request for it
    assert p.scales[-1] == ("ns/s", "canary", 1)


async def test_a_never_ready_canary_keeps_all_traffic_on_default_and_status_says_why(env):
    p, c, clock = env
    await c.apply(release_svc(canary_tag="v2", percent=50))
    p.set_ready(KEY, "default", 1)
    assert ("ns/s", "canary", 1) in p.scales and split(c) == (0, 0)  # started to prove itself, no traffic
    p.set_ready(KEY, "canary", 0, error="replica command exited before it was ready (exit code 3)")
    assert split(c) == (0, 0)
    cond = released(c)
    assert cond["status"] == "False" and cond["reason"] == "CanaryNotReady"
    assert "exit code 3" in cond["message"] and "its 50% stays on default" in cond["message"]
    for _ in range(20):  # idle: the autoscaler alone would scale it to zero; the release keeps trying
        clock.t += 1
        await c.tick()
    assert c.services[KEY].sides["canary"].desired == 1
    p.set_ready(KEY, "canary", 1)
    assert split(c) == (50, 0) and released(c)["reason"] == "AtTarget"


async def test_a_raised_canary_share_steps_1_percent_first_then_equal_steps(env):
    p, c, clock = env
    await c.apply(release_svc(canary_tag="v2", percent=0, duration="4s"))
    p.set_ready(KEY, "default", 2)
    p.set_ready(KEY, "canary", 1)
    await c.apply(release_svc(canary_tag="v2", percent=100, duration="4s"))
    seen = [split(c)[0]]
    st = c.describe(KEY)["status"]
    assert st["canary"]["rollout"] == {**st["canary"]["rollout"], "fromPercent": 0, "toPercent": 100,
                                       "stepPercent": 33, "stepSeconds": 1.0, "durationSeconds": 4.0}
    assert released(c)["reason"] == "RollingOut" and c.services[KEY].timer is not None
    for _ in range(4):
        clock.t += 1
        c._publish([KEY])  # what the timer does at each step time
        seen.append(split(c)[0])
    assert seen == [1, 1, 34, 67, 100]
    st = c.describe(KEY)["status"]
    assert (st["default"]["percent"], st["canary"]["percent"]) == (0, 100) and "rollout" not in st["canary"]
    assert released(c)["reason"] == "AtTarget" and c.services[KEY].timer is None
    await c.apply(release_svc(canary_tag="v2", percent=10, duration="4s"))
    assert split(c) == (10, 0)  # lowering applies at once


async def test_the_growing_side_is_sized_for_its_next_share_before_it_gets_it(env):
    p, c, clock = env
    await c.apply(release_svc(canary_tag="v2", percent=0, duration="4s"))
    p.set_ready(KEY, "default", 8)
    p.set_ready(KEY, "canary", 1)
    for _ in range(6):  # 80 concurrent requests on default, target 10 per replica: 8 replicas
        clock.t += 1
        c.record_stats(StatsReport(activator="a", stats=[SideStats(service=KEY, side="default",
                                                                   average_concurrency=80, requests=80)]))
    await c.tick()
    assert c.services[KEY].sides["default"].desired == 8
    await c.apply(release_svc(canary_tag="v2", percent=100, duration="4s"))
    await settle(c)
    assert split(c) == (1, 0)
    # The load needs 8 replicas; the next step gives the canary 34 % of it: ceil(8 x 0.34) = 3 replicas,
    # started before the step comes (the idle canary's own grace replica is not counted as load).
    assert c.services[KEY].sides["canary"].desired == 3 and ("ns/s", "canary", 3) in p.scales
    assert c.services[KEY].sides["default"].desired == 8
    await c.tick()  # its own (tiny) load would say less; the release holds it
    assert c.services[KEY].sides["canary"].desired == 3


async def test_promote_is_refused_while_the_canary_has_no_ready_replica(env):
    p, c, _ = env
    await c.apply(release_svc(canary_tag="v2", percent=20))
    p.set_ready(KEY, "canary", 0, error="image pull failed: not found")
    with pytest.raises(PromoteRefused, match=r"img:v2 .* has no ready replica \(image pull failed: not found\)"):
        await c.promote(KEY)
    assert c.services[KEY].svc.spec.default.tag == "v1"
    await c.apply(release_svc())
    with pytest.raises(PromoteRefused, match="no canary"):
        await c.promote(KEY)


async def test_promote_makes_the_canary_the_default(env):
    p, c, _ = env
    await c.apply(release_svc(canary_tag="v2", percent=20))
    p.set_ready(KEY, "default", 1)
    p.set_ready(KEY, "canary", 1)
    await c.promote(KEY)
    svc = c.services[KEY].svc
    assert svc.spec.default.tag == "v2" and svc.spec.canary is None and svc.spec.canaryTrafficPercent is None
    assert set(c.routes.all()[0].sides) == {"default"}


async def test_a_default_version_change_keeps_the_old_version_serving_until_the_new_one_takes_over():
    p, clock = MovingPlatform(), Clock()
    c = controller(p, clock)
    await c.apply(release_svc("v1", duration="4s"))
    p.set_ready(KEY, "default", 2)
    await c.apply(release_svc("v2", duration="4s"))
    assert p.moves == [("default", "previous")]
    (route,) = c.routes.all()
    assert route.previous is not None and len(route.previous.endpoints) == 2 and split(c) == (0, 100)
    assert ("ns/s", "default", 1) in p.scales  # the new version starts to prove itself
    st = c.describe(KEY)["status"]
    assert (st["previous"]["image"], st["default"]["image"]) == ("img:v1", "img:v2")
    assert released(c)["reason"] == "DefaultNotReady"
    p.set_ready(KEY, "default", 1)
    seen = [split(c)[1]]
    for _ in range(4):
        clock.t += 1
        c._publish([KEY])
        seen.append(split(c)[1])
    assert seen == [99, 99, 66, 33, 0]  # previous: default took 1 %, then 34, 67, 100
    await settle(c)
    assert c.routes.all()[0].previous is None and p.dropped == ["previous"]
    assert "previous" not in c.services[KEY].sides and "previous" not in c.describe(KEY)["status"]


async def test_promotion_hands_the_warm_canary_to_default_and_ramps_from_its_share():
    p, clock = MovingPlatform(), Clock()
    c = controller(p, clock)
    await c.apply(release_svc(canary_tag="v2", percent=50, duration="4s"))
    p.set_ready(KEY, "default", 2)
    p.set_ready(KEY, "canary", 2)
    assert split(c) == (1, 0)  # a new canary ramps too: 1 % first
    clock.t += 10
    c._publish([KEY])
    assert split(c) == (50, 0)
    await c.promote(KEY)
    assert p.moves == [("default", "previous"), ("canary", "default")]
    assert split(c) == (0, 49)  # default 51 %: the canary's 50 and the first 1
    assert len(c.routes.all()[0].sides["default"].endpoints) == 2  # the canary's replicas, not new ones


async def test_a_new_leader_goes_on_with_the_release_the_last_one_wrote():
    p, clock = FakePlatform(), Clock()
    c1 = controller(p, clock)
    await c1.apply(release_svc(canary_tag="v2", percent=0, duration="4s"))
    p.set_ready(KEY, "default", 1)
    p.set_ready(KEY, "canary", 1)
    await c1.apply(release_svc(canary_tag="v2", percent=100, duration="4s"))
    assert split(c1) == (1, 0)
    status = c1.describe(KEY)["status"]
    await c1.close()
    clock.t += 2.0
    c2 = controller(p, clock)  # same platform state: the replicas kept running
    await c2.apply(release_svc(canary_tag="v2", percent=100, duration="4s", status=status))
    assert split(c2) == (34, 0)  # the step the first leader would be at now: not 1 again, not 100
    await c2.close()


async def test_the_release_timer_steps_the_split_on_its_own():
    p = FakePlatform()
    c = Controller(p, domain="example.com", wall_clock=time.time)
    await c.apply(release_svc(canary_tag="v2", percent=0, duration="2s"))
    p.set_ready(KEY, "default", 1)
    p.set_ready(KEY, "canary", 1)
    await c.apply(release_svc(canary_tag="v2", percent=100, duration="2s"))
    seen = [split(c)[0]]
    deadline = time.monotonic() + 10
    while seen[-1] != 100 and time.monotonic() < deadline:
        await c.routes.wait_news(c.routes.epoch, c.routes.version, deadline - time.monotonic())
        if split(c)[0] != seen[-1]:
            seen.append(split(c)[0])
    assert seen == [1, 100]  # 2 s: the 1 % holds 1 s + one step of 1 s, then all of it
    await c.close()
