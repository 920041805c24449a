"""The loaded model of a replica: a Paddle predictor plus its handler, with dynamic batching.

Protocol handlers call `LacModel.segment(sentences)`; batches run in a worker thread so the event
loop (health checks, other requests) never waits on inference.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from pathlib import Path

from runtime.batching import Batcher
from runtime.lac import LacSegmenter, lac_dir


class ModelLoadError(RuntimeError):
    pass


def resolve_model(model: str) -> Path:
    """`lac` names the LAC segmentation model shipped by the lac package; anything else is a path."""
    if model == "lac":
        return lac_dir() / "seg_model" / "model"
    path = Path(model)
    if not path.exists():
        raise ModelLoadError(f"model path {model} does not exist")
    return path


def create_predictor(model_dir: Path, threads: int, gpu_ids: list[int] | None):
    import paddle.inference as pi  # imported lazily: `import runtime` stays light

    files = {p.name for p in model_dir.iterdir()} if model_dir.is_dir() else set()
    if "__model__" in files or not files:
        cfg = pi.Config(str(model_dir))
    else:
        prog = next((model_dir / n for n in ("inference.json", "inference.pdmodel", "model.pdmodel",
                                              "model.json") if n in files), None)
        params = next((model_dir / n for n in ("inference.pdiparams", "model.pdiparams") if n in files), None)
        if prog is None or params is None:
            raise ModelLoadError(f"no Paddle model found in {model_dir} (expected __model__ or "
                                 "*.pdmodel/*.json with *.pdiparams)")
        cfg = pi.Config(str(prog), str(params))
    if gpu_ids:
        cfg.enable_use_gpu(256, gpu_ids[0])
    else:
        cfg.disable_gpu()
        cfg.set_cpu_math_library_num_threads(max(1, threads))
        # oneDNN's fused GRU caches blobs per input shape and crashes once LAC batches vary in size.
        cfg.disable_mkldnn()
    cfg.disable_glog_info()
    try:
        return pi.create_predictor(cfg)
    except Exception as exc:  # paddle raises its own error types for corrupt programs
        raise ModelLoadError(f"cannot load Paddle model from {model_dir}: {str(exc).strip()[:500]}") from None


class LacModel:
    """LAC segmentation with dynamic batching of concurrent requests."""

    name_inputs = ("words",)
    name_outputs = ("word_seg",)

    def __init__(self, model: str = "lac", separator: str = "|", threads: int = 1,
                 gpu_ids: list[int] | None = None, max_batch_size: int = 32, batch_timeout_ms: float = 2.0,
                 on_batch=None) -> None:
        self.model = model
        self.separator = separator
        self.threads = threads
        self.gpu_ids = gpu_ids
        self.max_batch_size = max(1, max_batch_size)
        self.batch_timeout = max(0.0, batch_timeout_ms) / 1000.0
        self.on_batch = on_batch or (lambda n: None)
        self.ready = False
        self._predictor = None
        self._seg: LacSegmenter | None = None
        self._lock = threading.Lock()
        # One thread owns the predictor: Paddle predictors must not hop between threads.
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="inference")
        self.batcher = Batcher(self._run_batch, self.executor, self.max_batch_size, self.batch_timeout,
                               self.on_batch)

    def load(self) -> float:
        """Blocking: create the predictor (run in an executor). Returns seconds taken."""
        t0 = time.monotonic()
        os.environ.setdefault("OMP_NUM_THREADS", str(self.threads))
        model_dir = resolve_model(self.model)
        if not (model_dir.parent / "conf" / "word.dic").exists():
            raise ModelLoadError(f"{model_dir}: the lac handler needs ../conf/word.dic, tag.dic and q2b.dic")
        self._seg = LacSegmenter(model_dir, self.separator)
        self._predictor = create_predictor(model_dir, self.threads, self.gpu_ids)
        self._run_batch(["预热"])  # warm-up: the first run allocates
        self.ready = True
        return time.monotonic() - t0

    def _run_batch(self, sentences: list[str]) -> list[str]:
        assert self._seg is not None and self._predictor is not None
        nonempty = [s for s in sentences if s]
        out_by_sentence: dict[int, str] = {}
        if nonempty:
            ids, lod = self._seg.encode(nonempty)
            with self._lock:
                p = self._predictor
                h = p.get_input_handle(p.get_input_names()[0])
                h.reshape(list(ids.shape))
                h.copy_from_cpu(ids)
                h.set_lod([lod])
                p.run()
                tags = p.get_output_handle(p.get_output_names()[0]).copy_to_cpu()
            k = 0
            for i, s in enumerate(sentences):
                if s:
                    out_by_sentence[i] = self._seg.join(self._seg.decode(s, tags[lod[k]:lod[k + 1]]))
                    k += 1
        return [out_by_sentence.get(i, "") for i in range(len(sentences))]

    async def start(self) -> None:
        self.batcher.start()

    async def close(self) -> None:
        self.batcher.close()
        self.executor.shutdown(wait=False)

    async def segment(self, sentences: list[str]) -> list[str]:
        """Segment sentences; concurrent calls are merged up to max_batch_size sentences."""
        return await self.batcher.submit(sentences)
