"""End to end KPA on the local platform: a step from 0 to 30 concurrent clients with target 10 reaches
exactly 3 replicas, and the service returns to 0 after the window + grace with no traffic."""

from __future__ import annotations

import threading
import time

import pytest

from tests.helpers import ROOT, paddleservice, start_stack, wait_for, write_yaml

pytestmark = pytest.mark.timeout(240)


def test_step_to_30_clients_reaches_3_replicas_then_zero(tmp_path):
    arg = f"python3 {ROOT}/tests/fixtures/echo_replica.py --delay 0.1"
    f = write_yaml(tmp_path / "step.yaml", paddleservice("step", "kpa", arg, minScale=0, target=10,
                                                          targetUtilization="100", window="6s"))
    s = start_stack(tmp_path, [f], config={"scale-to-zero-grace-period": "2s"})
    stop = threading.Event()
    errors: list[int] = []
    seen: list[int] = []
    try:
        assert s.service("kpa/step")["status"]["replicas"] == 0

        def client() -> None:
            while not stop.is_set():
                status, _, _ = s.request("step.kpa.example.com", "/x", {"x": 1}, timeout=30)
                if status != 200:
                    errors.append(status)

        threads = [threading.Thread(target=client) for _ in range(30)]
        for t in threads:
            t.start()

        def three_ready() -> bool:
            item = s.service("kpa/step")
            seen.append(item["autoscaler"]["default"]["desired"])
            return item["status"]["replicas"] == 3

        wait_for(three_ready, 60, 0.2, "3 ready replicas under 30 concurrent clients")
        t_end = time.monotonic() + 6  # hold the load for a while: it must stay at 3
        while time.monotonic() < t_end:
            seen.append(s.service("kpa/step")["autoscaler"]["default"]["desired"])
            time.sleep(0.25)
        stop.set()
        for t in threads:
            t.join(30)
        assert errors == []
        assert max(seen) == 3, seen
        t0 = time.monotonic()
        wait_for(lambda: s.service("kpa/step")["status"]["replicas"] == 0, 60, 0.2, "back to zero")
        # window 6s (+ halving steps) + grace 2s, within a few ticks
        assert time.monotonic() - t0 >= 6
    finally:
        stop.set()
        assert s.stop() == 0
