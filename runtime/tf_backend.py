"""The TensorFlow SavedModel backend (the `tf` extra): the `serving_default` signature's tensors,
given and returned as numpy arrays by input name; runtime.backends.load_backend picks it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.model_files import ModelLoadError
from runtime.tensors import TensorSpec, datatype_of


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
        self.inputs = [TensorSpec(k, datatype_of(np.empty(0, v.dtype.as_numpy_dtype)),
                                  tuple(d if d is not None else -1 for d in v.shape)) for k, v in sig_in.items()]
        self.outputs = [TensorSpec(k, "FP32", None) for k in self.fn.structured_outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.fn(**feeds)
        return {k: v.numpy() for k, v in out.items()}
