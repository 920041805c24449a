"""Activator overhead: the same closed-loop load (64 connections, a tiny echo replica so the proxy
dominates) sent directly to the replica and through the activator, in one run; plus cold start:
first answer from zero vs the replica's own start-up time. The load comes from `wrk` when it is
installed (a C generator leaves the 2 cores to the servers), else from the aiohttp generator."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

from benchmarks import wrk
from benchmarks.load import closed_loop
from tests.helpers import ROOT, paddleservice, start_stack, wait_for, write_yaml

ECHO = f"python3 {ROOT}/tests/fixtures/echo_replica.py"
HOST = "echo.bench.example.com"


def run(quick: bool = False) -> dict:
    seconds = 3.0 if quick else 10.0
    with tempfile.TemporaryDirectory() as tmp:
        f = write_yaml(Path(tmp) / "b.yaml", paddleservice("echo", "bench", ECHO, minScale=1, maxScale=1),
                       paddleservice("cold", "bench", ECHO, minScale=0))
        s = start_stack(Path(tmp), [f])
        try:
            wait_for(lambda: s.service("bench/echo")["status"]["replicas"] == 1, 60, 0.1, "replica")
            routes = json.loads(urllib.request.urlopen(f"{s.control}/v1/routes").read())
            ep = next(r for r in routes["services"] if r["service"] == "bench/echo")["sides"]["default"]["endpoints"][0]
            direct_url = f"http://{ep['host']}:{ep['http_port']}/echo"
            body = b'{"x": 1}'
            direct1 = load(direct_url, body, 1, seconds / 2)
            via1 = load(f"{s.base}/echo", body, 1, seconds / 2, {"Host": HOST})
            direct = load(direct_url, body, 64, seconds)
            via = load(f"{s.base}/echo", body, 64, seconds, {"Host": HOST})
            cold = asyncio.run(_cold_start(s))
        finally:
            s.stop()
    return {
        "one_client": {"direct": direct1, "activator": via1,
                       "added_p50_ms": via1["p50_ms"] - direct1["p50_ms"],
                       "added_p99_ms": via1["p99_ms"] - direct1["p99_ms"]},
        "direct": direct, "activator": via,
        "added_p50_ms": via["p50_ms"] - direct["p50_ms"], "added_p99_ms": via["p99_ms"] - direct["p99_ms"],
        "throughput_ratio": via["rps"] / direct["rps"],
        "generator": "wrk" if wrk.available() else "aiohttp",
        "goal": "added p50 < 1 ms, p99 < 5 ms, throughput >= 70% of direct (64 connections)",
        "cold_start": cold,
    }


def load(url: str, body: bytes, connections: int, seconds: float, headers: dict[str, str] | None = None) -> dict:
    if wrk.available():
        return wrk.closed_loop(url, body, connections, seconds, headers)
    return asyncio.run(closed_loop(url, body, connections, seconds, headers))


async def _cold_start(s) -> dict:
    """Time to first answer from zero vs the replica's own spawn-to-ready time (reported by the
    platform): the difference is what the activator and autoscaler add."""
    async with aiohttp.ClientSession() as sess:
        t0 = time.perf_counter()
        async with sess.post(f"{s.base}/x", data=b"{}", headers={"Host": "cold.bench.example.com"}) as r:
            await r.read()
            assert r.status == 200
        first_answer = time.perf_counter() - t0
    own = s.service("bench/cold")["autoscaler"]["default"]["last_start_seconds"]
    return {"first_answer_from_zero_s": first_answer, "replica_startup_s": own,
            "activator_added_s": first_answer - own}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
