"""Two activators behind the activator Service on a real node: deleting one activator Pod while 8
clients send requests loses no request (kube-proxy stops sending it new connections during its
preStop pause; it finishes what it holds)."""

from __future__ import annotations

import pytest

from tests.cluster.node import SYSTEM_NS, Load, Node, fresh_service, host_of, lac_service
from tests.helpers import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

NS, NAME = "es-ha", "ha-sample"
ACTIVATOR = "app.kubernetes.io/component=activator"


def ready_activators(node: Node) -> list[str]:
    pods = node.get("pods", "-n", SYSTEM_NS, "-l", ACTIVATOR)["items"]
    return [p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")
            and any(c.get("ready") for c in p["status"].get("containerStatuses") or [])]


def test_deleting_an_activator_under_load_loses_no_request(stack: Node) -> None:
    fresh_service(stack, NS, NAME, lac_service(NS, NAME, min_scale=1))
    wait_for(lambda: stack.lac(host_of(NS, NAME), timeout=300).status == 200, 300, 1, "the service answering")
    before = wait_for(lambda: r if len(r := ready_activators(stack)) == 2 else None, 120, 0.5,
                      "two ready activators")
    victim = before[0]
    with Load(stack, host_of(NS, NAME), clients=8) as load:
        wait_for(lambda: load.count() >= 50, 60, 0.2, "traffic flowing")
        stack.kubectl("delete", "pod", "-n", SYSTEM_NS, victim, "--wait=false")
        wait_for(lambda: stack.get_or_none("pod", "-n", SYSTEM_NS, victim) is None, 120, 0.5,
                 "the deleted activator gone")
        wait_for(lambda: len(ready_activators(stack)) == 2, 120, 0.5, "a replacement activator ready")
        n = load.count()
        wait_for(lambda: load.count() >= n + 50, 60, 0.2, "traffic after the replacement")
    print(f"{len(load.results)} requests by 8 clients while {victim} was deleted and replaced")
    assert load.failures() == []
