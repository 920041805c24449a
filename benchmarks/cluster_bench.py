"""On the real single-node Kubernetes (scripts/cluster.sh up): time from `kubectl apply` of a
PaddleService to Ready, the first request from zero through a real Pod start (plain) against a warm
standby Pod (annotation elasticserving.paddlepaddle.org/standby: "1"), the memory of the
control-plane Pods (controller, activator) from their cgroups, and, on two nodes (`up --nodes 2`),
what a replica on the other node adds to a warm request (node 1's activator to a replica on node 1
against one on node 2, interleaved), and the p99 each release step adds under a steady load over HTTP
and gRPC (tests/cluster/release_load.py: version change, canary 0/50/100 %, promotion, rollback, a
gradual rollout with the leader deleted mid-ramp).

Needs a running node (it does not start one): skipped with a clear line otherwise.
    python -m benchmarks.cluster_bench [--quick]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

from tests.cluster.node import SYSTEM_NS, Node, fresh_service, host_of, lac_service, running_node
from tests.cluster.release_load import report, run_releases, stale
from tests.helpers import wait_for

NS = "es-bench"
STANDBY = "elasticserving.paddlepaddle.org/standby"


def summary(values: list[float]) -> dict[str, Any]:
    return {"trials": len(values), "p50_s": round(median(values), 3), "min_s": round(min(values), 3),
            "max_s": round(max(values), 3)}


def ready_pods(node: Node, name: str, ns: str = NS) -> int:
    return sum(1 for p in node.pods(ns, name) if not p["metadata"].get("deletionTimestamp")
               and any(c.get("type") == "Ready" and c.get("status") == "True"
                       for c in p["status"].get("conditions") or []))


def psvc_ready(node: Node, name: str, replicas: int, ns: str = NS) -> bool:
    st = (node.get_or_none("paddleservice", "-n", ns, name) or {}).get("status") or {}
    ready = [c for c in st.get("conditions") or [] if c.get("type") == "Ready"]
    return bool(ready) and ready[0].get("status") == "True" and st.get("replicas") == replicas


def apply_to_ready(node: Node, n: int) -> dict[str, Any]:
    """`kubectl apply` to Ready: minScale 0 (no Pod) and minScale 1 (one ready Pod)."""
    out = {}
    for min_scale in (0, 1):
        name = f"ready-{min_scale}"
        times = []
        for _ in range(n):
            manifest = lac_service(NS, name, min_scale=min_scale)
            node.kubectl("delete", "paddleservice", "-n", NS, name, "--ignore-not-found", "--wait=true",
                         timeout=180)
            wait_for(lambda name=name: not node.pods(NS, name), 120, 0.2, "old Pods gone")
            t0 = time.monotonic()
            node.apply(manifest)
            wait_for(lambda name=name, m=min_scale: psvc_ready(node, name, m)
                     and ready_pods(node, name) == m, 300, 0.1, f"{name} Ready")
            times.append(time.monotonic() - t0)
        node.kubectl("delete", "paddleservice", "-n", NS, name, "--wait=true", timeout=180)
        out[f"min_scale_{min_scale}"] = summary(times)
    return out


def first_request(node: Node, name: str) -> float:
    """Seconds of the first request answered (an activator without the route yet answers 404 at once
    and is asked again: the measured request is the first one routed)."""
    while (a := node.lac(host_of(NS, name), timeout=300)).status == 404:
        time.sleep(0.05)
    assert a.status == 200, a.body[:300]
    return a.seconds


def cold_starts(node: Node, n: int, standby: bool) -> dict[str, Any]:
    name = "cold-standby" if standby else "cold-plain"
    manifest = lac_service(NS, name, annotations={STANDBY: "1"} if standby else None)
    times = []
    for _ in range(n):
        # back to zero at once: delete and re-apply (a standby Pod starts again and gets ready)
        fresh_service(node, NS, name, manifest)
        wait_for(lambda: psvc_ready(node, name, 0), 120, 0.1, f"{name} at zero")
        wait_for(lambda: ready_pods(node, name) == (1 if standby else 0)
                 and len(node.pods(NS, name)) == (1 if standby else 0), 300, 0.1,
                 "the standby Pod ready" if standby else "no Pod")
        times.append(first_request(node, name))
    node.kubectl("delete", "paddleservice", "-n", NS, name, "--wait=true", timeout=180)
    return summary(times)


def pod_memory(node: Node) -> dict[str, Any]:
    """RSS (cgroup total_rss) of each control-plane Pod, MiB."""
    out: dict[str, Any] = {}
    for component in ("autoscaler", "activator"):
        pods = node.get("pods", "-n", SYSTEM_NS, "-l", f"app.kubernetes.io/component={component}")["items"]
        for p in pods:
            uid = p["metadata"]["uid"]
            # node 1's Pods under kubepods, node k's under elasticserving-node-k/kubepods
            stats = list(Path("/sys/fs/cgroup/memory").glob(f"**/kubepods*/**/pod{uid}/memory.stat"))
            if not stats:
                continue
            rss = dict(line.split() for line in stats[0].read_text().splitlines()).get("total_rss")
            if rss is not None:
                out[p["metadata"]["name"]] = round(int(rss) / 2**20, 1)
    return out


def on_node(node: Node, name: str, where: str, others: list[str]) -> None:
    """A one-replica LAC service whose Pod runs on `where` (the other nodes cordoned while it starts)."""
    for other in others:
        node.kubectl("cordon", other)
    try:
        fresh_service(node, NS, name, lac_service(NS, name, min_scale=1))
        wait_for(lambda: ready_pods(node, name) == 1
                 and [p["spec"].get("nodeName") for p in node.pods(NS, name)] == [where],
                 300, 0.2, f"{name} ready on {where}")
    finally:
        for other in others:
            node.kubectl("uncordon", other, check=False)


def cross_node(node: Node, n: int) -> dict[str, Any]:
    """p50 of warm requests from node 1's activator to a replica on node 1 and on node 2 (interleaved,
    `n` trials of 100 each) and the difference: the cost of the extra hop (veth, host routing)."""
    nodes = [x["metadata"]["name"] for x in node.get("nodes")["items"]]
    if len(nodes) < 2:
        return {"skipped": "one node (scripts/cluster.sh up --nodes 2)"}
    first, second = nodes[0], nodes[1]
    on_node(node, "near", first, [x for x in nodes if x != first])
    on_node(node, "far", second, [x for x in nodes if x != second])
    base = node.activator_kept_on(first)
    for name in ("near", "far"):
        wait_for(lambda name=name: node.lac(host_of(NS, name), base=base).status == 200, 60, 0.2, f"{name} routed")
    near, far, diff = [], [], []
    for _ in range(n):
        t: dict[str, list[float]] = {"near": [], "far": []}
        for _ in range(100):
            for name in ("near", "far"):
                a = node.lac(host_of(NS, name), base=base)
                assert a.status == 200, a.body[:300]
                t[name].append(a.seconds)
        near.append(median(t["near"]) * 1000)
        far.append(median(t["far"]) * 1000)
        diff.append(far[-1] - near[-1])
    for name in ("near", "far"):
        node.kubectl("delete", "paddleservice", "-n", NS, name, "--wait=true", timeout=180)

    def ms(values: list[float]) -> dict[str, Any]:
        return {"trials": len(values), "p50_ms": round(median(values), 2), "min_ms": round(min(values), 2),
                "max_ms": round(max(values), 2)}
    return {"same_node": ms(near), "other_node": ms(far), "added_by_the_other_node": ms(diff)}


def run(quick: bool = False) -> dict[str, Any]:
    node = running_node()
    if node is None:
        return {"skipped": "no running node: run `scripts/cluster.sh up` first (as root)"}
    n = 3 if quick else 5
    node.apply(f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NS}\n")
    res: dict[str, Any] = {"apply_to_ready": apply_to_ready(node, n)}
    res["cold_start_plain"] = cold_starts(node, n, standby=False)
    res["cold_start_standby"] = cold_starts(node, n, standby=True)
    res["standby_speedup_p50"] = round(res["cold_start_plain"]["p50_s"] / res["cold_start_standby"]["p50_s"], 1)
    res["control_plane_pod_rss_mib"] = pod_memory(node)
    res["cross_node_warm_request"] = cross_node(node, n)
    res["releases_under_load"] = releases_under_load(node, 3)  # figures are medians of 3, quick or not
    return res


def releases_under_load(node: Node, trials: int) -> dict[str, Any]:
    """tests/cluster/release_load.py's exercise `trials` times: failures, stale answers, and the p99 each
    transition adds over the steady p99 of the same trial (median and min-max over the trials)."""
    runs = []
    for i in range(trials):
        traffic, steps, steady = run_releases(node, f"{NS}-rel", f"rel{i}", rollout="20s")
        results = traffic.snapshot()
        runs.append(dict(report(results, steps, steady), stale=len(stale(results, steps))))
        node.kubectl("delete", "paddleservice", "-n", f"{NS}-rel", f"rel{i}", "--wait=true", timeout=180)
    out: dict[str, Any] = {"trials": trials, "requests": sum(r["requests"] for r in runs),
                           "failed": sum(r["failed"] for r in runs), "stale": sum(r["stale"] for r in runs),
                           "steady_p99_ms": summary_ms([r["steady_p99_ms"] for r in runs]), "added_p99_ms": {}}
    for step in runs[0]["steps"]:
        out["added_p99_ms"][step] = summary_ms([r["steps"][step]["added_p99_ms"] for r in runs])
    return out


def summary_ms(values: list[float]) -> dict[str, Any]:
    return {"median": round(median(values), 1), "min": round(min(values), 1), "max": round(max(values), 1)}


if __name__ == "__main__":
    result = run(quick="--quick" in sys.argv)
    if "skipped" in result:
        print(f"cluster benchmark skipped: {result['skipped']}")
    else:
        print(json.dumps(result, indent=2))
