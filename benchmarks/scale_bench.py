"""Scale of the local stack: N = 10, 100, 1000 PaddleServices registered at zero (echo replicas, nothing
started) in one `elasticserving up`. Measures idle CPU of the stack and of its activator (from
/proc/PID/stat), RSS per service, the bytes on the wire of one service's route change against the full
table, and cold start from zero (first answer through the activator) for a random sample of services."""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from benchmarks.load import percentile
from tests.helpers import ROOT, Stack, cpu_seconds, paddleservice, rss_mib, start_stack, wait_for, write_yaml

ECHO = f"{sys.executable} {ROOT / 'tests' / 'fixtures' / 'echo_replica.py'}"
NAMESPACE = "scale"

def activator_pid(stack: Stack) -> int:
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            cmdline = Path(f"/proc/{d}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == stack.proc.pid and b"activator" in cmdline:
            return int(d)
    raise AssertionError("activator process not found")


def idle_cpu(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """Share of one core each process used over `seconds` of wall time (nothing else asked of it)."""
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)  # the measurement itself: the stack is left alone for this long
    wall = time.monotonic() - t0
    return {k: round((cpu_seconds(p) - before[k]) / wall * 100, 3) for k, p in pids.items()}


def route_bytes(stack: Stack, name: str) -> dict[str, int]:
    """Bytes of the full route table, and of the delta an up-to-date activator gets when one service
    changes (a poke: its desired replicas go 0 -> 1)."""
    status, _, full = stack.control_http("GET", "/v1/routes")
    assert status == 200, full
    table = json.loads(full)
    status, _, data = stack.control_http("POST", "/v1/poke", {"service": f"{NAMESPACE}/{name}"})
    assert status == 200, data
    query = urllib.parse.urlencode({"epoch": table["epoch"], "since": table["version"], "wait": "10"})
    status, _, delta = stack.control_http("GET", f"/v1/routes?{query}")
    assert status == 200, delta
    update = json.loads(delta)
    assert not update["full"] and [r["service"] for r in update["services"]] == [f"{NAMESPACE}/{name}"], update
    return {"full_table_bytes": len(full), "one_change_bytes": len(delta)}


def cold_starts(stack: Stack, names: list[str]) -> list[float]:
    out = []
    for name in names:
        t0 = time.perf_counter()
        status, _, data = stack.request(f"{name}.{NAMESPACE}.example.com", "/infer", {"x": 1}, timeout=120)
        took = time.perf_counter() - t0
        assert status == 200, data
        out.append(took)
    return out


def one_size(n: int, idle_seconds: float, samples: int, seed: int = 7) -> dict:
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        names = [f"svc-{i:04d}" for i in range(n)]
        f = write_yaml(Path(tmp) / "services.yaml",
                       *(paddleservice(name, NAMESPACE, ECHO, minScale=0, window="6s") for name in names))
        t0 = time.monotonic()
        s = start_stack(Path(tmp), [f], config={"scale-to-zero-grace-period": "1s"}, timeout=300)
        try:
            up_seconds = time.monotonic() - t0
            pids = {"autoscaler": s.proc.pid, "activator": activator_pid(s)}
            # settled: every service registered and the activator holds the table
            wait_for(lambda: len(json.loads(s.control_http("GET", "/v1/paddleservices")[2])["items"]) == n,
                     60, 0.5, "services registered")
            time.sleep(3.0)  # let start-up work (imports, first polls) finish before measuring idleness
            cpu = idle_cpu(pids, idle_seconds)
            rss = {k: round(rss_mib(p), 1) for k, p in pids.items()}
            rng = random.Random(seed)
            sample = rng.sample(names, min(samples + 1, n))
            wire = route_bytes(s, sample[0])
            starts = cold_starts(s, sample[1:])
        finally:
            s.stop()
    return {
        "services": n, "up_seconds": round(up_seconds, 2), "idle_cpu_percent": cpu, "rss_mib": rss, **wire,
        "cold_start": {"samples": len(starts), "p50_s": round(percentile(starts, 50), 3),
                       "p95_s": round(percentile(starts, 95), 3)},
    }


def run(quick: bool = False) -> dict:
    idle_seconds = 10.0 if quick else 30.0
    samples = 3 if quick else 10
    sizes = {n: one_size(n, idle_seconds, samples) for n in (10, 100, 1000)}
    big, small = sizes[1000], sizes[10]
    per_service = {k: round((big["rss_mib"][k] - small["rss_mib"][k]) * 1024 / 990, 1) for k in big["rss_mib"]}
    res: dict = {f"n{n}": v for n, v in sizes.items()}
    res["rss_kib_per_service"] = per_service
    res["goal"] = "1,000 idle services: autoscaler < 2% of a core; one route change < 2 KB on the wire"
    res["goal_met"] = big["idle_cpu_percent"]["autoscaler"] < 2.0 and big["one_change_bytes"] < 2048
    return res


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
