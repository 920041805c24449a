"""On the real node (scripts/cluster.sh up): the first request from zero to a ~100 MB ONNX model given by
storageUri, through a real Pod start: downloaded by the storage-initializer (the node's cache emptied
before each trial), already in the node's cache, a warm standby Pod, and the model on the node's disk
(`pvc://` on a local PersistentVolume: no pull, as a model baked into the image).
    python -m benchmarks.cluster_storage_bench [--quick]
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.cluster_bench import psvc_ready, ready_pods, summary
from benchmarks.storage_coldstart_bench import SIDE, build_model
from tests.cluster.node import Node, apply_local_volume, fresh_service, host_of, running_node
from tests.helpers import wait_for
from tests.s3_server import run_s3_server

NS = "es-bench-storage"
NODE_IP = "10.244.0.1"
CACHE_ROOT = Path("/var/cache/elasticserving/models")
PV_DIR = Path("/var/lib/elasticserving-bench-pv")
STANDBY = "elasticserving.paddlepaddle.org/standby"


def manifest(name: str, uri: str, secret: str | None = None, standby: bool = False) -> str:
    side: dict[str, Any] = {"containerImage": "elasticserving/runtime", "tag": "latest", "port": 9292,
                            "storageUri": uri}
    if secret:
        side["storageSecret"] = secret
    md: dict[str, Any] = {"name": name, "namespace": NS}
    if standby:
        md["annotations"] = {STANDBY: "1"}
    return json.dumps({"apiVersion": "elasticserving.paddlepaddle.org/v1", "kind": "PaddleService",
                       "metadata": md, "spec": {"default": side, "service": {"minScale": 0}}})


def first_answer(node: Node, name: str) -> float:
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, SIDE], "datatype": "FP32",
                                   "data": [0.001] * SIDE}]}).encode()
    while (a := node.post(host_of(NS, name), f"/v2/models/{name}/infer", body, timeout=300)).status == 404:
        time.sleep(0.05)  # the route has not reached this activator yet: the measured request is the routed one
    assert a.status == 200, a.body[:300]
    return a.seconds


def trial(node: Node, name: str, text: str, standby: bool, empty_cache: bool) -> float:
    # alone on the node: the Pods of the trial before (still up until they scale to zero) would share the CPU
    node.kubectl("delete", "paddleservice", "-n", NS, "--all", "--wait=true", timeout=180)
    wait_for(lambda: not node.get("pods", "-n", NS)["items"], 180, 0.2, "the earlier trial's Pods gone")
    fresh_service(node, NS, name, text)
    wait_for(lambda: psvc_ready(node, name, 0, NS), 120, 0.1, f"{name} at zero")
    want = 1 if standby else 0
    wait_for(lambda: ready_pods(node, name, NS) == want and len(node.pods(NS, name)) == want, 300, 0.1,
             "the standby Pod ready" if standby else "no Pod")
    if empty_cache:
        shutil.rmtree(CACHE_ROOT / NS, ignore_errors=True)
    return first_answer(node, name)


def run(quick: bool = False) -> dict[str, Any]:
    node = running_node()
    if node is None:
        return {"skipped": "no running node: run `scripts/cluster.sh up` first (as root)"}
    n = 3 if quick else 5
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    CACHE_ROOT.chmod(0o1777)
    node.kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=true", timeout=300)
    node.kubectl("create", "namespace", NS)
    times: dict[str, list[float]] = {"download": [], "cached": [], "standby": [], "pvc": []}
    with tempfile.TemporaryDirectory() as tmp, run_s3_server(host=NODE_IP) as s3:
        model = build_model(Path(tmp) / "m")
        bucket = s3.make_bucket("bench")
        s3.put(bucket, "big/model.onnx", model.read_bytes())
        shutil.rmtree(PV_DIR, ignore_errors=True)
        (PV_DIR / "big").mkdir(parents=True)
        shutil.copy(model, PV_DIR / "big" / "model.onnx")
        for p in [PV_DIR, *PV_DIR.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        node.apply(json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3", "namespace": NS},
                               "stringData": s3.env() | {"AWS_ENDPOINT_URL": s3.endpoint}}))
        apply_local_volume(node, "es-bench-pv", str(PV_DIR), NS, "models", "es-bench")
        uri = "s3://bench/big/model.onnx"
        # The cache is per node: with the other nodes cordoned every trial's Pod starts on the first one,
        # so `cached` is a hit and `download` a miss (the cache emptied) on the same node.
        others = [n["metadata"]["name"] for n in node.get("nodes")["items"][1:]]
        for other in others:
            node.kubectl("cordon", other)
        modes = {"download": (manifest("download", uri, "s3"), False, True),
                 "cached": (manifest("cached", uri, "s3"), False, False),
                 "standby": (manifest("standby", uri, "s3", standby=True), True, False),
                 "pvc": (manifest("pvc", "pvc://models/big"), False, False)}
        try:
            for _ in range(n):
                for mode, (text, standby, empty) in modes.items():
                    times[mode].append(trial(node, mode, text, standby, empty))
        finally:
            for other in others:
                node.kubectl("uncordon", other, check=False)
            node.kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=true", timeout=300)
            node.kubectl("delete", "pv", "es-bench-pv", "--ignore-not-found", timeout=120)
            shutil.rmtree(PV_DIR, ignore_errors=True)
            shutil.rmtree(CACHE_ROOT / NS, ignore_errors=True)
    res: dict[str, Any] = {mode: summary(t) for mode, t in times.items()}
    res["model_mb"] = SIDE * SIDE * 4 / 1e6
    res["cached_vs_pvc"] = round(res["cached"]["p50_s"] / res["pvc"]["p50_s"], 2)
    res["goal"] = "a cached storageUri start within 1.2x of the model already on the node's disk (pvc)"
    res["goal_met"] = res["cached_vs_pvc"] <= 1.2
    return res


if __name__ == "__main__":
    result = run(quick="--quick" in sys.argv)
    print(result["skipped"] if "skipped" in result else json.dumps(result, indent=2))
