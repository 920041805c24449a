"""Dynamic batching for a user's own model (the raw handler), side by side in one run: the models of
tests/runtime/build_user_model.py with one FP32 [-1,4] input (scores FP32 [-1,3] and argmax INT64 [-1]):
`user`, a 4-16-3 net whose call costs less than the runtime's own work per request, and `mlp`, two
hidden layers of 256 (67k parameters), served by `python -m runtime --model DIR`, Paddle and ONNX, one
row per v2 REST JSON request, 32 closed-loop clients, batching off (`--max-batch-size 1`) against on
(`--max-batch-size 32`, a 2 ms window, and no window: only what queued during the previous run is merged).

Runs alternate between the modes, so each gain is run i over run i (benchmarks.stats.ratio): median of
>= 3 runs with min-max. Where the time goes: `ceiling_rps` is the same POST to a model the runtime does
not serve (HTTP, JSON and tensor decoding, routing, an error answer: the runtime's per-request work with
no inference at all), an upper bound for any batching; `backend_us_batch_1/32` is one backend call in
this process; `mean_batch_rows` comes from the runtime's batch-size histogram; `loop_cpu_us_per_request`
and `other_cpu_us_per_request` split the runtime's CPU per answered request between the event loop's
thread and the others (the inference thread), from /proc.
Load comes from wrk when installed, else from aiohttp (benchmarks.load), which shares the CPU.

What bounds the gain: batching takes the model call and the hand-off to the inference thread (~40-60 us
per request) out of each request, but the event loop's own ~110 us per request (HTTP, JSON decode and
encode, the data plane) stays. The gain is about (loop + call + hand-off) / (loop + call per row): for
`user` (a 8-29 us call) that is ~1.5-1.8x whatever the batcher does; a model whose call costs more than
the loop's share, as `mlp`, gains more."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import wrk
from benchmarks.load import closed_loop as aiohttp_closed_loop
from benchmarks.stats import ratio, repeat
from tests.helpers import ROOT, http, start_runtime

CLIENTS = 32
NAME = "user"  # the name each model is served under
MODELS = ("user", "mlp")  # tests/runtime/build_user_model.py
ROW = [0.25, -1.5, 0.75, 2.0]
BODY = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}).encode()
MODES = {  # mode -> runtime flags
    "off": ("--max-batch-size", "1"),
    "on": ("--max-batch-size", "32", "--batch-timeout-ms", "2"),
    "on_no_window": ("--max-batch-size", "32"),
}
BACKENDS = ("paddle", "onnx")


def build_models(out: Path) -> Path:
    subprocess.run([sys.executable, str(ROOT / "tests/runtime/build_user_model.py"), str(out), *MODELS],
                   check=True, capture_output=True, timeout=240)
    return out


def closed_loop(url: str, connections: int, seconds: float) -> dict[str, Any]:
    if wrk.available():
        return wrk.closed_loop(url, BODY, connections, seconds)
    return asyncio.run(aiohttp_closed_loop(url, BODY, connections, seconds))


def answered_rps(url: str, connections: int, seconds: float) -> float:
    """Answers per second whatever their status (the ceiling's answers are 404s, which the load
    generators count as errors: wrk's rate includes them, aiohttp's does not)."""
    t0 = time.monotonic()
    r = closed_loop(url, connections, seconds)
    if r.get("generator") == "wrk":
        return r["rps"]
    return (r["requests"] + r["errors"]) / (time.monotonic() - t0)


def batch_histogram(port: int) -> tuple[float, float]:
    """(backend calls, rows) so far, from the runtime's batch-size histogram."""
    text = http("GET", f"http://127.0.0.1:{port}/metrics")[2].decode()
    values = dict(re.findall(rf'^elasticserving_runtime_batch_size_(count|sum)\{{model="{NAME}"\}} (\S+)$', text,
                             re.M))
    return float(values.get("count", 0)), float(values.get("sum", 0))


def thread_cpu_seconds(pid: int) -> tuple[float, float]:
    """(event loop thread, all other threads) CPU seconds of process `pid` so far (Linux /proc): the loop
    runs in the main thread, the model on the inference thread."""
    tick = os.sysconf("SC_CLK_TCK")
    loop = other = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        if int(tid) == pid:
            loop += seconds
        else:
            other += seconds
    return loop, other


def backend_call_us(model: Path, backend: str, rows: int, calls: int = 2000) -> float:
    """One backend call in this process, microseconds (mean of `calls`, after a warm-up)."""
    from runtime.backends import load_backend

    b = load_backend(model, backend, 1, None)[1]
    x = np.tile(np.asarray(ROW, dtype=np.float32), (rows, 1))
    b.run({"x": x})
    t0 = time.perf_counter()
    for _ in range(calls):
        b.run({"x": x})
    return (time.perf_counter() - t0) / calls * 1e6


def measure(model_dir: Path, backend: str, seconds: float, runs: int) -> dict[str, Any]:
    procs = {}
    try:
        for mode, flags in MODES.items():
            procs[mode] = start_runtime("--model", str(model_dir / backend), "--name", NAME, *flags)
        urls = {mode: f"http://127.0.0.1:{port}/v2/models/{NAME}/infer" for mode, (_, port, _) in procs.items()}
        ceiling_url = urls["off"].replace(f"/{NAME}/", "/no-such-model/")
        for url in urls.values():
            closed_loop(url, CLIENTS, 1.0)  # warm-up: first requests allocate

        def one() -> dict[str, float]:
            out: dict[str, float] = {}
            for mode, url in urls.items():
                proc, port, _ = procs[mode]
                calls0, rows0 = batch_histogram(port)
                loop0, other0 = thread_cpu_seconds(proc.pid)
                r = closed_loop(url, CLIENTS, seconds)
                loop1, other1 = thread_cpu_seconds(proc.pid)
                calls1, rows1 = batch_histogram(port)
                if r["errors"]:
                    raise RuntimeError(f"{backend} {mode}: {r['errors']} failed requests")
                out[f"rps_{mode}"] = r["rps"]
                out[f"p50_ms_{mode}"] = r["p50_ms"]
                out[f"mean_batch_rows_{mode}"] = (rows1 - rows0) / max(1.0, calls1 - calls0)
                answered = max(1, r["requests"])
                out[f"loop_cpu_us_per_request_{mode}"] = (loop1 - loop0) / answered * 1e6
                out[f"other_cpu_us_per_request_{mode}"] = (other1 - other0) / answered * 1e6
            out["ceiling_rps"] = answered_rps(ceiling_url, CLIENTS, seconds)
            return out

        res: dict[str, Any] = repeat(one, runs)
    finally:
        for p, _, _ in procs.values():
            p.terminate()
            p.wait(30)
    res["gain"] = ratio(res["rps_on"], res["rps_off"])
    res["gain_no_window"] = ratio(res["rps_on_no_window"], res["rps_off"])
    res["ceiling_over_off"] = ratio(res["ceiling_rps"], res["rps_off"])
    res["backend_us_batch_1"] = backend_call_us(model_dir / backend, backend, 1)
    res["backend_us_batch_32"] = backend_call_us(model_dir / backend, backend, 32)
    return res


def run(quick: bool = False, runs: int = 3, seconds: float | None = None) -> dict[str, Any]:
    seconds = seconds or (2.0 if quick else 5.0)
    out: dict[str, Any] = {"clients": CLIENTS, "load": "wrk" if wrk.available() else "aiohttp (shares the CPU)"}
    with tempfile.TemporaryDirectory(prefix="user-model-bench-") as tmp:
        models = build_models(Path(tmp))
        for model in MODELS:
            out[model] = {backend: measure(models / model, backend, seconds, runs) for backend in BACKENDS}
    out["goal"] = f"batching gain >= 2x at {CLIENTS} clients (2 ms window), each model on Paddle and ONNX"
    out["goal_met"] = all(out[m][b]["gain"]["median"] >= 2 for m in MODELS for b in BACKENDS)
    rows = [(m, b) for m in MODELS for b in BACKENDS]
    out["charts"] = [{
        "name": "user-model-batching", "kind": "bar", "xlabel": "model, backend", "ylabel": "requests/s",
        "title": f"own models [-1,4] at {CLIENTS} clients: batching off vs on (median, min-max)",
        "series": {label: [[f"{m} {b}", out[m][b][key]["median"], out[m][b][key]["min"], out[m][b][key]["max"]]
                           for m, b in rows]
                   for label, key in (("off (max batch 1)", "rps_off"), ("on (2 ms window)", "rps_on"),
                                      ("on (no window)", "rps_on_no_window"),
                                      ("no inference (ceiling)", "ceiling_rps"))},
    }]
    return out


def summary_line(res: dict[str, Any]) -> str:
    parts = []
    for m, b in ((m, b) for m in MODELS for b in BACKENDS):
        g, r = res[m][b]["gain"], res[m][b]
        parts.append(f"{m} {b}: off {r['rps_off']['median']:.0f} rps, on {r['rps_on']['median']:.0f} rps, gain "
                     f"{g['median']:.2f}x ({g['min']:.2f}-{g['max']:.2f}), ceiling {r['ceiling_rps']['median']:.0f} rps")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.user_model_bench")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=None)
    args = ap.parse_args(argv)
    r = run(args.quick, args.runs, args.seconds)
    print(json.dumps({k: v for k, v in r.items() if k != "charts"}, indent=2, default=str))
    print(summary_line(r))


if __name__ == "__main__":
    main()
