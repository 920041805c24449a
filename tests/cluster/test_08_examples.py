"""The image and OCR examples on the real node, as a Kubernetes user runs them: `kubectl apply -f
examples/image.yaml` / `examples/ocr.yaml` with the `elasticserving/runtime-image` / `-ocr` image
(images/runtime/Dockerfile's `models` stage, built without Docker and imported by scripts/cluster.sh); a photo and a
rendered text through the activator, from zero replicas, answered by real Pods."""

from __future__ import annotations

import json

import pytest

from tests.cluster.node import ROOT, Node, host_of
from tests.e2e.test_image_example import CATS, jpeg
from tests.helpers import wait_for
from tests.runtime.test_ocr import LINES, b64, rendered, squash

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

NS = "paddleservice-system"


def _apply_fresh(node: Node, example: str, name: str) -> None:
    node.kubectl("delete", "paddleservice", "-n", NS, name, "--ignore-not-found", "--wait=true", timeout=180)
    node.kubectl("apply", "-f", str(ROOT / "examples" / example))
    wait_for(lambda: node.deployment_replicas(NS, name) is not None, 60, 0.5, f"the Deployment of {example}")


def _post_until_routed(node: Node, host: str, path: str, body: dict, timeout: float = 300):
    """The first request from zero; 404 only until the new route reaches the activators."""
    data = json.dumps(body).encode()
    return wait_for(lambda: (a := node.post(host, path, data, timeout=timeout)).status != 404 and a, 60, 0.2,
                    f"{host} routed")


def test_image_example_classifies_a_photo_from_both_sides(stack: Node) -> None:
    name = "paddleservice-image"
    _apply_fresh(stack, "image.yaml", name)
    body = {"feed": [{"image": jpeg("chelsea")}], "fetch": ["score"]}
    first = _post_until_routed(stack, host_of(NS, name), "/image/prediction", body)
    assert first.status == 200, (first.body[:500], stack.state_of(NS, name))
    # The canary takes its 50 % only once a replica of it is ready (autoscaler/rollout.py, rule 1): its first
    # Pod starts at once, but on a busy node it may still be loading its model after many requests, all
    # answered by default meanwhile. Wait for that replica, not for a count of requests, and keep a request
    # a second going meanwhile, as a user's traffic would: an idle service scales back to zero after its
    # 10 s window, and on a busy node that came before the canary's Pod was ready.
    def canary_ready() -> bool:
        a = stack.post(host_of(NS, name), "/image/prediction", json.dumps(body).encode(), timeout=120)
        assert a.status == 200, a.body[:500]
        return (stack.psvc(NS, name).get("status", {}).get("canary") or {}).get("readyReplicas", 0) >= 1

    wait_for(canary_ready, 300, 1.0, "the canary's replica ready")
    sides: dict[str, int] = {}

    def both_sides_answered() -> bool:
        a = stack.post(host_of(NS, name), "/image/prediction", json.dumps(body).encode(), timeout=120)
        assert a.status == 200, a.body[:500]
        res = a.json()["result"]
        assert res["label"][0] in CATS, res
        side = a.headers.get("x-paddleservice-side")
        assert (res.get("isCanary") == ["true"]) == (side == "canary"), (side, res)
        sides[side] = sides.get(side, 0) + 1
        return set(sides) == {"default", "canary"}

    wait_for(both_sides_answered, 120, 0.0, "answers from both sides (50 % canary)")
    # Pods on their way out (a scale-down, an earlier run's) end as Succeeded when they drain cleanly.
    pods = stack.pods(NS, name)
    assert {p["status"]["phase"] for p in pods if not p["metadata"].get("deletionTimestamp")} == {"Running"}
    assert "Failed" not in {p["status"]["phase"] for p in pods}, [p["status"] for p in pods]
    # the PaddleService only: the example's Namespace is shared with the other examples
    stack.kubectl("delete", "paddleservice", "-n", NS, name, "--wait=false", "--ignore-not-found")


def test_ocr_example_reads_rendered_text(stack: Node) -> None:
    name = "paddleservice-ocr"
    _apply_fresh(stack, "ocr.yaml", name)
    a = _post_until_routed(stack, host_of(NS, name), "/ocr/prediction",
                           {"feed": [{"image": b64(rendered())}], "fetch": ["text"]})
    assert a.status == 200, (a.body[:500], stack.state_of(NS, name))
    res = a.json()["result"]
    assert [squash(t) for t in res["text"]] == [squash(line) for line in LINES], res
    assert [len(box) for box in res["box"]] == [4, 4], res
    stack.kubectl("delete", "paddleservice", "-n", NS, name, "--wait=false", "--ignore-not-found")
