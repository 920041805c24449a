"""Inference backends under the handlers: Paddle (`paddle.inference`), ONNX Runtime, TensorFlow
SavedModel (when installed). Handlers give them numpy arrays by input name and get arrays back.

`load_backend` picks one from the files in the model path (runtime.model_files); `--backend` overrides it.

oneDNN (MKL-DNN) on CPU: Paddle 3.3.1's oneDNN fused GRU caches blobs per input shape and crashes LAC
(SIGSEGV / double free) once batch sizes vary, so it stays off for LAC. For convolutional image models
it is ~7x faster (EfficientNet-Lite0 at batch 1: 9.9 ms vs 79.6 ms p50) and
tests/models/test_efficientnet_lite0.py checks it is stable under 50 batches of random sizes 1..16 in
one predictor, equal to oneDNN off within 1e-4: `--mkldnn auto` turns it on for the image handler only
(runtime.cli.mkldnn_for); raw Paddle programs, which may hold recurrent ops, need `--mkldnn on`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from runtime.model_files import ModelLoadError, detect_backend
from runtime.tensors import TensorSpec

__all__ = ["ModelLoadError", "create_predictor", "load_backend"]


def configure_device(cfg, threads: int, gpu_ids: list[int] | None, mkldnn: bool, gpu_mem_mb: int = 256) -> None:
    """A `paddle.inference.Config` on our device: the first GPU of `gpu_ids`, else the CPU with `threads`
    and oneDNN on or off."""
    if gpu_ids:
        cfg.enable_use_gpu(gpu_mem_mb, gpu_ids[0])
        return
    cfg.disable_gpu()
    cfg.set_cpu_math_library_num_threads(max(1, threads))
    if mkldnn:
        cfg.enable_mkldnn()
    else:  # see the module docstring: LAC's fused GRU crashes under oneDNN once batch sizes vary
        cfg.disable_mkldnn()


def create_predictor(model_dir: Path, threads: int, gpu_ids: list[int] | None, mkldnn: bool = False):
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
    configure_device(cfg, threads, gpu_ids, mkldnn)
    cfg.disable_glog_info()
    try:
        return pi.create_predictor(cfg)
    except Exception as exc:  # paddle raises its own error types for corrupt programs
        raise ModelLoadError(f"cannot load Paddle model from {model_dir}: {str(exc).strip()[:500]}") from None


class PaddleBackend:
    def __init__(self, path: Path, threads: int, gpu_ids: list[int] | None, mkldnn: bool = False) -> None:
        self.predictor = create_predictor(path, threads, gpu_ids, mkldnn)
        p = self.predictor
        self.inputs = [self._spec(p.get_input_handle(n), n) for n in p.get_input_names()]
        self.outputs = [TensorSpec(n, "FP32", None) for n in p.get_output_names()]

    PADDLE_TYPES = {"FLOAT32": "FP32", "FLOAT64": "FP64", "INT64": "INT64", "INT32": "INT32", "INT8": "INT8",
                    "UINT8": "UINT8", "BOOL": "BOOL", "FLOAT16": "FP16"}

    @classmethod
    def _spec(cls, handle, name: str) -> TensorSpec:
        try:
            shape: tuple[int, ...] | None = tuple(int(d) for d in handle.shape())
        except Exception:
            shape = None
        if not shape or 0 in shape:  # before a first run Paddle reports [0]: the rank is unknown
            shape = None
        try:
            datatype = cls.PADDLE_TYPES.get(handle.type().name, "FP32")
        except Exception:
            datatype = "FP32"
        return TensorSpec(name, datatype, shape)

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


def load_backend(path: Path, backend: str, threads: int, gpu_ids: list[int] | None, mkldnn: bool = False):
    """(kind, backend) for the model at `path`; `mkldnn` turns oneDNN on for a Paddle model."""
    if not path.exists():
        raise ModelLoadError(f"model path {path} does not exist")
    kind = detect_backend(path) if backend == "auto" else backend
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, threads)))
    if kind == "tensorflow":
        from runtime.tf_backend import TensorFlowBackend  # imported lazily: tensorflow is an extra

        return kind, TensorFlowBackend(path, threads, gpu_ids)
    cls = {"paddle": PaddleBackend, "onnx": OnnxBackend}.get(kind)
    if cls is None:
        raise ModelLoadError(f"unknown backend {kind!r} (paddle, onnx, tensorflow)")
    if cls is PaddleBackend:
        return kind, PaddleBackend(path, threads, gpu_ids, mkldnn)
    return kind, cls(path, threads, gpu_ids)
