"""The manual on a real node: `kubectl apply -f examples/lac.yaml`, `kubectl get psvc -A`, the curl
through the activator from zero replicas (a real Pod starts while the activator holds the request),
and scale to zero after window + grace without traffic."""

from __future__ import annotations

import time

import pytest

from tests.cluster.node import LAC_ANSWER, ROOT, Node, host_of
from tests.helpers import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

NS, NAME = "paddleservice-system", "paddleservice-sample"


@pytest.fixture(scope="module")
def lac(stack: Node) -> Node:
    # a fresh resource (a reused node may still have one from an earlier run)
    stack.kubectl("delete", "paddleservice", "-n", NS, NAME, "--ignore-not-found", "--wait=true",
                  timeout=180)
    stack.kubectl("apply", "-f", str(ROOT / "examples/lac.yaml"))
    wait_for(lambda: stack.deployment_replicas(NS, NAME) is not None, 60, 0.5,
             "the controller to create the Deployment of examples/lac.yaml")
    return stack


def test_get_psvc_shows_ready_replicas_url(lac: Node) -> None:
    def row() -> list[str] | None:
        lines = lac.kubectl("get", "psvc", "-A").splitlines()
        header = lines[0].split()
        assert header == ["NAMESPACE", "NAME", "READY", "REPLICAS", "URL", "AGE"], lines[0]
        rows = [ln.split() for ln in lines[1:] if ln.split()[:2] == [NS, NAME]]
        return rows[0] if rows and rows[0][2] == "True" else None

    r = wait_for(row, 120, 0.5, "paddleservice-sample Ready in `kubectl get psvc -A`")
    assert r[3] == "0", r  # minScale 0 and no request yet
    assert r[4] == f"http://{NAME}.{NS}.example.com"


def test_curl_from_zero_starts_a_real_pod(lac: Node, session_info) -> None:
    wait_for(lambda: lac.deployment_replicas(NS, NAME) == 0 and not lac.pods(NS, NAME), 120, 0.5,
             "no Pod of the service before the first request")
    # Routes reach the activators by long-poll, a moment after Ready: until then an activator
    # answers 404 (unknown host) at once, without starting anything.
    unknown = 0
    while (a := lac.lac(host_of(NS, NAME), timeout=300)).status == 404 and unknown < 100:
        unknown += 1
        time.sleep(0.1)
    if unknown:
        print(f"{unknown} request(s) answered 404 before the route reached the activators")
    assert a.status == 200, a.body[:500]
    assert a.json() == LAC_ANSWER
    session_info.timings.setdefault("plain cold start", []).append(a.seconds)
    print(f"first request from zero through a real Pod start: {a.seconds:.1f}s")
    pods = lac.pods(NS, NAME)
    assert len(pods) == 1 and pods[0]["status"]["phase"] == "Running", [p["status"] for p in pods]
    assert lac.psvc(NS, NAME)["status"]["replicas"] == 1
    # a second request is served by the running Pod at once
    b = lac.lac(host_of(NS, NAME), timeout=60)
    assert b.status == 200 and b.json() == LAC_ANSWER


def test_scales_to_zero_after_window_and_grace(lac: Node) -> None:
    t0 = time.monotonic()
    wait_for(lambda: lac.deployment_replicas(NS, NAME) == 0, 180, 0.5, "the Deployment scaled to 0")
    wait_for(lambda: not lac.pods(NS, NAME), 120, 0.5, "no Pod of the service left")
    print(f"scaled to zero {time.monotonic() - t0:.0f}s after the last request (window 10s + grace)")
    assert lac.psvc(NS, NAME)["status"]["replicas"] == 0
