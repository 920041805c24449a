"""Activator overhead: the same closed-loop load (64 connections, a tiny echo replica so the proxy
dominates) sent directly to the replica and through the activator, in one run; plus cold start: first
answer from zero vs the replica's own start-up time.

Self-contained: a small control API in this process (autoscaler/wire.py routes; starts the cold
service's replica when poked) and `python -m activator` from `--tree` (default: this checkout), so the
same harness measures two trees (`--tree /path/to/main`). The load comes from `wrk` when it is
installed (a C generator leaves the 2 cores to the servers), else from the aiohttp generator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from autoscaler.wire import Endpoint, Route, RoutesUpdate, SideRoute
from benchmarks import wrk
from benchmarks.load import closed_loop
from benchmarks.runtime_bench import MachineFloor
from benchmarks.stats import MIN_RUNS, ratio, summarize
from tests.helpers import ROOT, cpu_seconds, free_port, wait_for

ECHO = [sys.executable, str(ROOT / "tests/fixtures/echo_replica.py")]
HOST = "echo.bench.example.com"


def _route(name: str, port: int | None) -> Route:
    eps = (Endpoint(id=f"{name}-0", host="127.0.0.1", http_port=port),) if port else ()
    return Route(service=f"bench/{name}", name=name, namespace="bench", hosts=(f"{name}.bench.example.com",),
                 sides={"default": SideRoute(ready=bool(port), desired=len(eps), endpoints=eps)})


class Control:
    """The control API as the activator sees it, on its own thread and loop."""

    def __init__(self, echo_port: int) -> None:
        self.routes = {"echo": echo_port, "cold": None}
        self.version = 1
        self.cold_startup_s: float | None = None
        self.procs: list[subprocess.Popen] = []
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._changed: asyncio.Event | None = None
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _update(self) -> str:
        return RoutesUpdate(epoch="bench", version=self.version, full=True,
                            services=tuple(_route(n, p) for n, p in self.routes.items())).model_dump_json()

    async def _start(self) -> None:
        self._changed = asyncio.Event()

        async def routes(request: web.Request) -> web.Response:
            since = int(request.query.get("since", "-1"))
            if since >= self.version and request.query.get("epoch", "bench") == "bench":
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), float(request.query.get("wait", "0")))
                except TimeoutError:
                    pass
            return web.Response(text=self._update(), content_type="application/json")

        async def ok(request: web.Request) -> web.Response:
            await request.read()
            return web.json_response({})

        async def poke(request: web.Request) -> web.Response:
            body = json.loads(await request.read())
            if body.get("service") == "bench/cold" and self.routes["cold"] is None and not self.procs:
                asyncio.get_running_loop().run_in_executor(None, self._start_cold)
            return web.json_response({"poked": True})

        app = web.Application()
        app.add_routes([web.get("/v1/routes", routes), web.post("/v1/stats", ok), web.post("/v1/poke", poke)])
        runner = self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()

    def _start_cold(self) -> None:
        t0 = time.perf_counter()
        port = free_port()
        self.procs.append(subprocess.Popen([*ECHO, "--port", str(port)]))
        wait_for(lambda: _get(f"http://127.0.0.1:{port}/ready") == 200, 60, 0.01, "cold replica")
        self.cold_startup_s = time.perf_counter() - t0
        self.routes["cold"] = port
        self.version += 1
        self._changed_set()

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
            p.wait(10)
        self._changed_set()
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    def _changed_set(self) -> None:
        self._loop.call_soon_threadsafe(self._changed.set)  # type: ignore[union-attr]  # end long-polls


def _get(url: str, headers: dict[str, str] | None = None) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def start_activator(tree: Path, control: Control, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "activator", "--host", "127.0.0.1", "--http-port", str(port), "--grpc-port", "0",
           "--autoscaler", control.url]
    help_text = subprocess.run([*cmd[:3], "--help"], capture_output=True, text=True, cwd=tree,
                               env={**os.environ, "PYTHONPATH": str(tree)}).stdout
    if "--admin-port" in help_text:
        cmd += ["--admin-host", "127.0.0.1", "--admin-port", str(free_port())]
    proc = subprocess.Popen(cmd, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)
    wait_for(lambda: _get(f"http://127.0.0.1:{port}/echo", {"Host": HOST}) == 200, 60, 0.05, "activator routing")
    return proc, port


def run(quick: bool = False) -> dict:
    """The suite for `python -m benchmarks`: three measurements, each figure their median with min-max
    (ratios run by run), and the one-client latency CDFs of the last run. With wrk, each run also
    measures the machine's floor (benchmarks.runtime_bench.MachineFloor) beside its one-client figures:
    `one_client_added_to_floor` is the activator's added p50 over that floor, run by run (issue 27)."""
    floor = MachineFloor() if wrk.available() else None
    try:
        runs = [measure(quick, floor=floor) for _ in range(MIN_RUNS)]
    finally:
        if floor is not None:
            floor.close()

    def figures(r: dict) -> dict[str, float]:
        return {"one_client_added_p50_ms": r["one_client"]["added_p50_ms"],
                "one_client_added_p99_ms": r["one_client"]["added_p99_ms"],
                "c64_added_p50_ms": r["added_p50_ms"], "c64_added_p99_ms": r["added_p99_ms"],
                "c64_throughput_ratio": r["throughput_ratio"], "c64_activator_rps": r["activator"]["rps"],
                "c64_direct_rps": r["direct"]["rps"],
                "activator_cpu_us_per_request": r["activator"]["cpu_us_per_request"],
                "cold_start_added_s": r["cold_start"]["activator_added_s"],
                **({"machine_floor_added_p50_ms": r["floor"]["machine_floor_added_p50_ms"]} if "floor" in r else {})}

    per_run = [figures(r) for r in runs]
    out: dict = {k: summarize([f[k] for f in per_run]) for k in per_run[0]}
    if "machine_floor_added_p50_ms" in out:
        out["one_client_added_to_floor"] = ratio(out["one_client_added_p50_ms"], out["machine_floor_added_p50_ms"])
        out["floor_goal"] = "one client: the activator's added p50 <= 0.6x the machine's floor (run by run)"
        out["floor_goal_met"] = out["one_client_added_to_floor"]["median"] <= 0.6
    out["generator"] = runs[-1]["generator"]
    out["goal"] = runs[-1]["goal"]
    med = {k: v["median"] for k, v in out.items() if isinstance(v, dict)}
    out["goal_met"] = (med["c64_added_p50_ms"] < 1 and med["c64_added_p99_ms"] < 5
                       and med["c64_throughput_ratio"] >= 0.7)
    last = runs[-1]["one_client"]
    out["charts"] = [{"name": "activator-latency-cdf", "kind": "line",
                      "title": "One client: latency CDF, direct vs through the activator (last run)",
                      "xlabel": "latency (ms)", "ylabel": "fraction of requests",
                      "series": {"direct": last["direct"].get("cdf", []),
                                 "through the activator": last["activator"].get("cdf", [])}}]
    return out


def measure(quick: bool = False, tree: Path = ROOT, floor: MachineFloor | None = None) -> dict:
    """One side-by-side measurement of `tree`'s activator against the replica called directly (with
    `floor`, the machine's floor measured right after the one-client figures)."""
    seconds = 3.0 if quick else 10.0
    echo_port = free_port()
    echo = subprocess.Popen([*ECHO, "--port", str(echo_port)])
    control = Control(echo_port)
    with tempfile.TemporaryDirectory() as tmp:
        act = None
        try:
            wait_for(lambda: _get(f"http://127.0.0.1:{echo_port}/ready") == 200, 60, 0.05, "replica")
            act, port = start_activator(tree, control, Path(tmp) / "activator.log")
            direct_url, via_url = f"http://127.0.0.1:{echo_port}/echo", f"http://127.0.0.1:{port}/echo"
            body = b'{"x": 1}'
            direct1 = load(direct_url, body, 1, seconds / 2)
            via1 = load(via_url, body, 1, seconds / 2, {"Host": HOST})
            machine = floor.measure(seconds / 2) if floor is not None else None
            direct = load(direct_url, body, 64, seconds)
            cpu0 = cpu_seconds(act.pid)
            via = load(via_url, body, 64, seconds, {"Host": HOST})
            # CPU per request is steadier than throughput on a machine shared with other work.
            via["cpu_us_per_request"] = (cpu_seconds(act.pid) - cpu0) / max(1, via["requests"]) * 1e6
            cold = asyncio.run(_cold_start(port, control))
        finally:
            if act is not None:
                act.terminate()
                act.wait(40)
            echo.terminate()
            echo.wait(10)
            control.close()
    return {
        "tree": str(tree),
        "one_client": {"direct": direct1, "activator": via1,
                       "added_p50_ms": via1["p50_ms"] - direct1["p50_ms"],
                       "added_p99_ms": via1["p99_ms"] - direct1["p99_ms"]},
        "direct": direct, "activator": via,
        "added_p50_ms": via["p50_ms"] - direct["p50_ms"], "added_p99_ms": via["p99_ms"] - direct["p99_ms"],
        "throughput_ratio": via["rps"] / direct["rps"],
        "generator": "wrk" if wrk.available() else "aiohttp",
        "goal": "added p50 < 1 ms, p99 < 5 ms, throughput >= 70% of direct (64 connections)",
        "cold_start": cold,
        **({"floor": machine} if machine is not None else {}),
    }


def load(url: str, body: bytes, connections: int, seconds: float, headers: dict[str, str] | None = None) -> dict:
    if wrk.available():
        return wrk.closed_loop(url, body, connections, seconds, headers)
    return asyncio.run(closed_loop(url, body, connections, seconds, headers))


async def _cold_start(port: int, control: Control) -> dict:
    """Time to first answer from zero vs the replica's own spawn-to-ready time: the difference is what
    the activator (hold, poke, route update) adds."""
    async with aiohttp.ClientSession() as sess:
        t0 = time.perf_counter()
        async with sess.post(f"http://127.0.0.1:{port}/x", data=b"{}",
                             headers={"Host": "cold.bench.example.com"}) as r:
            await r.read()
            assert r.status == 200, r.status
        first_answer = time.perf_counter() - t0
    own = control.cold_startup_s or 0.0
    return {"first_answer_from_zero_s": first_answer, "replica_startup_s": own,
            "activator_added_s": first_answer - own}


def summary(tree: Path, runs: list[dict]) -> dict:
    """The median of each figure over `runs` of one tree."""
    figures = {"activator_rps": ("activator", "rps"), "direct_rps": ("direct", "rps"),
               "activator_p50_ms": ("activator", "p50_ms"), "activator_p99_ms": ("activator", "p99_ms"),
               "activator_cpu_us_per_request": ("activator", "cpu_us_per_request"),
               "cold_added_s": ("cold_start", "activator_added_s")}
    med = {k: statistics.median(r[k] for r in runs) for k in ("added_p50_ms", "added_p99_ms", "throughput_ratio")}
    med |= {k: statistics.median(r[a][b] for r in runs) for k, (a, b) in figures.items()}
    return {"tree": str(tree), "runs": len(runs), "median": med,
            "each": [{"rps": r["activator"]["rps"], "direct_rps": r["direct"]["rps"], "p50": r["activator"]["p50_ms"],
                      "p99": r["activator"]["p99_ms"], "cpu_us": r["activator"]["cpu_us_per_request"]} for r in runs]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tree", type=Path, nargs="+", default=[ROOT],
                   help="checkouts whose `python -m activator` is measured (several: runs interleaved)")
    p.add_argument("--runs", type=int, default=1, help="repeat and report the median of each figure")
    args = p.parse_args()
    trees = [t.resolve() for t in args.tree]
    results: dict[Path, list[dict]] = {t: [] for t in trees}
    for _ in range(args.runs):
        for t in trees:  # interleaved, so that a noisy minute on a shared machine hits every tree alike
            results[t].append(measure(args.quick, t))
    if args.runs == 1 and len(trees) == 1:
        print(json.dumps(results[trees[0]][0], indent=2))
        return
    print(json.dumps([summary(t, rs) for t, rs in results.items()], indent=2))


if __name__ == "__main__":
    main()
