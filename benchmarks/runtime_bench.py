"""Runtime overhead and dynamic batching for the LAC model: the same sentences through the runtime's
HTTP API vs `paddle.inference` called directly in this process; batching on vs off under 32 clients;
and the load held (requests/s with p99 < 100 ms) through the activator."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

from benchmarks.load import closed_loop, percentile
from tests.helpers import start_runtime

BODY = json.dumps({"feed": [{"words": "百度是一家高科技公司"}], "fetch": ["word_seg"]}, ensure_ascii=False).encode()


def _direct(seconds: float) -> dict:
    from runtime.model import LacModel

    m = LacModel()
    m.load()
    lat = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        m._run_batch(["百度是一家高科技公司"])
        lat.append(time.perf_counter() - t0)
    m.executor.shutdown()
    return {"requests": len(lat), "rps": len(lat) / seconds, "p50_ms": percentile(lat, 50) * 1000,
            "p99_ms": percentile(lat, 99) * 1000}


def _server(*extra: str) -> tuple[subprocess.Popen, int]:
    p, port, _ = start_runtime("--model", "lac", *extra)
    return p, port


def load_held(seconds: float) -> dict:
    """Through the whole local stack (activator + autoscaler + LAC replicas, maxScale 2): the highest
    throughput whose p99 stays under 100 ms, stepping the number of closed-loop clients up."""
    import tempfile
    from pathlib import Path

    from tests.helpers import paddleservice, start_stack, wait_for, write_yaml

    arg = "python3 -m runtime --model lac --name lac --port $PORT --batch-timeout-ms 2"
    steps = []
    with tempfile.TemporaryDirectory() as tmp:
        f = write_yaml(Path(tmp) / "l.yaml", paddleservice("load", "bench", arg, minScale=1, maxScale=2))
        s = start_stack(Path(tmp), [f])
        try:
            wait_for(lambda: s.service("bench/load")["status"]["replicas"] >= 1, 60, 0.1, "replica")
            for clients in (1, 4, 8, 16, 32, 64):
                r = asyncio.run(closed_loop(f"{s.base}/lac/prediction", BODY, clients, seconds,
                                            {"Host": "load.bench.example.com"}))
                steps.append({"clients": clients, **r})
                if r["p99_ms"] >= 100:
                    break
        finally:
            s.stop()
    ok = [st for st in steps if st["p99_ms"] < 100 and st["errors"] == 0]
    best = max(ok, key=lambda st: st["rps"]) if ok else None
    return {"steps": steps, "rps_at_p99_under_100ms": best["rps"] if best else 0.0,
            "clients_at_best": best["clients"] if best else 0}


def run(quick: bool = False) -> dict:
    seconds = 3.0 if quick else 10.0
    direct = _direct(seconds)
    p, port = _server("--max-batch-size", "1")
    try:
        url = f"http://127.0.0.1:{port}/lac/prediction"
        batch1 = asyncio.run(closed_loop(url, BODY, 1, seconds))
        nobatch32 = asyncio.run(closed_loop(url, BODY, 32, seconds))
    finally:
        p.terminate()
        p.wait()
    p, port = _server("--max-batch-size", "32", "--batch-timeout-ms", "2")
    try:
        batch32 = asyncio.run(closed_loop(f"http://127.0.0.1:{port}/lac/prediction", BODY, 32, seconds))
    finally:
        p.terminate()
        p.wait()
    return {
        "direct_paddle": direct, "runtime_batch1_1client": batch1,
        "runtime_overhead_ratio_p50": batch1["p50_ms"] / direct["p50_ms"],
        "no_batching_32clients": nobatch32, "batching_32clients": batch32,
        "batching_throughput_gain": batch32["rps"] / nobatch32["rps"],
        "load_held_lac_2_cores": load_held(2.0 if quick else 8.0),
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
