"""Tracing's cost on LAC throughput: two local stacks side by side (`elasticserving up`, LAC at one
replica), one with tracing off (no OTEL_* endpoint) and one exporting spans (sampling 1.0 unless --ratio) to a
real Jaeger (tests/tracing/jaeger_server.py), measured in turns under the same closed-loop load.

    .venv/bin/python -m benchmarks.tracing_bench [--quick] [--runs 3]

Prints each figure as median (min-max) over the runs and the on/off throughput ratio of paired runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from benchmarks.load import closed_loop
from benchmarks.stats import MIN_RUNS, fmt, ratio, summarize
from tests.helpers import paddleservice, start_stack, wait_for, write_yaml
from tests.tracing.jaeger_server import environment, require_jaeger, run_jaeger

BODY = json.dumps({"feed": [{"words": "我爱北京天安门"}], "fetch": ["word_seg"]}).encode()
RUNTIME = "python3 -m runtime --model lac --name lac --port $PORT"


def _stack(tmp: Path, name: str, env: dict[str, str]):
    with environment(env):  # `up`, its activator and its replicas inherit them
        return start_stack(tmp / name, [write_yaml(tmp / f"{name}.yaml", paddleservice("lac", name, RUNTIME,
                                                                                      minScale=1))])


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
            rps: dict[str, list[float]] = {"off": [], "on": []}
            p50: dict[str, list[float]] = {"off": [], "on": []}
            for _ in range(args.runs):
                for name, s in stacks.items():  # in turns: a noisy moment hits both alike
                    r = asyncio.run(closed_loop(f"{s.base}/lac/prediction", BODY, args.connections, seconds,
                                                {"Host": f"lac.{name}.example.com",
                                                 "Content-Type": "application/json"}))
                    rps[name].append(r["rps"])
                    p50[name].append(r["p50_ms"])
            off, on = summarize(rps["off"]), summarize(rps["on"])
            print(json.dumps({"seconds": seconds, "connections": args.connections, "ratio": args.ratio,
                              "rps_off": off, "rps_on": on, "p50_ms_off": summarize(p50["off"]),
                              "p50_ms_on": summarize(p50["on"]), "on_over_off": ratio(on, off)}, indent=2))
            print(f"LAC rps, tracing off: {fmt(off)}; on (sampling {args.ratio:g}, to Jaeger): {fmt(on)}; "
                  f"on/off: {fmt(ratio(on, off))}")
        finally:
            for s in stacks.values():
                s.stop()


if __name__ == "__main__":
    main()
