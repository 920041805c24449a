"""Tracing's cost on LAC throughput: two local stacks side by side (`elasticserving up`, LAC at one
replica), one with tracing off (no OTEL_* endpoint) and one exporting spans (sampling 1.0 unless --ratio) to a
real Jaeger (tests/tracing/jaeger_server.py), measured in turns under the same closed-loop load.

    .venv/bin/python -m benchmarks.tracing_bench [--quick] [--runs 3]

Prints each figure as median (min-max) over the runs and the on/off throughput ratio of paired runs, and
where the CPU goes: microseconds of CPU per answered request in the stack's processes (`up`, activator,
replica) and in Jaeger, from /proc, so the cost of tracing splits into our processes' share (span
creation, the SDK's batch export) and the collector's. Load comes from wrk when installed (else from
aiohttp in this process, which shares the CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from benchmarks import wrk
from benchmarks.load import closed_loop
from benchmarks.stats import MIN_RUNS, fmt, ratio, summarize
from tests.helpers import cpu_seconds, paddleservice, start_stack, tree_cpu_seconds, wait_for, write_yaml
from tests.tracing.jaeger_server import environment, require_jaeger, run_jaeger

BODY = json.dumps({"feed": [{"words": "我爱北京天安门"}], "fetch": ["word_seg"]}).encode()
RUNTIME = "python3 -m runtime --model lac --name lac --port $PORT"


def _stack(tmp: Path, name: str, env: dict[str, str]):
    with environment(env):  # `up`, its activator and its replicas inherit them
        return start_stack(tmp / name, [write_yaml(tmp / f"{name}.yaml", paddleservice("lac", name, RUNTIME,
                                                                                      minScale=1))])


def _load(s, name: str, connections: int, seconds: float) -> dict[str, float]:
    """One closed-loop run against stack `s` (wrk when installed)."""
    url, headers = f"{s.base}/lac/prediction", {"Host": f"lac.{name}.example.com"}
    if wrk.available():
        r = wrk.closed_loop(url, BODY, connections, seconds, headers)
    else:
        r = asyncio.run(closed_loop(url, BODY, connections, seconds, {**headers, "Content-Type": "application/json"}))
    if r["errors"]:
        raise RuntimeError(f"the {name} stack: {r['errors']} failed requests")
    return r


def _pair(stacks: dict, jaeger_pid: int, connections: int, seconds: float) -> dict[str, float]:
    """One run of each stack in turn. CPU is read over the whole pair, so spans the traced stack exports
    (and Jaeger stores) after its turn still count: per answered request of its own for each stack, and
    Jaeger's per request of the traced stack."""
    cpu0 = {n: tree_cpu_seconds(s.proc.pid) for n, s in stacks.items()} | {"jaeger": cpu_seconds(jaeger_pid)}
    runs = {n: _load(s, n, connections, seconds) for n, s in stacks.items()}
    cpu1 = {n: tree_cpu_seconds(s.proc.pid) for n, s in stacks.items()} | {"jaeger": cpu_seconds(jaeger_pid)}
    out: dict[str, float] = {}
    for n, r in runs.items():
        out[f"rps_{n}"], out[f"p50_ms_{n}"] = r["rps"], r["p50_ms"]
        out[f"stack_cpu_us_{n}"] = (cpu1[n] - cpu0[n]) / max(1, r["requests"]) * 1e6
    out["jaeger_cpu_us_on"] = (cpu1["jaeger"] - cpu0["jaeger"]) / max(1, runs["on"]["requests"]) * 1e6
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 s per measurement instead of 10")
    p.add_argument("--runs", type=int, default=MIN_RUNS)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--ratio", type=float, default=1.0,
                   help="OTEL_TRACES_SAMPLER_ARG of the traced stack (parentbased_traceidratio; 1.0: every span)")
    args = p.parse_args()
    seconds = 3.0 if args.quick else 10.0
    with tempfile.TemporaryDirectory() as d, run_jaeger(require_jaeger(), Path(d)) as jaeger:
        tmp = Path(d)
        for n in ("off", "on"):
            (tmp / n).mkdir()
        stacks = {"off": _stack(tmp, "off", {}),
                  "on": _stack(tmp, "on", {"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_http,
                                           "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                                           "OTEL_TRACES_SAMPLER_ARG": str(args.ratio)})}
        try:
            for name, s in stacks.items():
                host = f"lac.{name}.example.com"
                wait_for(lambda s=s, h=host: s.request(h, "/lac/prediction", raw=BODY)[0] == 200, 120, 0.5,
                         f"the {name} stack answering")
            figures: dict[str, list[float]] = {}
            for _ in range(args.runs):
                # in turns: a noisy moment hits both alike
                for key, value in _pair(stacks, jaeger.pid, args.connections, seconds).items():
                    figures.setdefault(key, []).append(value)
            out = {k: summarize(v) for k, v in figures.items()}
            out["on_over_off"] = ratio(out["rps_on"], out["rps_off"])
            print(json.dumps({"seconds": seconds, "connections": args.connections, "ratio": args.ratio,
                              "load": "wrk" if wrk.available() else "aiohttp (shares the CPU)", **out}, indent=2))
            print(f"LAC rps, tracing off: {fmt(out['rps_off'])}; on (sampling {args.ratio:g}, to Jaeger): "
                  f"{fmt(out['rps_on'])}; on/off: {fmt(out['on_over_off'])}; CPU us per request: stack "
                  f"{fmt(out['stack_cpu_us_off'])} off, {fmt(out['stack_cpu_us_on'])} on; Jaeger "
                  f"{fmt(out['jaeger_cpu_us_on'])}")
        finally:
            for s in stacks.values():
                s.stop()


if __name__ == "__main__":
    main()
