"""Runtime hot path and dynamic batching for the LAC model, side by side in one run: one sentence through
the runtime's HTTP API (wrk, one connection) against the same sentence through `paddle.inference`
called directly in this process; then batching on vs off at 8/16/32/64 clients.

Each figure is measured >= 3 times (benchmarks.stats): median with min-max. Load comes from wrk when it
is installed (a C load generator, so the client does not take the servers' CPU), else from aiohttp."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

from benchmarks import wrk
from benchmarks.load import closed_loop as aiohttp_closed_loop
from benchmarks.load import percentile
from benchmarks.stats import ratio, repeat
from tests.helpers import start_runtime

SENTENCE = "百度是一家高科技公司"
BODY = json.dumps({"feed": [{"words": SENTENCE}], "fetch": ["word_seg"]}, ensure_ascii=False).encode()
CLIENTS = (8, 16, 32, 64)


def closed_loop(url: str, connections: int, seconds: float) -> dict[str, Any]:
    if wrk.available():
        return wrk.closed_loop(url, BODY, connections, seconds)
    return asyncio.run(aiohttp_closed_loop(url, BODY, connections, seconds))


class DirectLac:
    """LAC through paddle.inference with nothing around it: encode, run, decode, on this thread — the
    floor the runtime's HTTP path is measured against."""

    def __init__(self) -> None:
        import paddle.inference as pi

        from runtime.lac import LacSegmenter, lac_dir

        model_dir = lac_dir() / "seg_model" / "model"
        self.seg = LacSegmenter(model_dir)
        cfg = pi.Config(str(model_dir))
        cfg.disable_gpu()
        cfg.set_cpu_math_library_num_threads(1)
        cfg.disable_mkldnn()  # as the runtime does (runtime/model.py)
        cfg.disable_glog_info()
        self.predictor = pi.create_predictor(cfg)

    def segment(self, sentence: str) -> str:
        ids, lod = self.seg.encode([sentence])
        p = self.predictor
        h = p.get_input_handle(p.get_input_names()[0])
        h.reshape(list(ids.shape))
        h.copy_from_cpu(ids)
        h.set_lod([lod])
        p.run()
        tags = p.get_output_handle(p.get_output_names()[0]).copy_to_cpu()
        return self.seg.join(self.seg.decode(sentence, tags))

    def measure(self, seconds: float) -> dict[str, float]:
        lat = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            self.segment(SENTENCE)
            lat.append(time.perf_counter() - t0)
        return {"p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000,
                "rps": len(lat) / seconds}


def _runtime(*extra: str) -> tuple[subprocess.Popen, str]:
    p, port, _ = start_runtime("--model", "lac", *extra)
    return p, f"http://127.0.0.1:{port}/lac/prediction"


def _stop(p: subprocess.Popen) -> None:
    p.terminate()
    p.wait(30)


def hot_path(seconds: float, runs: int) -> dict[str, Any]:
    """p50 of one request at a time: direct call vs the runtime over HTTP (batch size 1), alternating
    so both see the same machine load."""
    direct = DirectLac()
    assert direct.segment("我爱北京天安门") == "我|爱|北京|天安门"
    p, url = _runtime("--max-batch-size", "1")
    cdf: list[list[float]] = []
    try:
        closed_loop(url, 1, 1.0)  # warm-up: first requests allocate

        def one() -> dict[str, float]:
            d = direct.measure(seconds)
            r = closed_loop(url, 1, seconds)
            cdf[:] = r.get("cdf", [])
            return {"direct_p50_ms": d["p50_ms"], "runtime_p50_ms": r["p50_ms"],
                    "added_p50_ms": r["p50_ms"] - d["p50_ms"], "direct_p99_ms": d["p99_ms"],
                    "runtime_p99_ms": r["p99_ms"]}

        out: dict[str, Any] = repeat(one, runs)
    finally:
        _stop(p)
    out["goal"] = "the runtime adds < 0.3 ms p50 at batch 1 over the direct call"
    out["goal_met"] = out["added_p50_ms"]["median"] < 0.3
    out["runtime_cdf"] = cdf
    return out


def batching(seconds: float, runs: int) -> dict[str, Any]:
    """Throughput with batching off (max batch 1) and on (max batch 32, 2 ms window) per client count;
    the gain is run i over run i."""
    res: dict[str, Any] = {}
    for mode, extra in (("off", ("--max-batch-size", "1")), ("on", ("--max-batch-size", "32",
                                                                      "--batch-timeout-ms", "2"))):
        p, url = _runtime(*extra)
        try:
            closed_loop(url, 8, 1.0)
            for c in CLIENTS:
                res[f"{mode}_{c}"] = repeat(lambda url=url, c=c: {"rps": closed_loop(url, c, seconds)["rps"]}, runs)
        finally:
            _stop(p)
    out: dict[str, Any] = {}
    for c in CLIENTS:
        out[f"clients_{c}"] = {"rps_off": res[f"off_{c}"]["rps"], "rps_on": res[f"on_{c}"]["rps"],
                               "gain": ratio(res[f"on_{c}"]["rps"], res[f"off_{c}"]["rps"])}
    out["goal"] = "batching gain >= 2.5x at 32 clients"
    out["goal_met"] = out["clients_32"]["gain"]["median"] >= 2.5
    return out


def run(quick: bool = False) -> dict[str, Any]:
    seconds, runs = (2.0, 3) if quick else (5.0, 3)
    hot = hot_path(seconds, runs)
    batch = batching(seconds, runs)
    cdf = hot.pop("runtime_cdf")
    charts = [
        {"name": "runtime-throughput-vs-clients", "title": "LAC runtime throughput vs clients (median of runs)",
         "kind": "line", "xlabel": "closed-loop clients", "ylabel": "requests/s",
         "series": {f"batching {m}": [[c, batch[f"clients_{c}"][f"rps_{m}"]["median"]] for c in CLIENTS]
                    for m in ("off", "on")}},
    ]
    if cdf:
        charts.append({"name": "runtime-latency-cdf", "title": "LAC at batch 1: latency CDF (last run)",
                       "kind": "line", "xlabel": "latency (ms)", "ylabel": "fraction of requests",
                       "series": {"runtime over HTTP (wrk, 1 connection)": cdf}})
    return {"hot_path": hot, "batching": batch, "charts": charts}


def summary_line(res: dict[str, Any]) -> str:
    hot, b = res["hot_path"], res["batching"]["clients_32"]["gain"]
    return (f"direct p50 {hot['direct_p50_ms']['median']:.3f} ms, runtime p50 {hot['runtime_p50_ms']['median']:.3f} ms "
            f"(+{hot['added_p50_ms']['median']:.3f}); batching gain at 32 clients {b['median']:.2f}x")


if __name__ == "__main__":
    r = run(quick="--quick" in sys.argv)
    print(json.dumps(r, indent=2, default=str))
    print(summary_line(r))
