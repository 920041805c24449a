"""Any Paddle/ONNX/TensorFlow model as a handler: the backend's own input and output tensors, passed
through unchanged (no pre/post-processing, no cross-request batching: shapes differ per request)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from runtime.backends import load_backend
from runtime.errors import BadInput
from runtime.handlers.base import Handler, WebApi


class RawTensors(Handler):
    def __init__(self, model: Path, backend: str = "auto", threads: int = 1,
                 gpu_ids: list[int] | None = None, mkldnn: bool = False) -> None:
        super().__init__()
        self.mkldnn = mkldnn
        self.model_path = model
        self.backend_choice = backend
        self.threads = threads
        self.gpu_ids = gpu_ids
        self.backend = None
        self.inputs, self.outputs = [], []
        self.web = WebApi(feed=())

    def load(self) -> None:
        self.platform, self.backend = load_backend(self.model_path, self.backend_choice, self.threads, self.gpu_ids,
                                                   self.mkldnn)
        self.inputs, self.outputs = list(self.backend.inputs), list(self.backend.outputs)
        self.web = WebApi(feed=tuple(s.name for s in self.inputs),
                          fetch={s.name: (s.name,) for s in self.outputs})

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.backend is not None
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, self.backend.run, inputs)
        except Exception as exc:  # shape/dtype errors surface from the backend
            raise BadInput(f"the model rejected the input: {str(exc).strip()[:300]}") from None
