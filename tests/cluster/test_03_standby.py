"""Standby mode on a real node (annotation elasticserving.paddlepaddle.org/standby: "1"): a warm
Pod waits unrouted while the service is at zero; the first request is served by it (a routing
change) instead of a Pod start, then the Deployment refills the standby."""

from __future__ import annotations

import pytest

from tests.cluster.node import LAC_ANSWER, Node, fresh_service, host_of, lac_service
from tests.helpers import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

NS, NAME = "es-standby", "standby-sample"
STANDBY = "elasticserving.paddlepaddle.org/standby"


def ready_pods(node: Node) -> list[str]:
    return [p["metadata"]["name"] for p in node.pods(NS, NAME)
            if any(c.get("ready") for c in p["status"].get("containerStatuses") or [])
            and not p["metadata"].get("deletionTimestamp")]


@pytest.fixture(scope="module")
def standby(stack: Node) -> Node:
    fresh_service(stack, NS, NAME, lac_service(NS, NAME, annotations={STANDBY: "1"}))
    wait_for(lambda: len(ready_pods(stack)) == 1, 300, 1, "the standby Pod ready")
    return stack


def test_first_request_at_zero_is_served_by_the_warm_standby(standby: Node, session_info) -> None:
    status = standby.psvc(NS, NAME)["status"]
    assert status["replicas"] == 0 and standby.deployment_replicas(NS, NAME) == 1  # 0 routed + 1 standby
    warm = ready_pods(standby)
    a = standby.lac(host_of(NS, NAME), timeout=300)
    assert a.status == 200 and a.json() == LAC_ANSWER, a.body[:300]
    session_info.timings.setdefault("standby cold start", []).append(a.seconds)
    plain = session_info.timings.get("plain cold start")
    print(f"first request at zero: standby {a.seconds:.2f}s"
          + (f", plain Pod start {plain[0]:.2f}s" if plain else ""))
    # the request did not wait for a Pod start: the warm Pod is routed, a new standby starts
    assert warm[0] in ready_pods(standby)
    wait_for(lambda: standby.deployment_replicas(NS, NAME) == 2, 30, 0.5, "1 routed + 1 standby Pod")
    wait_for(lambda: len(ready_pods(standby)) == 2, 300, 1, "the new standby Pod ready")
    assert standby.psvc(NS, NAME)["status"]["replicas"] == 1
    if plain:
        assert a.seconds < plain[0], (a.seconds, plain)


def test_back_to_zero_keeps_one_standby(standby: Node) -> None:
    wait_for(lambda: standby.deployment_replicas(NS, NAME) == 1, 180, 0.5, "0 routed + 1 standby")
    wait_for(lambda: len(ready_pods(standby)) == 1 and len(standby.pods(NS, NAME)) == 1, 120, 0.5,
             "one Pod left, the standby")
    assert standby.psvc(NS, NAME)["status"]["replicas"] == 0
