"""Handlers for tensor models (not LAC): `imagenet` (image -> top-1 label and probability, like the
manual's ResNet example) and `raw` (tensors in, tensors out). They turn Paddle Serving feeds and v2
tensors into backend inputs and the backend's outputs back into each protocol's answer."""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import io
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends import NP_DTYPES, V2_DTYPES, TensorSpec, load_backend
from runtime.batching import Batcher


class BadInput(ValueError):
    pass


MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)


def decode_image(data: bytes, size: int = 224) -> np.ndarray:
    """Image bytes -> float32 CHW, short side 256, centre crop `size`, ImageNet normalization."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data)).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise BadInput(f"undecodable image: {exc}") from None
    w, h = img.size
    scale = 256 / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return (arr - MEAN) / STD


class TensorModel:
    """A backend plus a handler; inference on one dedicated thread."""

    def __init__(self, args: Any) -> None:
        self.args = args
        self.handler = args.handler
        self.ready = False
        self.backend_kind = ""
        self.backend: Any = None
        self.labels: list[str] = []
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="inference")
        # images from concurrent requests are classified together (dynamic batching)
        self.batcher = Batcher(self._classify_batch, self.executor, args.max_batch_size,
                               args.batch_timeout_ms / 1000.0, getattr(args, "on_batch", None))

    def load(self) -> float:
        t0 = time.monotonic()
        gpu_ids = [int(x) for x in self.args.gpu_ids.split(",") if x.strip()]
        self.backend_kind, self.backend = load_backend(Path(self.args.model), self.args.backend,
                                                       self.args.threads, gpu_ids)
        if self.args.labels:
            self.labels = [ln.strip() for ln in Path(self.args.labels).read_text().splitlines() if ln.strip()]
        self.ready = True
        return time.monotonic() - t0

    async def start(self) -> None:
        self.batcher.start()

    async def close(self) -> None:
        self.batcher.close()
        self.executor.shutdown(wait=False)

    async def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, self.backend.run, feeds)
        except Exception as exc:  # shape/dtype errors surface from the backend
            raise BadInput(f"the model rejected the input: {str(exc).strip()[:300]}") from None

    # ---- imagenet ---------------------------------------------------------------------------
    def _image_bytes(self, value: Any) -> bytes:
        if isinstance(value, bytes) and value:  # binary tensor data: the encoded image itself
            return value
        if not isinstance(value, str) or not value:
            raise BadInput("`image` must be a base64 string, a local file path or (with --allow-urls) a URL")
        if value.startswith(("http://", "https://")):
            if not self.args.allow_urls:
                raise BadInput("image URLs are disabled (start the runtime with --allow-urls)")
            with urllib.request.urlopen(value, timeout=10) as r:
                return r.read(self.args.max_body_bytes)
        if value.startswith("/") and len(value) < 4096:
            path = Path(value)
            if not path.is_file():
                raise BadInput(f"image file {value} does not exist")
            return path.read_bytes()
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BadInput("`image` is neither valid base64 nor an absolute file path") from None

    def _classify(self, probs: np.ndarray) -> tuple[list[str], list[float]]:
        labels, out = [], []
        for row in probs.reshape(probs.shape[0], -1):
            i = int(np.argmax(row))
            labels.append(self.labels[i] if i < len(self.labels) else str(i))
            out.append(float(row[i]))
        return labels, out

    def _classify_batch(self, images: list[np.ndarray]) -> list[tuple[str, float]]:
        """Blocking, on the inference thread: one backend call for every image of the batch."""
        outs = self.backend.run({self.backend.inputs[0].name: np.stack(images).astype(np.float32)})
        labels, probs = self._classify(next(iter(outs.values())))
        return list(zip(labels, probs, strict=True))

    async def _images(self, images: list[bytes]) -> tuple[list[str], list[float]]:
        arrays = [decode_image(b) for b in images]
        try:
            pairs = await self.batcher.submit(arrays)
        except Exception as exc:
            raise BadInput(f"the model rejected the input: {str(exc).strip()[:300]}") from None
        return [p[0] for p in pairs], [p[1] for p in pairs]

    # ---- protocols --------------------------------------------------------------------------
    async def prediction(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("feed"), list) or not body["feed"]:
            raise BadInput("expected {\"feed\": [...], \"fetch\": [...]} with a non-empty feed")
        feed = body["feed"]
        if self.handler == "imagenet":
            for i, item in enumerate(feed):
                if not isinstance(item, dict) or "image" not in item:
                    raise BadInput(f"feed[{i}] has no `image`")
            labels, probs = await self._images([self._image_bytes(item["image"]) for item in feed])
            return {"result": {"label": labels, "prob": probs}}
        feeds: dict[str, np.ndarray] = {}
        for spec in self.backend.inputs:
            try:
                rows = [np.asarray(item[spec.name], dtype=NP_DTYPES.get(spec.datatype, np.float32)) for item in feed]
                feeds[spec.name] = np.stack(rows)
            except KeyError:
                raise BadInput(f"every feed item needs `{spec.name}`") from None
            except (ValueError, TypeError) as exc:
                raise BadInput(f"feed `{spec.name}`: {exc}") from None
        outs = await self._run(feeds)
        fetch = body.get("fetch") or list(outs)
        unknown = [f for f in fetch if f not in outs]
        if unknown:
            raise BadInput(f"unknown fetch {unknown}: outputs are {list(outs)}")
        return {"result": {k: outs[k].tolist() for k in fetch}}

    def metadata(self) -> dict[str, Any]:
        def spec(s: TensorSpec) -> dict[str, Any]:
            return {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}

        if self.handler == "imagenet":
            inputs = [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
            outputs = [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                       {"name": "prob", "datatype": "FP32", "shape": [-1]}]
        else:
            inputs = [spec(s) for s in self.backend.inputs]
            outputs = [spec(s) for s in self.backend.outputs]
        return {"name": self.args.name, "versions": ["1"], "platform": self.backend_kind,
                "inputs": inputs, "outputs": outputs}

    async def v2_infer(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
            raise BadInput("expected {\"inputs\": [...]}")
        if self.handler == "imagenet":
            inp = body["inputs"][0]
            if not isinstance(inp, dict) or inp.get("name") != "image" or inp.get("datatype") != "BYTES":
                raise BadInput("expected one BYTES input named `image` (base64 strings or file paths)")
            data = inp.get("data")
            if not isinstance(data, list) or not data:
                raise BadInput("input `image` needs a non-empty data list")
            labels, probs = await self._images([self._image_bytes(v) for v in data])
            outputs = [{"name": "label", "datatype": "BYTES", "shape": [len(labels)], "data": labels},
                       {"name": "prob", "datatype": "FP32", "shape": [len(probs)], "data": probs}]
        else:
            specs = {s.name: s for s in self.backend.inputs}
            feeds = {}
            for inp in body["inputs"]:
                if not isinstance(inp, dict) or inp.get("name") not in specs:
                    raise BadInput(f"unknown input {inp.get('name') if isinstance(inp, dict) else inp!r}; "
                                   f"inputs are {list(specs)}")
                want = specs[inp["name"]].datatype
                if inp.get("datatype") != want:
                    raise BadInput(f"input `{inp['name']}` must have datatype {want}, not {inp.get('datatype')!r}")
                try:
                    arr = np.asarray(inp.get("data"), dtype=NP_DTYPES[want]).reshape(inp.get("shape"))
                except (ValueError, TypeError) as exc:
                    raise BadInput(f"input `{inp['name']}`: {exc}") from None
                feeds[inp["name"]] = arr
            missing = [n for n in specs if n not in feeds]
            if missing:
                raise BadInput(f"missing inputs {missing}")
            outs = await self._run(feeds)
            outputs = [{"name": k, "datatype": V2_DTYPES.get(v.dtype, "FP32"), "shape": list(v.shape),
                        "data": v.reshape(-1).tolist()} for k, v in outs.items()]
        out: dict[str, Any] = {"model_name": self.args.name, "outputs": outputs}
        if body.get("id") is not None:
            out["id"] = body["id"]
        return out
