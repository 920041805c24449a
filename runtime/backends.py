"""Inference backends for tensor models: Paddle (`paddle.inference`), ONNX Runtime, TensorFlow
SavedModel (when installed). Handlers give them numpy arrays by input name and get arrays back.

`detect_backend` picks one from the files in the model path; `--backend` overrides it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.model import ModelLoadError, create_predictor

V2_DTYPES = {
    np.dtype("float32"): "FP32", np.dtype("float64"): "FP64", np.dtype("int64"): "INT64",
    np.dtype("int32"): "INT32", np.dtype("int8"): "INT8", np.dtype("uint8"): "UINT8", np.dtype("bool"): "BOOL",
    np.dtype("float16"): "FP16",
}
NP_DTYPES = {v: k for k, v in V2_DTYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # KServe v2 datatype (FP32, INT64, ...)
    shape: tuple[int, ...]  # -1 for a variable dimension


def detect_backend(path: Path) -> str:
    if path.is_file():
        if path.suffix == ".onnx":
            return "onnx"
        raise ModelLoadError(f"cannot tell the backend of {path}: give --backend")
    names = {p.name for p in path.iterdir()} if path.is_dir() else set()
    if any(n.endswith(".onnx") for n in names):
        return "onnx"
    if "saved_model.pb" in names:
        return "tensorflow"
    if "__model__" in names or any(n.endswith((".pdmodel", ".json")) for n in names):
        return "paddle"
    raise ModelLoadError(f"no model found in {path} (expected a Paddle, ONNX or TensorFlow SavedModel)")


class PaddleBackend:
    def __init__(self, path: Path, threads: int, gpu_ids: list[int] | None) -> None:
        self.predictor = create_predictor(path, threads, gpu_ids)
        p = self.predictor
        self.inputs = [self._spec(p.get_input_handle(n), n) for n in p.get_input_names()]
        self.outputs = [TensorSpec(n, "FP32", (-1,)) for n in p.get_output_names()]

    @staticmethod
    def _spec(handle, name: str) -> TensorSpec:
        try:
            shape = tuple(int(d) for d in handle.shape())
        except Exception:
            shape = (-1,)
        return TensorSpec(name, "FP32", shape)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        p = self.predictor
        for name, arr in feeds.items():
            h = p.get_input_handle(name)
            h.reshape(list(arr.shape))
            h.copy_from_cpu(np.ascontiguousarray(arr))
        p.run()
        return {n: p.get_output_handle(n).copy_to_cpu() for n in p.get_output_names()}


class OnnxBackend:
    ORT_TYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int64)": "INT64",
                 "tensor(int32)": "INT32", "tensor(uint8)": "UINT8", "tensor(bool)": "BOOL",
                 "tensor(float16)": "FP16", "tensor(string)": "BYTES"}

    def __init__(self, path: Path, threads: int, gpu_ids: list[int] | None) -> None:
        import onnxruntime as ort

        file = path if path.is_file() else next(p for p in sorted(path.iterdir()) if p.suffix == ".onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        providers = ["CPUExecutionProvider"]
        if gpu_ids and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": gpu_ids[0]}))
        try:
            self.session = ort.InferenceSession(str(file), opts, providers=providers)
        except Exception as exc:
            raise ModelLoadError(f"cannot load ONNX model {file}: {str(exc)[:300]}") from None
        self.inputs = [self._spec(i) for i in self.session.get_inputs()]
        self.outputs = [self._spec(o) for o in self.session.get_outputs()]

    def _spec(self, arg) -> TensorSpec:
        shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
        return TensorSpec(arg.name, self.ORT_TYPES.get(arg.type, "FP32"), shape)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.outputs]
        return dict(zip(names, self.session.run(names, feeds), strict=True))


class TensorFlowBackend:
    def __init__(self, path: Path, threads: int, gpu_ids: list[int] | None) -> None:
        try:
            import tensorflow as tf
        except ImportError:
            raise ModelLoadError("the tensorflow backend needs `pip install tensorflow`") from None
        tf.config.threading.set_intra_op_parallelism_threads(max(1, threads))
        self.model = tf.saved_model.load(str(path))
        self.fn = self.model.signatures["serving_default"]
        sig_in = self.fn.structured_input_signature[1]
        self.inputs = [TensorSpec(k, V2_DTYPES.get(np.dtype(v.dtype.as_numpy_dtype), "FP32"),
                                  tuple(d if d is not None else -1 for d in v.shape)) for k, v in sig_in.items()]
        self.outputs = [TensorSpec(k, "FP32", (-1,)) for k in self.fn.structured_outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.fn(**feeds)
        return {k: v.numpy() for k, v in out.items()}


def load_backend(path: Path, backend: str, threads: int, gpu_ids: list[int] | None):
    if not path.exists():
        raise ModelLoadError(f"model path {path} does not exist")
    kind = detect_backend(path) if backend == "auto" else backend
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, threads)))
    cls = {"paddle": PaddleBackend, "onnx": OnnxBackend, "tensorflow": TensorFlowBackend}.get(kind)
    if cls is None:
        raise ModelLoadError(f"unknown backend {kind!r} (paddle, onnx, tensorflow)")
    return kind, cls(path, threads, gpu_ids)
