"""Image classification as a handler (the manual's image protocol): `image` as encoded images (BYTES)
or as preprocessed pixels (FP32 [n,3,crop,crop]) -> `label` (BYTES) and `prob` (FP32), one per image.

Images are fetched/read per runtime.handlers.image_input, decoded on a small decode pool, and images of
concurrent requests are classified together (runtime.batching) on the inference thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path

import numpy as np

from runtime.backends import load_backend
from runtime.batching import Batcher
from runtime.errors import BadInput
from runtime.handlers.base import Handler, OnBatch, WebApi
from runtime.handlers.image_input import ImageSource, decode_image
from runtime.models.preprocess import IMAGENET, Preprocess
from runtime.tensors import TensorSpec, object_array


class ImageClassifier(Handler):
    web = WebApi(feed=("image",), fetch={name: ("label", "prob") for name in ("score", "label", "prob")})
    outputs = [TensorSpec("label", "BYTES", (-1,)), TensorSpec("prob", "FP32", (-1,))]

    def __init__(self, model: Path, backend: str = "auto", threads: int = 1, gpu_ids: list[int] | None = None,
                 labels: Path | None = None, preprocess: Preprocess | None = None,
                 source: ImageSource | None = None, max_pixels: int = 40_000_000, max_batch_size: int = 32,
                 batch_timeout: float = 0.0, on_batch: OnBatch | None = None, mkldnn: bool = True) -> None:
        super().__init__()
        self.mkldnn = mkldnn
        self.model_path = model
        self.backend_choice = backend
        self.threads = threads
        self.gpu_ids = gpu_ids
        self.labels_file = labels
        self.labels: list[str] = []
        self.prep = preprocess or IMAGENET
        self.source = source or ImageSource()
        self.max_pixels = max_pixels
        self.backend = None
        crop = self.prep.crop
        self.inputs = [TensorSpec("image", "BYTES", (-1,)), TensorSpec("image", "FP32", (-1, 3, crop, crop))]
        # Decoding is CPU work that releases the GIL; its own pool keeps it off the loop and the backend.
        self.decode_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="image-decode")
        self.batcher = Batcher(self.classify_batch, self.executor, max_batch_size, batch_timeout, on_batch)

    def load(self) -> None:
        self.platform, self.backend = load_backend(self.model_path, self.backend_choice, self.threads, self.gpu_ids,
                                                   self.mkldnn)
        if self.labels_file is not None:
            self.labels = [ln.strip() for ln in self.labels_file.read_text().splitlines() if ln.strip()]
        # warm-up: the first run allocates
        self.classify_batch([np.zeros((3, self.prep.crop, self.prep.crop), dtype=np.float32)])

    async def close(self) -> None:
        await super().close()
        await self.source.close()
        self.decode_pool.shutdown(wait=False)

    def classify_batch(self, images: list[np.ndarray]) -> list[tuple[bytes, float]]:
        """Blocking, on the inference thread: one backend call for every image of the batch."""
        assert self.backend is not None
        outs = self.backend.run({self.backend.inputs[0].name: np.stack(images).astype(np.float32, copy=False)})
        scores = next(iter(outs.values()))
        scores = scores.reshape(scores.shape[0], -1).astype(np.float32, copy=False)
        if (scores < 0).any() or not np.allclose(scores.sum(axis=1), 1, atol=1e-3):  # logits, not probabilities
            e = np.exp(scores - scores.max(axis=1, keepdims=True))
            scores = e / e.sum(axis=1, keepdims=True)
        labels = self.labels
        return [((labels[i] if i < len(labels) else str(i)).encode("utf-8"), float(row[i]))
                for i, row in zip(scores.argmax(axis=1).tolist(), scores, strict=True)]

    async def pixels(self, images: np.ndarray) -> list[np.ndarray]:
        blobs = await asyncio.gather(*(self.source.load(b) for b in images.reshape(-1)))
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*(loop.run_in_executor(self.decode_pool, decode_image, b, self.prep,
                                                                self.max_pixels) for b in blobs)))

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["image"]
        arrays = await self.pixels(x) if x.dtype == object else list(x)
        try:
            pairs = await self.batcher.submit(arrays)
        except Exception as exc:  # shape/dtype errors surface from the backend
            raise BadInput(f"the model rejected the input: {str(exc).strip()[:300]}") from None
        return {"label": object_array([p[0] for p in pairs]),
                "prob": np.asarray([p[1] for p in pairs], dtype=np.float32)}
