"""Any Paddle/ONNX/TensorFlow model as a handler: the backend's own input and output tensors, passed
through unchanged (no pre/post-processing), with the backend's declared dtypes and shapes as metadata.

Dynamic batching (runtime.batching) when every input's first dimension is dynamic: concurrent requests that
agree on dtypes and on every other dimension are stacked along dim 0 into one backend call, and the outputs
split back by rows. A merged call that fails runs each of its requests alone, so only a bad request gets the
model's error; a model whose outputs turn out not to have one row per input row stops being batched.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from pathlib import Path

import numpy as np

from runtime.backends import load_backend
from runtime.batching import (
    Batcher,
    NotRowAligned,
    merge_rows,
    row_batching_refusal,
    rows_key,
    rows_of,
    split_rows,
)
from runtime.errors import BadInput
from runtime.handlers.base import Handler, OnBatch, WebApi

log = logging.getLogger("elasticserving.runtime")
Tensors = dict[str, np.ndarray]
# A merged batch runs on the event loop's thread while the last one took less CPU time (runtime.batching's
# docstring). Only for a model that runs on the calling thread (Paddle or ONNX Runtime on one CPU thread),
# whose CPU time there is its whole cost; TensorFlow runs ops on its own pools, a GPU on the device.
INLINE_BATCH_UNDER = 0.001


class RawTensors(Handler):
    def __init__(self, model: Path, backend: str = "auto", threads: int = 1,
                 gpu_ids: list[int] | None = None, mkldnn: bool = False, max_batch_size: int = 32,
                 batch_timeout: float = 0.0, on_batch: OnBatch | None = None) -> None:
        super().__init__()
        self.mkldnn = mkldnn
        self.model_path = model
        self.backend_choice = backend
        self.threads = threads
        self.gpu_ids = gpu_ids
        self.backend = None
        self.inputs, self.outputs = [], []
        self.web = WebApi(feed=())
        # Every backend call reports its rows here, merged or alone: the batch-size histogram shows what
        # the model actually ran (the batcher's own count would miss the re-runs after a failed merge).
        self.on_batch = on_batch or (lambda n: None)
        # Set by load(): do this model's requests go through the batcher (fixed from then on), and may they
        # share a backend call (until an answer shows they cannot). Once batched, every call of the model
        # goes through the batcher, which runs one at a time: on the loop's thread or the inference thread,
        # never both at once.
        self.batched = False
        self.merging = False
        self.batcher = Batcher(self.run_group, self.executor, max_batch_size, batch_timeout,
                               key=self._key, size=rows_of)

    def load(self) -> None:
        self.platform, self.backend = load_backend(self.model_path, self.backend_choice, self.threads, self.gpu_ids,
                                                   self.mkldnn)
        # The backend's own list of outputs: metadata follows when a first answer settles it (PaddleBackend)
        self.inputs, self.outputs = list(self.backend.inputs), self.backend.outputs
        self.web = WebApi(feed=tuple(s.name for s in self.inputs),
                          fetch={s.name: (s.name,) for s in self.outputs})
        refusal = row_batching_refusal(self.inputs, self.outputs)
        self.batched = self.merging = refusal is None and self.batcher.max_batch_size > 1
        on_calling_thread = self.platform in ("paddle", "onnx") and self.threads <= 1 and not self.gpu_ids
        self.batcher.inline_under = INLINE_BATCH_UNDER if on_calling_thread else 0.0
        if refusal is not None:
            log.info("model %s: requests run one at a time: %s", self.model_path, refusal)

    def _key(self, request: Tensors) -> Hashable | None:
        return rows_key(request) if self.merging else None

    async def infer(self, inputs: Tensors) -> Tensors:
        assert self.backend is not None
        if self.batched:
            (outcome,) = await self.batcher.submit([inputs])
        else:
            # Straight to the inference thread, which then runs the requests queued there back to back:
            # the batcher would hand them over one at a time, each waiting for the loop to see the last
            # one done (measured: ~30 % fewer requests/s at 32 clients with --max-batch-size 1).
            outcome = await self.executor.call(self._run_alone, inputs)
        if isinstance(outcome, Exception):  # shape/dtype errors surface from the backend
            raise BadInput(f"the model rejected the input: {str(outcome).strip()[:300]}")
        return outcome

    def run_group(self, requests: list[Tensors]) -> list[Tensors | Exception]:
        """Blocking, on the inference thread: requests of one `rows_key` in one backend call; per request
        its outputs, or the exception the backend raised for it alone."""
        if len(requests) == 1 or not self.merging:
            return [self._run_alone(r) for r in requests]
        rows = [rows_of(r) for r in requests]
        self.on_batch(sum(rows))
        try:
            outputs = self.backend.run(merge_rows(requests))
        except Exception:  # which request the model refused cannot be told: each runs alone, gets its own answer
            return [self._run_alone(r) for r in requests]
        try:
            return split_rows(outputs, rows)
        except NotRowAligned as exc:
            # Its rows cannot be told apart in a merged answer: the model is served one request at a time
            # from now on, still through the batcher (groups already queued are re-run alone, above).
            if self.merging:  # once: groups queued before the stop may fail the same way
                self.merging = False
                log.warning("model %s: requests are no longer batched: %s", self.model_path, exc)
            return [self._run_alone(r) for r in requests]

    def _run_alone(self, request: Tensors) -> Tensors | Exception:
        self.on_batch(rows_of(request))
        try:
            return self.backend.run(request)
        except Exception as exc:
            return exc
