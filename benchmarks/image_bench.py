"""Image classification speed of the pretrained EfficientNet-Lite0 (examples/image.yaml's model), direct
and through the runtime, side by side in one run.

Direct (in this process, no server): `paddle.inference` vs ONNX Runtime on the same preprocessed real
photos, images/s and p50 per call at batch 1 and 16, one intra-op thread (the runtime's default), for
`paddle_onednn_off` (the config the runtime keeps for LAC), `paddle_onednn` (the runtime's config for
image models, `--mkldnn auto`) and `onnx`.

Through the runtime (`python -m runtime --model efficientnet-lite0`, Paddle backend, oneDNN on): the
Paddle Serving web API with one base64 JPEG (scikit-image's chelsea) per request, load from wrk (a Lua
body) or benchmarks.load: images/s and p50 at 1 client against the same JPEG decoded, preprocessed and
classified directly (`direct_jpeg`); images/s at 16 clients with dynamic batching off (max batch 1) and
on (max batch 16, 2 ms window). Every figure is the median of >= 3 runs with min-max (benchmarks.stats).
The model is built first if needed (cached: `python -m runtime.models build`).

Measured (2 shared cores, medians of 3): batching's gain at 16 clients is 1.22-1.29x, not 2x, and the
model says why: on one intra-op thread a batch of 16 costs more per image than batch 1 (paddle oneDNN
123-145 images/s at batch 1 vs 104-115 at batch 16; ONNX Runtime 183-209 vs 147-162), so merging
requests only amortizes the per-request work around the model (HTTP, JSON, hops), it cannot multiply
the model's own rate as it does for LAC.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import wrk
from benchmarks.load import closed_loop as aiohttp_closed_loop
from benchmarks.load import percentile
from benchmarks.stats import ratio, repeat
from tests.helpers import start_runtime

MODEL = "efficientnet-lite0"
PHOTOS = ("chelsea", "rocket", "astronaut", "coffee")
BATCHES = (1, 16)
TRIALS = 3
THREADS = 1
CLIENTS = 16


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


def chelsea_jpeg() -> bytes:
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _trial(backend, x: np.ndarray, seconds: float) -> dict:
    lat = []
    end = time.monotonic() + seconds
    while time.monotonic() < end or len(lat) < 3:
        t0 = time.perf_counter()
        backend.run({"image": x})
        lat.append(time.perf_counter() - t0)
    return {"images_per_s": len(lat) * len(x) / sum(lat), "p50_ms": percentile(lat, 50) * 1000}


def direct(seconds: float, runs: int) -> dict[str, Any]:
    from runtime.backends import load_backend

    photos, path = _photos()
    backends = {"paddle_onednn_off": load_backend(path / "paddle", "paddle", THREADS, None, mkldnn=False)[1],
                "paddle_onednn": load_backend(path / "paddle", "paddle", THREADS, None, mkldnn=True)[1],
                "onnx": load_backend(path / "onnx", "onnx", THREADS, None)[1]}
    results: dict[str, Any] = {"model": MODEL, "threads": THREADS, "runs": runs, "seconds_per_run": seconds}
    probs = {kind: next(iter(b.run({"image": photos}).values())) for kind, b in backends.items()}
    for kind in ("paddle_onednn_off", "paddle_onednn"):
        results[f"max_abs_diff_softmax_{kind}_vs_onnx"] = float(np.abs(probs[kind] - probs["onnx"]).max())
    for n in BATCHES:
        x = _batch(photos, n)
        for backend in backends.values():
            backend.run({"image": x})  # warm-up: first calls allocate and pick kernels

        def one(x=x) -> dict[str, float]:  # backends alternate: a busy spell on the machine hits all
            out = {}
            for kind, backend in backends.items():
                for metric, value in _trial(backend, x, seconds).items():
                    out[f"{kind}_{metric}"] = value
            return out

        figures = repeat(one, runs)
        for kind in backends:
            results.setdefault(kind, {})[f"batch{n}"] = {m: figures[f"{kind}_{m}"] for m in ("images_per_s", "p50_ms")}
        for kind in ("paddle_onednn_off", "paddle_onednn"):
            results[f"p50_{kind}_over_onnx_batch{n}"] = ratio(figures[f"{kind}_p50_ms"], figures["onnx_p50_ms"])
    return results


class DirectJpeg:
    """One JPEG as the runtime handles it, without the server: decode and preprocess
    (runtime.handlers.image_input), then the runtime's Paddle config (oneDNN on), on this thread."""

    def __init__(self, jpeg: bytes) -> None:
        from runtime.backends import load_backend
        from runtime.models import model_dir
        from runtime.models.preprocess import Preprocess

        path = model_dir(MODEL)
        self.jpeg = jpeg
        self.prep = Preprocess.load(path / "preprocess.json")
        self.backend = load_backend(path / "paddle", "paddle", THREADS, None, mkldnn=True)[1]

    def classify(self) -> np.ndarray:
        from runtime.handlers.image_input import decode_image

        x = decode_image(self.jpeg, self.prep, 40_000_000)[None]
        return next(iter(self.backend.run({"image": x}).values()))

    def measure(self, seconds: float) -> dict[str, float]:
        lat = []
        end = time.monotonic() + seconds
        while time.monotonic() < end or len(lat) < 3:
            t0 = time.perf_counter()
            self.classify()
            lat.append(time.perf_counter() - t0)
        return {"p50_ms": percentile(lat, 50) * 1000, "images_per_s": len(lat) / sum(lat)}


def closed_loop(url: str, body: bytes, connections: int, seconds: float) -> dict[str, Any]:
    if wrk.available():
        return wrk.closed_loop(url, body, connections, seconds)
    return asyncio.run(aiohttp_closed_loop(url, body, connections, seconds))


def through_runtime(seconds: float, runs: int) -> dict[str, Any]:
    jpeg = chelsea_jpeg()
    body = json.dumps({"feed": [{"image": base64.b64encode(jpeg).decode()}], "fetch": ["score"]}).encode()
    floor = DirectJpeg(jpeg)
    floor.classify()
    res: dict[str, Any] = {"jpeg_bytes": len(jpeg)}
    modes = (("off", ("--max-batch-size", "1")), ("on", ("--max-batch-size", "16", "--batch-timeout-ms", "2")))
    for mode, extra in modes:
        p, port, _ = start_runtime("--model", MODEL, *extra, timeout=240)
        url = f"http://127.0.0.1:{port}/{MODEL}/prediction"
        try:
            check = closed_loop(url, body, 1, 1.0)  # warm-up, and the answers must be 200s
            assert check["requests"] > 0 and check["errors"] == 0, check
            if mode == "off":  # batch 1, one request at a time: the runtime against the direct call

                def one(url: str = url) -> dict[str, float]:
                    d = floor.measure(seconds)
                    r = closed_loop(url, body, 1, seconds)
                    return {"direct_p50_ms": d["p50_ms"], "runtime_p50_ms": r["p50_ms"],
                            "added_p50_ms": r["p50_ms"] - d["p50_ms"], "direct_images_per_s": d["images_per_s"],
                            "runtime_images_per_s": r["rps"]}

                res["batch1_1_client"] = repeat(one, runs)
            res[f"clients_{CLIENTS}_batching_{mode}"] = repeat(
                lambda url=url: _rps(closed_loop(url, body, CLIENTS, seconds)), runs)
        finally:
            p.terminate()
            p.wait(30)
    res["batching_gain"] = ratio(res[f"clients_{CLIENTS}_batching_on"]["images_per_s"],
                                 res[f"clients_{CLIENTS}_batching_off"]["images_per_s"])
    res["goal"] = f"dynamic batching >= 2x images/s over batching off at {CLIENTS} clients"
    res["goal_met"] = res["batching_gain"]["median"] >= 2.0
    return res


def _rps(r: dict[str, Any]) -> dict[str, float]:
    if r["errors"]:
        raise RuntimeError(f"{r['errors']} failed requests under load")
    return {"images_per_s": r["rps"], "p50_ms": r["p50_ms"]}


def _bar(summary: dict[str, Any]) -> list[float]:
    return [summary["median"], summary["min"], summary["max"]]


def charts(d: dict[str, Any], rt: dict[str, Any]) -> list[dict[str, Any]]:
    kinds = ("paddle_onednn_off", "paddle_onednn", "onnx")
    one = rt["batch1_1_client"]
    return [
        {"name": "image-direct-p50", "title": "EfficientNet-Lite0 direct: p50 per call (median, min-max)",
         "kind": "bar", "xlabel": "batch size", "ylabel": "ms per call",
         "series": {k: [[f"batch {n}", *_bar(d[k][f"batch{n}"]["p50_ms"])] for n in BATCHES] for k in kinds}},
        {"name": "image-runtime-throughput", "title": "EfficientNet-Lite0 through the runtime: images/s",
         "kind": "bar", "xlabel": "load", "ylabel": "images/s",
         "series": {"runtime (paddle, oneDNN)": [
             ["1 client", *_bar(one["runtime_images_per_s"])],
             [f"{CLIENTS} clients, batching off", *_bar(rt[f"clients_{CLIENTS}_batching_off"]["images_per_s"])],
             [f"{CLIENTS} clients, batching on", *_bar(rt[f"clients_{CLIENTS}_batching_on"]["images_per_s"])]]}},
        {"name": "image-runtime-vs-direct-p50", "title": "One JPEG at batch 1: runtime vs direct (p50)",
         "kind": "bar", "xlabel": "", "ylabel": "ms",
         "series": {"p50": [["direct (decode + preprocess + paddle)", *_bar(one["direct_p50_ms"])],
                            ["through the runtime (HTTP, base64)", *_bar(one["runtime_p50_ms"])]]}},
    ]


def run(quick: bool = False) -> dict[str, Any]:
    seconds = 2.0 if quick else 5.0
    d = direct(seconds, TRIALS)
    rt = through_runtime(seconds, TRIALS)
    return {"direct": d, "runtime": rt, "charts": charts(d, rt)}


def summary_line(res: dict[str, Any]) -> str:
    rt, one = res["runtime"], res["runtime"]["batch1_1_client"]
    return (f"batch 1: direct {one['direct_p50_ms']['median']:.1f} ms, runtime {one['runtime_p50_ms']['median']:.1f} ms "
            f"p50; {CLIENTS} clients: {rt[f'clients_{CLIENTS}_batching_off']['images_per_s']['median']:.0f} -> "
            f"{rt[f'clients_{CLIENTS}_batching_on']['images_per_s']['median']:.0f} images/s with batching "
            f"({rt['batching_gain']['median']:.2f}x)")


if __name__ == "__main__":
    r = run(quick="--quick" in sys.argv)
    print(json.dumps(r, indent=2, default=str))
    print(summary_line(r))
