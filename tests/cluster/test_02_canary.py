"""A canary on a real node: canaryTrafficPercent 50 sends half of 200 requests to the canary
Deployment's Pod (the activator answers with the side in `x-paddleservice-side`), and removing the
canary while clients keep sending drops no request."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.cluster.node import Load, Node, fresh_service, host_of, lac_service
from tests.helpers import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

NS, NAME = "es-canary", "canary-sample"


def both_sides_ready(node: Node) -> bool:
    return all(any(c.get("ready") for c in (p["status"].get("containerStatuses") or []))
               for side in ("default", "canary") for p in node.pods(NS, NAME, side) or [{"status": {}}])


@pytest.fixture(scope="module")
def canary(stack: Node) -> Node:
    fresh_service(stack, NS, NAME, lac_service(NS, NAME, min_scale=1, canary_percent=50))
    wait_for(lambda: both_sides_ready(stack), 300, 1, "a ready Pod on both sides")
    wait_for(lambda: stack.routed_by_every_activator(host_of(NS, NAME), {"default", "canary"}), 60, 0.5,
             "both sides routed by every activator")
    return stack


def test_half_of_200_requests_reach_the_canary(canary: Node) -> None:
    sides: Counter[str] = Counter()
    for _ in range(200):
        a = canary.lac(host_of(NS, NAME), timeout=60)
        assert a.status == 200, a.body[:300]
        sides[a.headers["x-paddleservice-side"]] += 1
    print(f"200 requests: {dict(sides)}")
    # Each activator splits its own share by smooth weighted round robin (at most one off per
    # activator); kube-proxy spreads connections over the two activators.
    assert sides["default"] + sides["canary"] == 200
    assert abs(sides["canary"] - 100) <= 4, sides


def test_removing_the_canary_drops_no_request(canary: Node) -> None:
    with Load(canary, host_of(NS, NAME), clients=4) as load:
        wait_for(lambda: load.count() >= 20, 60, 0.2, "traffic flowing")
        canary.kubectl("patch", "paddleservice", "-n", NS, NAME, "--type=json", "-p",
                       '[{"op": "remove", "path": "/spec/canary"},'
                       ' {"op": "remove", "path": "/spec/canaryTrafficPercent"}]')
        wait_for(lambda: canary.deployment_replicas(NS, NAME, "canary") is None
                 and not canary.pods(NS, NAME, "canary"), 120, 0.5, "the canary Deployment and Pods gone")
        n = load.count()
        wait_for(lambda: load.count() >= n + 20, 60, 0.2, "traffic after the removal")
    sides = Counter(s for code, s in load.results if code == 200)
    print(f"{len(load.results)} requests while removing the canary: {dict(sides)}")
    assert load.failures() == []
    assert sides["canary"] > 0 and sides["default"] > 0
    # after the removal only the default side answers
    assert {canary.lac(host_of(NS, NAME)).headers.get("x-paddleservice-side") for _ in range(10)} == {"default"}
