"""Tag routes on a real node: with a canary at 0 %, `canary-NAME.NS.example.com` reaches only the canary
and `default-NAME.NS.example.com` only the default, over HTTP through the activator's NodePort and over
gRPC (`x-paddleservice: canary-NAME.NS`); status and `kubectl get -o wide` show the release.

Needs a node whose control plane has tag routes (images and deploy/ from this tree: scripts/cluster.sh
up); on an older one it is skipped with that reason rather than failing on what the node cannot do."""

from __future__ import annotations

import numpy as np
import pytest

from tests.cluster.node import LAC_ANSWER, Node, fresh_service, host_of, lac_service
from tests.helpers import wait_for

NS, NAME = "es-releases", "tagged"


def _has_releases(node: Node) -> bool:
    crd = node.get("crd", "paddleservices.elasticserving.paddlepaddle.org")
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    return "rolloutDuration" in spec


@pytest.fixture(scope="module")
def tagged(stack: Node) -> Node:
    if not _has_releases(stack):
        pytest.skip("the node's control plane predates tag routes (no spec.rolloutDuration in its CRD): "
                    "rebuild the images and apply deploy/ from this tree (scripts/cluster.sh up)")
    fresh_service(stack, NS, NAME, lac_service(NS, NAME, min_scale=1, canary_percent=0))
    wait_for(lambda: (stack.psvc(NS, NAME).get("status", {}).get("canary") or {}).get("readyReplicas") == 1,
             300, 1.0, "the canary's replica ready")
    return stack


def test_tag_hosts_reach_one_side_over_http(tagged: Node) -> None:
    for host, want in ((f"canary-{NAME}.{NS}.example.com", "canary"), (f"default-{NAME}.{NS}.example.com", "default"),
                       (host_of(NS, NAME), "default")):
        for _ in range(6):
            a = tagged.lac(host, timeout=120)
            assert a.status == 200 and a.json() == LAC_ANSWER, (host, a.status, a.body[:300])
            assert a.headers.get("x-paddleservice-side") == want, host


def test_tag_routing_key_over_grpc(tagged: Node) -> None:
    grpcclient = pytest.importorskip("tritonclient.grpc")
    c = grpcclient.InferenceServerClient(tagged.grpc_target)
    words = grpcclient.InferInput("words", [1], "BYTES")
    words.set_data_from_numpy(np.array(["我爱北京天安门".encode()], dtype=object))
    r = c.infer("lac", [words], headers={"x-paddleservice": f"canary-{NAME}.{NS}"})
    assert r.as_numpy("word_seg").tolist() == ["我|爱|北京|天安门".encode()]


def test_status_and_kubectl_wide_show_the_release(tagged: Node) -> None:
    st = tagged.psvc(NS, NAME)["status"]
    assert st["canary"]["url"] == f"http://canary-{NAME}.{NS}.example.com"
    assert (st["default"]["percent"], st["canary"]["percent"]) == (100, 0)
    assert st["canary"]["image"] == "elasticserving/runtime-lac:latest" and st["canary"]["ready"] is True
    wide = tagged.kubectl("get", "psvc", NAME, "-n", NS, "-o", "wide")
    assert "CANARY-%" in wide and "AtTarget" in wide, wide


def test_cleanup(stack: Node) -> None:
    stack.kubectl("delete", "namespace", NS, "--wait=false")
