"""Runs the benchmark suites one after another and writes benchmarks/results/report.{json,md}.

Each suite is a module with `run(quick: bool) -> dict`: numbers, figures measured >= 3 times as
benchmarks.stats summaries (shown as median (min-max, n)), goals, and optional `charts` (chart specs
that benchmarks.charts draws into PNG files beside the report)."""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.charts import render_all
from benchmarks.stats import fmt, is_summary

SUITES = [
    ("autoscaler", "benchmarks.autoscaler_sim", "KPA decider vs naive policy on load traces (simulation)"),
    ("runtime", "benchmarks.runtime_bench", "runtime overhead vs direct paddle.inference; dynamic batching"),
    ("user-model", "benchmarks.user_model_bench",
     "a user's own models (raw handler, FP32 [-1,4]: 4-16-3 and a 256-256 MLP): dynamic batching on vs off at "
     "32 clients, Paddle and ONNX"),
    ("activator", "benchmarks.activator_bench", "activator in path vs direct; cold start added latency"),
    ("coldstart", "benchmarks.coldstart_bench", "first answer from zero: pre-warmed vs plain start"),
    ("storage-coldstart", "benchmarks.storage_coldstart_bench",
     "a 100 MB storageUri model from zero: downloaded vs cached vs baked in (a local path)"),
    ("image", "benchmarks.image_bench", "EfficientNet-Lite0: paddle.inference (oneDNN off/on) vs ONNX Runtime, batch 1 and 16"),
    ("scale", "benchmarks.scale_bench", "1,000 services at zero: idle CPU, RSS per service, route bytes per change, cold start"),
    ("cluster", "benchmarks.cluster_bench", "real node: apply to Ready, cold start through a real Pod (plain vs standby), control-plane memory, cross-node request, release steps under load"),
    ("cluster-storage", "benchmarks.cluster_storage_bench",
     "real node: a 100 MB storageUri model from zero: downloaded vs node-cached vs standby vs pvc (on disk)"),
    ("reliability", "benchmarks.reliability_bench", "soak and faults: requests sent, answered, errors by kind"),
]
CHARTS_KEY = "charts"
RESULTS = Path(__file__).resolve().parent / "results"


NODE_NOTE = ("measured while a Kubernetes node (scripts/cluster.sh up) was running on this machine: its "
             "control plane shares the CPU, so latency figures are inflated; re-run with the node down")


def _node_running() -> bool:
    """A node of scripts/cluster.sh shares the CPU: on 2 cores it moved the runtime hot path from
    1.3 to 2.5 ms p50. Only the cluster suite needs it."""
    return subprocess.run(["pgrep", "-x", "kubelet"], capture_output=True).returncode == 0


def _markdown(report: dict[str, Any]) -> str:
    lines = [f"# ElasticServing benchmarks ({report['started']})", "",
             f"Machine: {report['machine']}", ""]
    for name, res in report["suites"].items():
        lines += [f"## {name}", "", res.get("description", ""), f"measured {res.get('measured', report['started'])}", ""]
        if res.get("note"):
            lines += [f"**{res['note']}**", ""]
        if "error" in res:
            lines += ["```", res["error"].strip(), "```", ""]
            continue
        lines += ["| metric | value |", "| --- | --- |"]
        results = {k: v for k, v in res.get("results", {}).items() if k != CHARTS_KEY}
        lines += [f"| {k} | {fmt(v)} |" for k, v in _flatten(results)]
        lines += [f"![{p.stem}]({p.name})" for p in map(Path, res.get("chart_files", []))]
        if "chart_error" in res:
            lines += ["", "charts not drawn:", "```", res["chart_error"].strip().splitlines()[-1], "```"]
        lines += ["", f"took {res['seconds']:.1f}s", ""]
    return "\n".join(lines)


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(d, dict) and not is_summary(d):
        out = []
        for k, v in d.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(d, list):
        return [(prefix, json.dumps(d)[:200])]
    return [(prefix, d)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer trials and shorter loads")
    p.add_argument("--only", nargs="*", choices=[s[0] for s in SUITES],
                   help="run only these suites (the others' results in an existing report are kept)")
    p.add_argument("--out", default=str(RESULTS), help="directory for report.json and report.md")
    args = p.parse_args(argv)
    selected = [s for s in SUITES if not args.only or s[0] in args.only]
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()} {platform.processor() or ''} python {platform.python_version()}",
        "quick": args.quick,
        "suites": {},
    }
    out = Path(args.out)
    if args.only and (out / "report.json").exists():
        # Re-running some suites: the others' results stay in the report, each with its own date.
        previous = json.loads((out / "report.json").read_text())
        report["suites"] = {k: v for k, v in previous.get("suites", {}).items() if k not in args.only}
    failed = 0
    for i, (name, module, desc) in enumerate(selected, 1):
        print(f"[{i}/{len(selected)}] {name}: {desc} ...", flush=True)
        t0 = time.monotonic()
        entry: dict[str, Any] = {"description": desc, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
        if not name.startswith("cluster") and _node_running():
            entry["note"] = NODE_NOTE
            print(f"warning: {NODE_NOTE}", file=sys.stderr, flush=True)
        try:
            mod = importlib.import_module(module)
            entry["results"] = mod.run(quick=args.quick)
        except Exception:
            failed += 1
            entry["error"] = traceback.format_exc()
            print(entry["error"], file=sys.stderr)
        if "results" in entry:
            try:  # a chart that cannot be drawn must not cost the suite's figures
                entry["chart_files"] = [str(p) for p in render_all(entry["results"], Path(args.out))]
            except Exception:
                failed += 1
                entry["chart_error"] = traceback.format_exc()
                print(entry["chart_error"], file=sys.stderr)
        entry["seconds"] = time.monotonic() - t0
        report["suites"][name] = entry
        print(f"[{i}/{len(selected)}] {name}: done in {entry['seconds']:.1f}s", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(_markdown(report))
    print(f"report: {out / 'report.md'}")
    return 1 if failed else 0
