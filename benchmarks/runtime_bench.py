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
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
