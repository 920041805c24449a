"""Cold start from zero of a ~100 MB model given by storageUri, on the local platform: the first start
(downloaded from an HTTP origin on loopback), a start whose version is already in the cache, and the
same model "baked in" (a local path, as a file in an image is), side by side in one stack; a trial is
one delete + apply + first request. Goal: a cached start within 1.2x of the baked one."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.stats import summarize
from runtime.storage.cache import remove_tree
from tests.helpers import start_stack, write_yaml
from tests.storage.http_origin import Blob, Origin

SIDE = 5000  # one FP32 [5000, 5000] weight: 100 MB


def build_model(path: Path) -> Path:
    """An ONNX model `y = x @ W` with one 100 MB initializer (fixed seed)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(3).standard_normal((SIDE, SIDE), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, SIDE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, SIDE])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path / "model.onnx"))
    return path / "model.onnx"


def manifest(name: str, uri: str) -> dict:
    return {"apiVersion": "elasticserving.paddlepaddle.org/v1", "kind": "PaddleService",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"default": {"containerImage": "elasticserving/runtime", "tag": "latest", "port": 9292,
                                 "storageUri": uri},
                     "service": {"minScale": 0}}}


def first_answer(stack, name: str) -> float:
    body = {"inputs": [{"name": "x", "shape": [1, SIDE], "datatype": "FP32", "data": [0.001] * SIDE}]}
    t0 = time.perf_counter()
    status, _, data = stack.request(f"{name}.bench.example.com", f"/v2/models/{name}/infer", body, timeout=120)
    took = time.perf_counter() - t0
    assert status == 200, data[:300]
    return took


def run(quick: bool = False) -> dict:
    n = 3 if quick else 5
    times: dict[str, list[float]] = {"download": [], "cached": [], "baked": []}
    with tempfile.TemporaryDirectory() as tmp_s, Origin() as origin:
        tmp = Path(tmp_s)
        file = build_model(tmp / "baked")
        origin.blobs["/big.onnx"] = Blob(file.read_bytes(), etag='"big-v1"')
        cache = tmp / "cache"
        docs = {"download": manifest("download", origin.url("/big.onnx")),
                "cached": manifest("cached", origin.url("/big.onnx")),
                "baked": manifest("baked", f"file://{file.parent}")}
        files = {mode: write_yaml(tmp / f"{mode}.yaml", doc) for mode, doc in docs.items()}
        stack = start_stack(tmp, list(files.values()), extra=["--model-cache", str(cache)])
        try:
            first_answer(stack, "cached")  # the cache holds the version from here on
            for _ in range(n):
                for mode in ("download", "cached", "baked"):
                    # back to zero with a new side (the platform keeps a side's pulled version)
                    assert stack.cli("delete", mode).returncode == 0
                    if mode == "download":
                        remove_tree(cache)
                    assert stack.cli("apply", "-f", str(files[mode])).returncode == 0
                    times[mode].append(first_answer(stack, mode))
        finally:
            stack.stop()
    res: dict = {mode: {"seconds": summarize(t)} for mode, t in times.items()}
    res["model_mb"] = SIDE * SIDE * 4 / 1e6
    res["cached_vs_baked"] = res["cached"]["seconds"]["median"] / res["baked"]["seconds"]["median"]
    res["goal"] = "a cached storageUri start within 1.2x of the baked-in model's"
    res["goal_met"] = res["cached_vs_baked"] <= 1.2
    res["charts"] = [{
        "name": "storage-coldstart", "title": f"Cold start of a 100 MB model from zero ({n} trials each)",
        "kind": "bar", "xlabel": "", "ylabel": "seconds to the first answer (median, min-max)",
        "series": {mode: [[mode, res[mode]["seconds"]["median"], res[mode]["seconds"]["min"],
                           res[mode]["seconds"]["max"]]] for mode in times}}]
    return res


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
