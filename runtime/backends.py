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

import logging
import os
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from runtime.errors import BadInput
from runtime.model_files import ModelLoadError, detect_backend
from runtime.tensors import TensorSpec, datatype_of

__all__ = ["ModelLoadError", "create_predictor", "load_backend", "program_signature"]
log = logging.getLogger("elasticserving.runtime")

# Paddle warns at import, on every replica and launcher start, that ccache is missing: it matters only
# for compiling C++ extensions, which serving never does. This one warning, from that module only.
warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning,
                        module=r"paddle\.utils\.cpp_extension")


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


def program_files(model_dir: Path) -> tuple[Path, Path | None]:
    """(program, params) of a Paddle model: `__model__` with one file per parameter (params None), or a
    combined program (`*.json`: PIR; `*.pdmodel`: a ProgramDesc) with its `*.pdiparams`."""
    files = {p.name for p in model_dir.iterdir()} if model_dir.is_dir() else set()
    if "__model__" in files:
        return model_dir / "__model__", None
    prog = next((model_dir / n for n in ("inference.json", "inference.pdmodel", "model.pdmodel",
                                          "model.json") if n in files), None)
    params = next((model_dir / n for n in ("inference.pdiparams", "model.pdiparams") if n in files), None)
    if prog is None or params is None:
        # Also for a program without parameters: Paddle would run one whose .pdiparams is missing with
        # uninitialized parameters instead of failing.
        raise ModelLoadError(f"no Paddle model found in {model_dir} (expected __model__ or "
                             "*.pdmodel/*.json with *.pdiparams)")
    return prog, params


def create_predictor(model_dir: Path, threads: int, gpu_ids: list[int] | None, mkldnn: bool = False):
    if "tensorflow" in sys.modules:
        # libpaddle loaded after TensorFlow dies of SIGSEGV in its protobuf registration (both ship one)
        raise ModelLoadError("a Paddle model cannot load in a process that has loaded TensorFlow")
    import paddle.inference as pi  # imported lazily: `import runtime` stays light

    if model_dir.is_dir():
        prog, params = program_files(model_dir)
        cfg = pi.Config(str(model_dir)) if params is None else pi.Config(str(prog), str(params))
    else:
        cfg = pi.Config(str(model_dir))
    configure_device(cfg, threads, gpu_ids, mkldnn)
    cfg.disable_glog_info()
    try:
        return pi.create_predictor(cfg)
    except Exception as exc:  # paddle raises its own error types for corrupt programs
        raise ModelLoadError(f"cannot load Paddle model from {model_dir}: {str(exc).strip()[:500]}") from None


# Paddle's dtype names (paddle.inference's PaddleDType, the PIR DataType, the ProgramDesc's VarType) ->
# v2 datatypes; any other name is shown as Paddle spells it: the integer, BOOL and FP* names are the v2
# ones already, and no v2 client can send or read the rest anyway.
PADDLE_TYPES = {"FLOAT32": "FP32", "FLOAT64": "FP64", "FLOAT16": "FP16", "BFLOAT16": "BF16"}


def program_signature(prog: Path) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    """The inputs (feeds) and outputs (fetches) by name, with the dtypes and shapes (-1: dynamic) the saved
    program declares. paddle.inference cannot tell them before a run: its handles report shape [0] for
    any dynamic input and FLOAT32 / [0] for every output until the first `run()`.

    A PIR program (`.json`, what paddle.jit.save writes since 3.0) infers every value's dtype and shape:
    its outputs hold. A ProgramDesc (`.pdmodel`, `__model__`) carries what its builder recorded, which
    can be stale: LAC's declares its tag output FP32 where the run answers INT64 (Paddle's own
    translation to PIR keeps the FP32); PaddleBackend corrects those from the first answer."""
    if prog.suffix == ".json":
        return _pir_signature(prog)
    return _desc_signature(prog)


def _pir_signature(prog: Path) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    import paddle

    program = paddle.pir.Program()
    # What paddle.static.load_inference_model does first (static/pir_io.py), without loading parameters.
    paddle.base.core.deserialize_pir_program(str(prog), program)
    inputs, outputs = {}, {}
    for op in program.global_block().ops:
        if op.name() in ("pd_op.data", "pd_op.feed"):
            name, value = op.attrs()["name"], op.results()[0]
            inputs[name] = TensorSpec(name, _v2_type(value.dtype.name), tuple(int(d) for d in value.shape))
        elif op.name() == "pd_op.fetch":  # its `name` is the predictor's output name (fetch_name_N)
            name, value = op.attrs()["name"], op.operands_source()[0]
            outputs[name] = TensorSpec(name, _v2_type(value.dtype.name), tuple(int(d) for d in value.shape))
    return inputs, outputs


def _desc_signature(prog: Path) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    from paddle.base.proto import framework_pb2 as fw

    block = fw.ProgramDesc.FromString(prog.read_bytes()).blocks[0]
    variables = {v.name: v for v in block.vars}

    def specs(names: list[str]) -> dict[str, TensorSpec]:
        out = {}
        for name in names:
            var = variables[name].type
            if var.type == fw.VarType.DENSE_TENSOR:  # anything else (a tensor array) has no one shape
                t = var.dense_tensor.tensor
                out[name] = TensorSpec(name, _v2_type(fw.VarType.Type.Name(t.data_type)), tuple(int(d) for d in t.dims))
        return out

    inputs, outputs = {}, {}
    for op in block.ops:
        if op.type == "feed":
            inputs.update(specs([n for o in op.outputs if o.parameter == "Out" for n in o.arguments]))
        elif op.type == "fetch":
            outputs.update(specs([n for i in op.inputs if i.parameter == "X" for n in i.arguments]))
    return inputs, outputs


def _v2_type(paddle_name: str) -> str:
    return PADDLE_TYPES.get(paddle_name, paddle_name)


class PaddleBackend:
    def __init__(self, path: Path, threads: int, gpu_ids: list[int] | None, mkldnn: bool = False) -> None:
        p = self.predictor = create_predictor(path, threads, gpu_ids, mkldnn)
        try:
            prog = program_files(path)[0]
            declared_in, declared_out = program_signature(prog)
        except Exception as exc:  # any reader failure: fall back on what the predictor tells
            log.warning("cannot read the tensor signature of %s (%s): output datatypes and shapes unknown",
                        path, str(exc).strip()[:200])
            prog, declared_in, declared_out = None, {}, {}
        self._in = {n: p.get_input_handle(n) for n in p.get_input_names()}
        self._out_names = list(p.get_output_names())
        self._out = [p.get_output_handle(n) for n in self._out_names]
        self.inputs = [declared_in.get(n) or self._handle_spec(h, n) for n, h in self._in.items()]
        # Without the program nothing tells an output's dtype or shape before a run (program_signature):
        # the shape is left unknown and the dtype is Paddle's placeholder, FP32.
        self.outputs = [declared_out.get(n) or TensorSpec(n, "FP32", None) for n in self._out_names]
        # Output dtypes not to be trusted before a run (a ProgramDesc's record, or none): the first answer
        # settles them, in this same list (the raw handler's metadata shows it).
        self._unsettled = prog is None or prog.suffix != ".json"

    @staticmethod
    def _handle_spec(handle, name: str) -> TensorSpec:
        try:
            shape: tuple[int, ...] | None = tuple(int(d) for d in handle.shape())
        except Exception:
            shape = None
        if not shape or 0 in shape:  # before a first run Paddle reports [0]: the rank is unknown
            shape = None
        try:
            datatype = _v2_type(handle.type().name)
        except Exception:
            datatype = "FP32"
        return TensorSpec(name, datatype, shape)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, arr in feeds.items():
            h = self._in[name]
            h.reshape(list(arr.shape))
            h.copy_from_cpu(np.ascontiguousarray(arr))
        self.predictor.run()
        outputs = {n: h.copy_to_cpu() for n, h in zip(self._out_names, self._out, strict=True)}
        if self._unsettled:
            self.outputs[:] = answered_specs(self.outputs, outputs)
            self._unsettled = False
        return outputs


def answered_specs(specs: list[TensorSpec], outputs: dict[str, np.ndarray]) -> list[TensorSpec]:
    """`specs` with each datatype as an answer shows it (a datatype with no v2 name stays as declared)."""
    out = []
    for s in specs:
        try:
            out.append(replace(s, datatype=datatype_of(outputs[s.name])) if s.name in outputs else s)
        except BadInput:
            out.append(s)
    return out


class OnnxBackend:
    # ONNX Runtime's type names -> v2 datatypes; a name not here is shown as ONNX Runtime spells it.
    ORT_TYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
                 "tensor(bfloat16)": "BF16", "tensor(int64)": "INT64", "tensor(int32)": "INT32",
                 "tensor(int16)": "INT16", "tensor(int8)": "INT8", "tensor(uint64)": "UINT64",
                 "tensor(uint32)": "UINT32", "tensor(uint16)": "UINT16", "tensor(uint8)": "UINT8",
                 "tensor(bool)": "BOOL", "tensor(string)": "BYTES"}

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
        self._out_names = [o.name for o in self.outputs]

    def _spec(self, arg) -> TensorSpec:
        # A symbolic dimension ("batch", "DynamicDimension.0") or an unnamed one (None) is dynamic: -1.
        shape = None if arg.shape is None else tuple(d if isinstance(d, int) else -1 for d in arg.shape)
        return TensorSpec(arg.name, self.ORT_TYPES.get(arg.type, arg.type), shape)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._out_names, self.session.run(self._out_names, feeds), strict=True))


def load_backend(path: Path, backend: str, threads: int, gpu_ids: list[int] | None, mkldnn: bool = False):
    """(kind, backend) for the model at `path`; `mkldnn` turns oneDNN on for a Paddle model."""
    if not path.exists():
        raise ModelLoadError(f"model path {path} does not exist")
    kind = detect_backend(path) if backend == "auto" else backend
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, threads)))
    if kind == "tensorflow":
        from runtime.tf_backend import TensorFlowBackend  # imported lazily: tensorflow is an extra

        return kind, TensorFlowBackend(path, threads, gpu_ids)
    if kind == "paddle":
        return kind, PaddleBackend(path, threads, gpu_ids, mkldnn)
    if kind == "onnx":
        return kind, OnnxBackend(path, threads, gpu_ids)
    raise ModelLoadError(f"unknown backend {kind!r} (paddle, onnx, tensorflow)")
