"""The LAC call with no server around it, for the hot-path figures: benchmarks.runtime_bench measures the
runtime against it, and benchmarks.floor_server (`--lac`) runs it behind a bare protocol (the machine's
floor)."""

from __future__ import annotations

import time

from benchmarks.load import percentile
from runtime.lac import predict_tags

SENTENCE = "百度是一家高科技公司"


class DirectLac:
    """LAC through paddle.inference with nothing around it: encode, run, decode, on this thread."""

    def __init__(self) -> None:
        import paddle.inference as pi

        from runtime.lac import LacSegmenter, lac_dir

        model_dir = lac_dir() / "seg_model" / "model"
        self.seg = LacSegmenter(model_dir)
        cfg = pi.Config(str(model_dir))
        cfg.disable_gpu()
        cfg.set_cpu_math_library_num_threads(1)
        cfg.disable_mkldnn()  # as the runtime does for LAC (runtime/backends.py)
        cfg.disable_glog_info()
        self.predictor = pi.create_predictor(cfg)

    def segment(self, sentence: str = SENTENCE) -> str:
        ids, lod = self.seg.encode([sentence])
        return self.seg.join(self.seg.decode(sentence, predict_tags(self.predictor, ids, lod)))

    def measure(self, seconds: float) -> dict[str, float]:
        """Back to back."""
        lat = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            self.segment(SENTENCE)
            lat.append(time.perf_counter() - t0)
        return {"p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000,
                "rps": len(lat) / seconds}
