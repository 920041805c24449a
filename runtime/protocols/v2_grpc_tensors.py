"""KServe v2 gRPC tensors <-> arrays: raw or typed input contents become arrays (sizes checked), outputs
go back as raw contents. Works on the message objects only (ours, or tritonclient's in the tests: the
two generated modules cannot share a process), so runtime.proto is not imported here."""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime.dataplane import InferRequest
from runtime.errors import BadInput
from runtime.tensors import datatype_of, from_buffer, from_values, to_bytes

# The typed `contents` field of each datatype (wire detail of the gRPC protocol; FP16 travels raw only).
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def decode(request: Any) -> InferRequest:
    """A ModelInferRequest as the data plane's request."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadInput(f"{len(request.inputs)} inputs but {len(raw)} raw_input_contents")
    inputs: dict[str, np.ndarray] = {}
    for i, t in enumerate(request.inputs):
        if t.name in inputs:
            raise BadInput(f"input `{t.name}` given twice")
        if raw:
            inputs[t.name] = from_buffer(t.name, t.datatype, list(t.shape), raw[i])
            continue
        field = _CONTENTS.get(t.datatype)
        if field is None:
            raise BadInput(f"input `{t.name}`: unknown datatype {t.datatype!r} (or not in typed contents)")
        values = getattr(t.contents, field)
        if t.datatype == "BYTES":
            inputs[t.name] = from_values(t.name, "BYTES", list(t.shape), list(values))
        else:
            inputs[t.name] = from_values(t.name, t.datatype, list(t.shape), np.asarray(values))
    return InferRequest(request.model_name, inputs, [o.name for o in request.outputs] or None, request.id or None)


def fill_response(resp: Any, outputs: dict[str, np.ndarray]) -> None:
    """Outputs into a ModelInferResponse as raw contents."""
    for name, arr in outputs.items():
        resp.outputs.add(name=name, datatype=datatype_of(arr), shape=list(arr.shape))
        resp.raw_output_contents.append(to_bytes(arr))
