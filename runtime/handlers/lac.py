"""LAC word segmentation as a handler: `words` (BYTES, UTF-8 sentences) -> `word_seg` (BYTES, words
joined by the separator). Concurrent requests are merged into one Paddle run (runtime.batching); the
text <-> ids work is runtime.lac."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from runtime.backends import ModelLoadError, create_predictor
from runtime.batching import Batcher
from runtime.errors import BadInput, TooLarge
from runtime.handlers.base import Handler, OnBatch, WebApi
from runtime.lac import LacSegmenter, lac_dir, predict_tags
from runtime.tensors import TensorSpec, object_array


class LacHandler(Handler):
    platform = "paddle"
    inputs = [TensorSpec("words", "BYTES", (-1,))]
    outputs = [TensorSpec("word_seg", "BYTES", (-1,))]
    web = WebApi(feed=("words",), fetch={"word_seg": ("word_seg",)}, rows=True)

    def __init__(self, model: str = "lac", separator: str = "|", threads: int = 1,
                 gpu_ids: list[int] | None = None, max_batch_size: int = 32, batch_timeout: float = 0.0,
                 max_chars: int = 2048, on_batch: OnBatch | None = None) -> None:
        super().__init__()
        self.model = model
        self.separator = separator
        self.threads = threads
        self.gpu_ids = gpu_ids
        self.max_chars = max_chars
        self._predictor = None
        self._seg: LacSegmenter | None = None
        self._lock = threading.Lock()
        # While the replica is `alone`, a lone sentence runs on the loop (runtime.batching's docstring).
        # No oneDNN here, and the lock keeps the predictor to one caller on either thread.
        self.batcher = Batcher(self.run_batch, self.executor, max_batch_size, batch_timeout, on_batch,
                               inline_if=lambda: self.alone())

    def load(self) -> None:
        os.environ.setdefault("OMP_NUM_THREADS", str(self.threads))
        if self.model == "lac":  # the LAC segmentation model shipped by the lac package
            model_dir = lac_dir() / "seg_model" / "model"
        elif not (model_dir := Path(self.model)).exists():
            raise ModelLoadError(f"model path {self.model} does not exist")
        if not (model_dir.parent / "conf" / "word.dic").exists():
            raise ModelLoadError(f"{model_dir}: the lac handler needs ../conf/word.dic, tag.dic and q2b.dic")
        self._seg = LacSegmenter(model_dir, self.separator)
        self._predictor = create_predictor(model_dir, self.threads, self.gpu_ids)
        self.run_batch(["预热"])  # warm-up: the first run allocates

    def run_batch(self, sentences: list[str]) -> list[str]:
        """Blocking, on the inference thread: one Paddle run for every sentence of the batch."""
        assert self._seg is not None and self._predictor is not None
        seg, nonempty = self._seg, [s for s in sentences if s]
        if not nonempty:
            return [""] * len(sentences)
        ids, lod = seg.encode(nonempty)
        with self._lock:
            tags = predict_tags(self._predictor, ids, lod)
        segs = iter([seg.join(seg.decode(s, tags[lod[k]:lod[k + 1]])) for k, s in enumerate(nonempty)])
        return [next(segs) if s else "" for s in sentences]

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sentences = []
        for i, raw in enumerate(inputs["words"]):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise BadInput(f"input `words`[{i}] holds bytes that are not UTF-8 text") from None
            if len(text) > self.max_chars:
                raise TooLarge(f"sentence {i} has {len(text)} characters; the limit is {self.max_chars} "
                               "(--max-text-chars)")
            sentences.append(text)
        segs = await self.batcher.submit(sentences)
        return {"word_seg": object_array([s.encode("utf-8") for s in segs])}
