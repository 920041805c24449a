"""The activator with the real autoscaler and real replica processes: 50 concurrent first requests at
zero, per-replica concurrency limits, canary split and pinning, client disconnects."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from autoscaler.spec import CONTAINER_CONCURRENCY_ANNOTATION
from tests.helpers import ROOT, paddleservice, start_stack, wait_for, write_yaml

ECHO = f"python3 {ROOT}/tests/fixtures/echo_replica.py"
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("activator")
    cold = paddleservice("cold", "act", ECHO + " --delay 0.05", minScale=0)
    limited = paddleservice("limited", "act", ECHO + " --delay 0.05", minScale=2, maxScale=2)
    limited["metadata"]["annotations"] = {CONTAINER_CONCURRENCY_ANNOTATION: "1"}
    split = paddleservice("split", "act", ECHO, minScale=1)
    split["spec"]["canary"] = {"arg": ECHO, "containerImage": "x", "tag": "v2", "port": 9292}
    split["spec"]["canaryTrafficPercent"] = 30
    s = start_stack(tmp, [write_yaml(tmp / "act.yaml", cold, limited, split)])
    yield s
    assert s.stop() == 0


def test_50_concurrent_first_requests_all_answered(stack):
    assert stack.service("act/cold")["status"]["replicas"] == 0
    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda i: stack.request("cold.act.example.com", f"/r/{i}", {"i": i}, timeout=60),
                                range(50)))
    assert [r[0] for r in results] == [200] * 50
    assert sorted(json.loads(r[2])["path"] for r in results) == sorted(f"/r/{i}" for i in range(50))
    item = stack.service("act/cold")
    assert item["status"]["replicas"] == item["autoscaler"]["default"]["desired"] >= 1


def test_container_concurrency_one_never_two_in_flight(stack):
    wait_for(lambda: stack.service("act/limited")["status"]["replicas"] == 2, 60, 0.2, "2 replicas")
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: stack.request("limited.act.example.com", "/x", {"i": i}), range(40)))
    bodies = [json.loads(r[2]) for r in results]
    assert all(r[0] == 200 for r in results)
    assert max(b["max_inflight"] for b in bodies) == 1
    assert len({b["replica"] for b in bodies}) == 2  # both replicas used


def test_canary_split_over_1000_requests_and_pinning(stack):
    wait_for(lambda: all(a["ready"] >= 1 for a in stack.service("act/split")["autoscaler"].values()), 60, 0.2,
             "both sides ready")
    sides = []
    for _ in range(1000):
        status, headers, body = stack.request("split.act.example.com", "/x", {})
        assert status == 200
        sides.append(json.loads(body)["side"])
        assert headers["x-paddleservice-side"] == sides[-1]
    for i in range(0, 1000, 100):
        assert abs(sides[i:i + 100].count("canary") - 30) <= 5
    for pin, want in (("true", "canary"), ("false", "default")):
        status, headers, _ = stack.request("split.act.example.com", "/x", {},
                                           headers={"x-paddleservice-canary": pin})
        assert status == 200 and headers["x-paddleservice-side"] == want


def test_client_disconnect_releases_slot(stack):
    wait_for(lambda: stack.service("act/limited")["status"]["replicas"] == 2, 60, 0.2, "2 replicas")
    for _ in range(5):  # clients that send half a request and go away
        with socket.create_connection(("127.0.0.1", stack.http_port)) as c:
            c.sendall(b"POST /x HTTP/1.1\r\nHost: limited.act.example.com\r\nContent-Length: 100\r\n\r\n{")
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: stack.request("limited.act.example.com", "/x", {}, timeout=10), range(8)))
    assert [r[0] for r in results] == [200] * 8


def test_oversized_body_is_413_and_malformed_http_400(stack):
    status, _, _ = stack.request("limited.act.example.com", "/x", raw=b"x" * (65 * 1024 * 1024))
    assert status == 413
    with socket.create_connection(("127.0.0.1", stack.http_port)) as c:
        c.sendall(b"GARBAGE\r\n\r\n")
        assert c.recv(100).split(b" ")[1] == b"400"
    status, _, _ = stack.request("limited.act.example.com", "/x", {})
    assert status == 200


def test_changing_canary_percent_and_removing_canary_drops_nothing(stack, tmp_path):
    import threading

    slow = paddleservice("shift", "act", ECHO + " --delay 1.0", minScale=1)
    slow["spec"]["canary"] = {"arg": ECHO + " --delay 1.0", "containerImage": "x", "tag": "v2", "port": 9292}
    slow["spec"]["canaryTrafficPercent"] = 50
    f = write_yaml(tmp_path / "shift.yaml", slow)
    assert stack.cli("apply", "-f", str(f)).returncode == 0
    wait_for(lambda: all(a["ready"] >= 1 for a in stack.service("act/shift")["autoscaler"].values()), 60, 0.2,
             "both sides ready")
    results: list[tuple[int, str]] = []

    def call() -> None:
        status, headers, _ = stack.request("shift.act.example.com", "/x", {}, timeout=30)
        results.append((status, headers.get("x-paddleservice-side", "")))

    inflight = [threading.Thread(target=call) for _ in range(6)]
    for t in inflight:
        t.start()
    wait_for(lambda: stack.service("act/shift")["autoscaler"]["canary"]["ready"] >= 1, 5, 0.05, "canary up")
    slow["spec"]["canaryTrafficPercent"] = 0
    assert stack.cli("apply", "-f", str(write_yaml(tmp_path / "p0.yaml", slow))).returncode == 0
    del slow["spec"]["canary"], slow["spec"]["canaryTrafficPercent"]
    assert stack.cli("apply", "-f", str(write_yaml(tmp_path / "nocanary.yaml", slow))).returncode == 0
    for t in inflight:
        t.join(30)
    assert [s for s, _ in results] == [200] * 6, results
    assert {side for _, side in results} == {"default", "canary"}  # the canary answered its in-flight share
    for _ in range(4):
        status, headers, _ = stack.request("shift.act.example.com", "/x", {}, timeout=30)
        assert status == 200 and headers["x-paddleservice-side"] == "default"


def test_each_cold_start_pokes_at_once_even_right_after_the_last(stack, tmp_path):
    """Back-to-back cold starts (the service deleted and applied again in between): every held request
    pokes the autoscaler itself, instead of waiting for a tick or for the previous poker to wake."""
    f = write_yaml(tmp_path / "again.yaml", paddleservice("again", "act", ECHO, minScale=0))
    assert stack.cli("apply", "-f", str(f)).returncode == 0
    for i in range(3):
        status, _, data = stack.request("again.act.example.com", "/x", {}, timeout=60)
        assert status == 200, data
        assert stack.cli("delete", "again").returncode == 0
        assert stack.cli("apply", "-f", str(f)).returncode == 0
        def pokes() -> int:
            return sum("poke: scaling act/again/default from zero" in line for line in stack.output)

        wait_for(lambda: pokes() >= i + 1, 5, 0.02, f"poke {i + 1} in the log")  # noqa: B023
        assert pokes() == i + 1, stack.output[-20:]
