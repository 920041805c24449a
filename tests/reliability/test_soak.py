"""Soak: mixed LAC traffic (Paddle Serving API and KServe v2 REST) through the local stack with
scale up / down / to zero cycles. Every request is answered or gets a clear error; no process or
file descriptor leaks; memory growth is reported. ELASTICSERVING_SOAK_SECONDS sets the length
(the CI variant is short; 300 for the full 5-minute soak)."""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import child_pids, paddleservice, replica_pids, rss_mib, start_stack, wait_for, write_yaml
from tests.reliability.figures import record

SOAK_SECONDS = float(os.environ.get("ELASTICSERVING_SOAK_SECONDS", "40"))
RUNTIME = "python3 -m runtime --model lac --name lac --port $PORT"
HOST = "soak.reliability.example.com"
KEY = "reliability/soak"
REASONS: dict[str, str] = {}
SENTENCES = ["我爱北京天安门", "百度是一家高科技公司", "今天天气很好", "春天来了"]


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def one_request(stack, i: int, counts: collections.Counter, lock: threading.Lock) -> None:
    words = SENTENCES[i % len(SENTENCES)]
    if i % 2:
        path, body = "/lac/prediction", {"feed": [{"words": words}], "fetch": ["word_seg"]}
    else:
        path = "/v2/models/lac/infer"
        body = {"inputs": [{"name": "words", "datatype": "BYTES", "shape": [1], "data": [words]}]}
    try:
        status, _, data = stack.request(HOST, path, body, timeout=45)
    except Exception as exc:  # a hang or a reset: a lost request
        with lock:
            counts[f"lost:{type(exc).__name__}"] += 1
        return
    with lock:
        counts["answered"] += 1
        if status == 200:
            payload = json.loads(data)
            seg = payload["result"][0]["word_seg"] if "result" in payload else payload["outputs"][0]["data"][0]
            counts["ok" if seg.replace("|", "") == words else "wrong_answer"] += 1
        else:
            try:
                reason = json.loads(data).get("error")
            except ValueError:
                reason = None
            counts[f"http_{status}" + ("" if reason else "_without_reason")] += 1
            if reason:
                REASONS[f"http_{status}"] = reason[:200]


@pytest.mark.timeout(SOAK_SECONDS * 3 + 240)
def test_soak_with_scale_cycles(tmp_path):
    f = write_yaml(tmp_path / "soak.yaml",
                   paddleservice("soak", "reliability", RUNTIME, minScale=0, maxScale=3, target=2,
                                 targetUtilization="100", window="6s"))
    s = start_stack(tmp_path, [f], config={"scale-to-zero-grace-period": "1s"}, extra=["--request-timeout", "40"])
    counts: collections.Counter = collections.Counter()
    lock = threading.Lock()
    try:
        # warm up once so memory figures compare steady states
        one_request(s, 1, counts, lock)
        activator = [p for p in child_pids(s.proc.pid) if b"activator" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert activator, "activator process not found"
        procs = {"autoscaler": s.proc.pid, "activator": activator[0]}
        fd0 = {k: fds(p) for k, p in procs.items()}
        mem0 = {k: rss_mib(p) for k, p in procs.items()}
        deadline = time.monotonic() + SOAK_SECONDS
        cycles = 0
        scaled_to_zero = 0
        max_replicas = 0
        i = 0
        max_desired = 0
        while time.monotonic() < deadline:
            cycles += 1
            burst_end = time.monotonic() + min(10.0, max(4.0, SOAK_SECONDS / 4))
            # The first burst lasts until the load has scaled the service to 2 ready replicas (within a
            # generous deadline): the stable window has to fill (with a 6 s window the panic window is
            # one second and mostly reads 0, as in Knative), then a tick decides, then a replica starts.
            # A fixed short burst ended before that on a busy machine (--quick: 5 s), so it never saw 2.
            scale_up_deadline = time.monotonic() + 90.0 if max_replicas < 2 else 0.0
            clients = 6
            threads = []
            stop_burst = threading.Event()

            def client(n: int, stop: threading.Event = stop_burst, step: int = clients) -> None:
                j = n
                while not stop.is_set():
                    one_request(s, j, counts, lock)
                    j += step

            for n in range(clients):
                t = threading.Thread(target=client, args=(i + n,))
                t.start()
                threads.append(t)
            while not stop_burst.is_set():
                a = s.service(KEY)
                max_replicas = max(max_replicas, a["status"]["replicas"])
                max_desired = max(max_desired, a["autoscaler"]["default"]["desired"])
                now = time.monotonic()
                if now >= burst_end and (max_replicas >= 2 or now >= scale_up_deadline):
                    stop_burst.set()
                time.sleep(0.5)
            for t in threads:
                t.join()
            i += 1000
            # idle until the service is back at zero (window 6s + grace 1s)
            wait_for(lambda: s.service(KEY)["status"]["replicas"] == 0, 60, 0.25, "scale to zero")
            scaled_to_zero += 1
        fd1 = {k: fds(p) for k, p in procs.items()}
        mem1 = {k: rss_mib(p) for k, p in procs.items()}
    finally:
        code = s.stop()
    wait_for(lambda: replica_pids(KEY) == [], 15, 0.1, "replica processes gone")
    lost = {k: v for k, v in counts.items() if k.startswith("lost")}
    figures = {
        "seconds": SOAK_SECONDS, "cycles": cycles, "scaled_to_zero": scaled_to_zero, "max_replicas": max_replicas,
        "max_desired": max_desired,
        "requests_sent": sum(v for k, v in counts.items() if k == "answered" or k.startswith("lost")),
        "counts": dict(counts), "error_reasons": REASONS, "fds_before": fd0, "fds_after": fd1,
        "rss_mib_before": mem0, "rss_mib_after": mem1,
        "rss_growth_mib": {k: round(mem1[k] - mem0[k], 1) for k in mem0},
    }
    record("soak", figures)
    print(json.dumps(figures, indent=2))
    assert code == 0
    assert lost == {}, figures
    assert counts["wrong_answer"] == 0 and not any(k.endswith("without_reason") for k in counts), figures
    assert counts["ok"] > 0.95 * counts["answered"], figures
    assert max_replicas >= 2, f"load never scaled the service up (autoscaler wanted at most {max_desired})"
    assert scaled_to_zero >= 1
    for k in fd0:
        assert fd1[k] <= fd0[k] + 10, f"{k} leaks file descriptors: {fd0[k]} -> {fd1[k]}"
    for k in mem0:
        assert mem1[k] - mem0[k] < 100, f"{k} memory grew by {mem1[k] - mem0[k]:.1f} MiB"
