"""Image classification speed of the pretrained EfficientNet-Lite0 (examples/image.yaml's model) without
the server: `paddle.inference` vs ONNX Runtime, in this process, on the same preprocessed real photos.

Images/s and p50 latency per call at batch 1 and batch 16, one intra-op thread (the runtime's default),
for three backends: `paddle` (the runtime's PaddleBackend, whose config turns oneDNN off for LAC's sake),
`paddle_onednn` (the same export through a paddle.inference predictor with oneDNN on) and `onnx`.
Each figure is the median of TRIALS timed runs, reported with their min and max: the machine is shared,
so one run says little. The model is built first if needed (cached: `python -m runtime.models build`).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.load import percentile

MODEL = "efficientnet-lite0"
PHOTOS = ("chelsea", "rocket", "astronaut", "coffee")
BATCHES = (1, 16)
TRIALS = 3
THREADS = 1


def _photos() -> tuple[np.ndarray, Path]:
    from PIL import Image
    from skimage import data

    from runtime.models.build import build
    from runtime.models.preprocess import Preprocess

    path = build(MODEL, log=lambda _: None)
    pre = Preprocess.load(path / "preprocess.json")
    return np.stack([pre.apply(Image.fromarray(getattr(data, n)())) for n in PHOTOS]), path


def _batch(photos: np.ndarray, n: int) -> np.ndarray:
    return np.ascontiguousarray(np.resize(photos, (n, *photos.shape[1:])))  # the photos repeated to n rows


class OneDnnPaddle:
    """A paddle.inference predictor like runtime.model.create_predictor's, but with oneDNN enabled."""

    def __init__(self, model_dir) -> None:
        import paddle.inference as pi

        cfg = pi.Config(str(model_dir / "inference.json"), str(model_dir / "inference.pdiparams"))
        cfg.disable_gpu()
        cfg.set_cpu_math_library_num_threads(THREADS)
        cfg.enable_mkldnn()
        cfg.disable_glog_info()
        self.predictor = pi.create_predictor(cfg)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        p = self.predictor
        for name, arr in feeds.items():
            h = p.get_input_handle(name)
            h.reshape(list(arr.shape))
            h.copy_from_cpu(arr)
        p.run()
        return {n: p.get_output_handle(n).copy_to_cpu() for n in p.get_output_names()}


def _trial(backend, x: np.ndarray, seconds: float) -> dict:
    lat = []
    end = time.monotonic() + seconds
    while time.monotonic() < end or len(lat) < 3:
        t0 = time.perf_counter()
        backend.run({"image": x})
        lat.append(time.perf_counter() - t0)
    return {"images_per_s": len(lat) * len(x) / sum(lat), "p50_ms": percentile(lat, 50) * 1000}


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run(quick: bool = False) -> dict:
    from runtime.backends import load_backend

    seconds = 1.5 if quick else 5.0
    photos, path = _photos()
    backends = {"paddle": load_backend(path / "paddle", "paddle", THREADS, None)[1],
                "paddle_onednn": OneDnnPaddle(path / "paddle"),
                "onnx": load_backend(path / "onnx", "onnx", THREADS, None)[1]}
    results: dict = {"model": MODEL, "threads": THREADS, "trials": TRIALS, "seconds_per_trial": seconds}
    probs = {kind: next(iter(b.run({"image": photos}).values())) for kind, b in backends.items()}
    for kind in ("paddle", "paddle_onednn"):
        results[f"max_abs_diff_softmax_{kind}_vs_onnx"] = float(np.abs(probs[kind] - probs["onnx"]).max())
    for n in BATCHES:
        x = _batch(photos, n)
        for backend in backends.values():
            backend.run({"image": x})  # warm-up: first calls allocate and pick kernels
        # trials alternate between the backends so that a busy spell on the machine hits both
        runs: dict[str, list[dict]] = {kind: [] for kind in backends}
        for _ in range(TRIALS):
            for kind, backend in backends.items():
                runs[kind].append(_trial(backend, x, seconds))
        for kind, trials in runs.items():
            results.setdefault(kind, {})[f"batch{n}"] = {
                metric: _summary([t[metric] for t in trials]) for metric in ("images_per_s", "p50_ms")}
        for kind in ("paddle", "paddle_onednn"):
            results[f"p50_{kind}_over_onnx_batch{n}"] = (results[kind][f"batch{n}"]["p50_ms"]["median"]
                                                        / results["onnx"][f"batch{n}"]["p50_ms"]["median"])
    return results


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
