"""The TensorFlow SavedModel backend (the `tf` extra, tensorflow-cpu): runtime.backends.load_backend picks
it for a directory holding saved_model.pb. It serves the `serving_default` signature: its inputs and outputs,
by name, with their exact v2 datatypes (tf.string is BYTES, as object arrays of `bytes` both ways) and shapes
(-1 for an unknown dimension).

Paddle must never be imported after TensorFlow in one process: loading libpaddle then crashes (SIGSEGV in its
protobuf op registration); the runtime loads one backend per process, and Paddle first then TensorFlow works.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from runtime.model_files import ModelLoadError
from runtime.tensors import DTYPES, TensorSpec

log = logging.getLogger("elasticserving.runtime")

# tf.DType.name -> v2 datatype; TF types without a v2 name (bfloat16, complex, resource, ...) are refused.
V2_TYPES = {"float16": "FP16", "float32": "FP32", "float64": "FP64", "int8": "INT8", "int16": "INT16",
            "int32": "INT32", "int64": "INT64", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
            "uint64": "UINT64", "bool": "BOOL", "string": "BYTES"}


def configure(tf: Any, threads: int, gpu_ids: list[int] | None) -> None:
    """Before TensorFlow's first op, which fixes them: both thread pools at `threads` (TF's default, 0, is
    one thread per core of the machine, oversubscribing a node shared by replicas) and only the GPU of
    --gpu-ids visible (none: the CPU; tensorflow-cpu sees none anyway). Where TF already ran in this process
    it refuses: what is in force stays, and is said."""
    threading, want = tf.config.threading, max(1, threads)
    gpus = tf.config.list_physical_devices("GPU")
    visible = gpus[gpu_ids[0]:gpu_ids[0] + 1] if gpu_ids else []
    if gpu_ids and not visible:
        log.warning("GPU %d is not visible to TensorFlow (%d GPU(s)): running on the CPU", gpu_ids[0], len(gpus))
    try:
        threading.set_intra_op_parallelism_threads(want)
        threading.set_inter_op_parallelism_threads(want)
        tf.config.set_visible_devices(visible, "GPU")
    except RuntimeError:
        have = (threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads())
        log.warning("TensorFlow was already initialised in this process: its thread pools stay (intra, inter) "
                    "= %s (0: one per core) and its visible GPUs %s, not --threads %d, --gpu-ids %s", have,
                    [d.name for d in tf.config.get_visible_devices("GPU")], want, gpu_ids or "(none)")


def spec(name: str, tensor_spec: Any) -> TensorSpec:
    dtype = V2_TYPES.get(tensor_spec.dtype.name)
    if dtype is None:
        raise ModelLoadError(f"tensor `{name}` of the serving_default signature is {tensor_spec.dtype.name}, "
                             "which has no KServe v2 datatype")
    dims = tensor_spec.shape.as_list() if tensor_spec.shape.rank is not None else None
    return TensorSpec(name, dtype, None if dims is None else tuple(-1 if d is None else d for d in dims))


class TensorFlowBackend:
    def __init__(self, path: Path, threads: int, gpu_ids: list[int] | None) -> None:
        # 1 hides TF's C++ INFO lines (CPU feature notes, ...) and keeps its warnings and errors. The oneDNN
        # note from tensorflow/core/util/port.cc is logged through absl before TF reads this variable: only
        # TF_ENABLE_ONEDNN_OPTS=0 silences it, and that would turn oneDNN off.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
        try:
            import tensorflow as tf
        except ImportError as exc:
            raise ModelLoadError("the tensorflow backend needs TensorFlow: pip install 'elasticserving[tf]' "
                                 f"(tensorflow-cpu); importing it failed: {exc}") from None
        self.tf = tf
        configure(tf, threads, gpu_ids)
        try:
            self.model = tf.saved_model.load(str(path))
        except Exception as exc:  # TF raises its own error types (and OSError, ValueError) for bad files
            raise ModelLoadError(f"cannot load TensorFlow SavedModel from {path}: {str(exc).strip()[:500]}") from None
        signatures = dict(self.model.signatures)
        if "serving_default" not in signatures:
            raise ModelLoadError(f"the SavedModel {path} has no `serving_default` signature (it has "
                                 f"{', '.join(sorted(signatures)) or 'none'}); export it with "
                                 "tf.saved_model.save(..., signatures={'serving_default': fn})")
        self.fn = signatures["serving_default"]
        args, kwargs = self.fn.structured_input_signature
        outputs = self.fn.structured_outputs
        if args or not isinstance(outputs, dict):  # signatures are keyword-only, with named outputs
            raise ModelLoadError(f"the serving_default signature of {path} is not a signature of named tensors")
        self.inputs = [spec(k, v) for k, v in sorted(kwargs.items())]
        self.outputs = [spec(k, v) for k, v in sorted(outputs.items())]
        self._dtypes = {k: v.dtype for k, v in kwargs.items()}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tf = self.tf
        args = {}
        for name, arr in feeds.items():
            dtype = self._dtypes[name]
            if dtype == tf.string:  # object arrays of bytes (str items would be encoded as UTF-8)
                args[name] = tf.constant(arr, dtype=tf.string)
            else:
                args[name] = tf.constant(np.asarray(arr, dtype=DTYPES[V2_TYPES[dtype.name]]), dtype=dtype)
        # .numpy() of a scalar is a numpy scalar, or `bytes` for tf.string: always an array here.
        return {name: np.asarray(t.numpy(), dtype=object if t.dtype == tf.string else None)
                for name, t in self.fn(**args).items()}
