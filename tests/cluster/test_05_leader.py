"""Controller leader failover on a real node: delete the leading controller Pod and a request at
zero still scales the service from zero within 10 s (the other replica takes the Lease and publishes
itself as the autoscaler Service's endpoint)."""

from __future__ import annotations

import threading
import time

import pytest

from tests.cluster.node import LAC_ANSWER, SYSTEM_NS, Answer, Node, fresh_service, host_of, lac_service
from tests.helpers import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

NS, NAME = "es-failover", "failover-sample"


def leader(node: Node) -> str:
    return node.get("lease", "-n", SYSTEM_NS, "elasticserving-controller")["spec"].get("holderIdentity") or ""


def test_scale_from_zero_within_10s_after_the_leader_is_deleted(stack: Node) -> None:
    fresh_service(stack, NS, NAME, lac_service(NS, NAME))
    wait_for(lambda: stack.at_zero(NS, NAME), 120, 0.5, "the service at zero")
    old = wait_for(lambda: leader(stack), 60, 0.5, "a leader")
    answers: list[Answer] = []
    stack.kubectl("delete", "pod", "-n", SYSTEM_NS, old, "--wait=false")
    t0 = time.monotonic()
    client = threading.Thread(target=lambda: answers.append(stack.lac(host_of(NS, NAME), timeout=300)))
    client.start()
    wait_for(lambda: (stack.deployment_replicas(NS, NAME) or 0) >= 1, 10, 0.2,
             "the Deployment scaled from zero within 10 s of the leader's deletion")
    scaled = time.monotonic() - t0
    client.join(300)
    new = leader(stack)
    print(f"leader {old} deleted; {new} leads; scaled from zero after {scaled:.1f}s; "
          f"answered after {answers[0].seconds:.1f}s")
    assert new and new != old
    assert answers[0].status == 200 and answers[0].json() == LAC_ANSWER, answers[0].body[:300]
