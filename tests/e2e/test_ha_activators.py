"""Two activators in front of one autoscaler (HA): both route and both report, and the autoscaler
sums their load — 2 x 10 concurrent clients with target 10 give 2 replicas, not 1."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from tests.helpers import ROOT, free_port, http, paddleservice, start_stack, wait_for, write_yaml

pytestmark = pytest.mark.timeout(180)


def test_two_activators_reports_are_summed(tmp_path):
    arg = f"python3 {ROOT}/tests/fixtures/echo_replica.py --delay 0.1"
    f = write_yaml(tmp_path / "ha.yaml", paddleservice("ha", "act", arg, minScale=1, target=10,
                                                        targetUtilization="100", window="6s"))
    s = start_stack(tmp_path, [f])
    port2 = free_port()
    second = subprocess.Popen([sys.executable, "-m", "activator", "--host", "127.0.0.1", "--http-port", str(port2),
                               "--grpc-port", "0", "--autoscaler", s.control, "--id", "second"], cwd=ROOT)
    stop = threading.Event()
    errors: list[int] = []
    try:
        def up() -> bool:
            try:
                return http("GET", f"http://127.0.0.1:{port2}/healthz", timeout=1)[0] == 200
            except OSError:
                return False

        wait_for(up, 30, 0.1, "second activator")
        wait_for(lambda: s.service("act/ha")["status"]["replicas"] == 1, 60, 0.2, "first replica")

        def client(base: str) -> None:
            while not stop.is_set():
                status, _, _ = http("POST", base + "/x", {}, {"Host": "ha.act.example.com"}, timeout=30)
                if status != 200:
                    errors.append(status)

        threads = [threading.Thread(target=client, args=(b,)) for b in (s.base, f"http://127.0.0.1:{port2}")
                   for _ in range(10)]
        for t in threads:
            t.start()
        wait_for(lambda: s.service("act/ha")["autoscaler"]["default"]["desired"] == 2, 60, 0.2,
                 "the summed load of both activators to ask for 2 replicas")
        # one activator alone carries ~10; the autoscaler must see both (~20)
        wait_for(lambda: s.service("act/ha")["autoscaler"]["default"]["stable_concurrency"] > 15, 30, 0.2,
                 "stable concurrency to reflect both activators")
        stop.set()
        for t in threads:
            t.join(30)
        assert errors == []
    finally:
        stop.set()
        second.terminate()
        second.wait(10)
        assert s.stop() == 0
